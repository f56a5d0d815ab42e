"""Custom resource: deregister the cluster's hosts before CloudFormation deletes the cluster.

ECS refuses to delete a cluster that still has registered container instances
(`ClusterContainsContainerInstancesException`: "You must deregister all container instances
from this cluster before you may delete it", ECS API reference, DeleteCluster), and a service's
deletion waits for its tasks to stop, which never happens on a host that is gone. So on Delete
this resource, which the stack deletes before the cluster and before the services that run on
it:
1. lists every container instance of the cluster (ListContainerInstances without a status
   filter returns every state but INACTIVE, paginated) and deregisters each with `force`: a
   disconnected host cannot stop its tasks. Deregistering does not stop them either: the ECS
   API reference (DeregisterContainerInstance, `force`) says tasks on a deregistered instance
   "remain running until you terminate the instance or the tasks stop through some other
   means, but they're orphaned (no longer monitored or accounted for by Amazon ECS)", and a
   service's scheduler starts a copy elsewhere if it can. Orphaned, no longer accounted for,
   is what lets the services and the cluster be deleted next; whether DeleteCluster then never
   reports ClusterContainsTasksException is for the first real `cdk destroy` to show;
2. deregisters the hosts' SSM managed instances (`mi-...`): those of the container instances,
   and every managed instance registered with the hosts' IAM role (a host whose ECS agent never
   registered, or already left), found with the server-side filters `ResourceType` =
   ManagedInstance and `IamRole` = the role's name or ARN (both valid
   InstanceInformationStringFilter keys, SSM API reference / botocore's model) and checked
   again here. A managed instance already gone (`InvalidInstanceId`) is done.
AWS recommends both steps for an external instance one is finished with (ECS Developer Guide,
"Deregistering an external instance"). Containers keep running, orphaned, on hosts that are
still up: docs/operations.md says how to clean a host.

Scale: each host costs one DeregisterContainerInstance and one DeregisterManagedInstance call
(plus one list/describe call per 100 hosts and one DescribeInstanceInformation per 50). They
run on WORKERS threads (boto3 clients, once created, are thread-safe: boto3 guide
"Multithreading or multiprocessing with clients"). Before each call the teardown checks
the Lambda's remaining time: once less than STOP_STARTING_SECONDS remain it starts nothing new,
and it stops waiting for calls in flight RESPOND_SECONDS before the deadline. Whatever is left
fails the request with TeardownIncomplete ("re-run cdk destroy; N left"): every step is
idempotent, so the next Delete carries on where this one stopped, instead of a function killed
mid-way that never answers CloudFormation. bench/teardown.py prints the figures.

Create and Update do nothing. The physical ID is derived from the cluster ARN, so it survives
updates (a new one would make CloudFormation delete, i.e. tear down, the old one); only a
replaced cluster, whose hosts then really are gone with it, changes it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger()

DESCRIBE_BATCH = 100  # DescribeContainerInstances: "A list of up to 100 container instance IDs"
SSM_PAGE = 50  # DescribeInstanceInformation MaxResults: 5 to 50
# Deregistrations in flight at once: enough to finish a thousand hosts in well under the
# function's 3 minutes (bench/teardown.py), few enough to stay a small share of the account's
# ECS and SSM request rates, which other tools use too. Throttled calls are retried by the
# clients (standard retry mode), so throttling slows the teardown, it does not fail it.
WORKERS = 8
STOP_STARTING_SECONDS = 30.0  # start no call with less time left than this
RESPOND_SECONDS = 10.0  # stop waiting for calls in flight: time to answer CloudFormation

TimeLeft = Callable[[], float]  # seconds until the Lambda's deadline


def _unlimited() -> float:
    return math.inf


class Ecs(Protocol):
    def list_container_instances(self, **kwargs: Any) -> dict[str, Any]: ...
    def describe_container_instances(self, **kwargs: Any) -> dict[str, Any]: ...
    def deregister_container_instance(self, **kwargs: Any) -> dict[str, Any]: ...


class Ssm(Protocol):
    def describe_instance_information(self, **kwargs: Any) -> dict[str, Any]: ...
    def deregister_managed_instance(self, **kwargs: Any) -> dict[str, Any]: ...


class TeardownIncomplete(RuntimeError):
    """The deadline came first; the message says what is left and to run the delete again."""


@dataclass
class Report:
    """What one teardown did; logged, and returned to CloudFormation as counts only."""

    container_instances: list[str] = field(default_factory=list)
    disconnected: int = 0
    managed_instances: list[str] = field(default_factory=list)
    container_instances_left: int = 0
    managed_instances_left: int = 0

    def data(self) -> dict[str, str]:
        return {
            "ContainerInstancesDeregistered": str(len(self.container_instances)),
            "ManagedInstancesDeregistered": str(len(self.managed_instances)),
        }


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def physical_id(cluster_arn: str) -> str:
    return f"ecs-anywhere-teardown:{cluster_arn}"


def _in_time(time_left: TimeLeft, step: str) -> None:
    if time_left() < STOP_STARTING_SECONDS:
        raise TeardownIncomplete(
            f"stopped before the Lambda's deadline while {step}; nothing more was deregistered "
            "in this run. Run `cdk destroy` again: it carries on where this one stopped"
        )


def _container_instance_arns(ecs: Ecs, cluster: str, time_left: TimeLeft) -> Iterator[str]:
    token = ""
    while True:
        _in_time(time_left, "listing the container instances")
        page = ecs.list_container_instances(
            cluster=cluster, maxResults=100, **({"nextToken": token} if token else {})
        )
        yield from page.get("containerInstanceArns", [])
        token = page.get("nextToken") or ""
        if not token:
            return


def container_instances(
    ecs: Ecs, cluster: str, time_left: TimeLeft = _unlimited
) -> list[dict[str, Any]]:
    """Every container instance of `cluster` that is not INACTIVE; [] when it is gone."""
    try:
        arns = list(_container_instance_arns(ecs, cluster, time_left))
    except Exception as exc:
        if _code(exc) == "ClusterNotFoundException":
            return []
        raise
    found: list[dict[str, Any]] = []
    for start in range(0, len(arns), DESCRIBE_BATCH):
        _in_time(time_left, "describing the container instances")
        batch = arns[start : start + DESCRIBE_BATCH]
        found += ecs.describe_container_instances(cluster=cluster, containerInstances=batch).get(
            "containerInstances", []
        )
    return found


def _role_matches(assigned: str, role_name: str) -> bool:
    """SSM reports the role an on-prem node was registered with: by name, or as an ARN."""
    return assigned == role_name or assigned.endswith(f"/{role_name}")


def managed_instances(
    ssm: Ssm, role_name: str, role_arn: str = "", time_left: TimeLeft = _unlimited
) -> set[str]:
    """The SSM managed instances (`mi-...`) registered with the role `role_name`.

    SSM filters on the role server-side, so the pages hold only this stack's hosts however many
    other nodes the account has. The filter is given the role's name (what CreateActivation
    takes) and, when known, its ARN: a node matches either value, so the answer does not depend
    on which form SSM keeps. The role is checked again here, so a filter that matched more than
    it should can never deregister another team's node.
    """
    found: set[str] = set()
    token = ""
    while True:
        _in_time(time_left, "listing the managed instances")
        page = ssm.describe_instance_information(
            Filters=[
                {"Key": "ResourceType", "Values": ["ManagedInstance"]},
                {"Key": "IamRole", "Values": [r for r in (role_name, role_arn) if r]},
            ],
            MaxResults=SSM_PAGE,
            **({"NextToken": token} if token else {}),
        )
        for info in page.get("InstanceInformationList", []):
            if _role_matches(str(info.get("IamRole", "")), role_name):
                found.add(str(info["InstanceId"]))
        token = page.get("NextToken") or ""
        if not token:
            return found


def run_all(
    jobs: Iterable[str], call: Callable[[str], bool], time_left: TimeLeft = _unlimited
) -> tuple[list[str], int]:
    """Run `call` on every job, WORKERS at a time, within the time left.

    `call` returns False for a job that turned out to be done already. Returns the jobs `call`
    did, in order, and how many jobs were not done in time. Raises the first error of a call.
    """
    jobs = list(jobs)

    def guarded(job: str) -> bool | None:
        if time_left() < STOP_STARTING_SECONDS:
            return None  # not started: left for the next run
        return call(job)

    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="teardown")
    futures: list[Future[bool | None]] = []
    try:
        futures = [pool.submit(guarded, job) for job in jobs]
        budget = time_left() - RESPOND_SECONDS
        wait(futures, timeout=None if math.isinf(budget) else max(0.0, budget))
    finally:
        # Calls still in flight finish in the background; none that has not started will.
        pool.shutdown(wait=False, cancel_futures=True)
    done: list[str] = []
    left = 0
    for job, future in zip(jobs, futures, strict=True):
        if not future.done() or future.cancelled():
            left += 1
            continue
        error = future.exception()
        if error is not None:
            raise error
        outcome = future.result()
        if outcome is None:
            left += 1
        elif outcome:
            done.append(job)
    return done, left


def tear_down(
    ecs: Ecs,
    ssm: Ssm,
    *,
    cluster: str,
    role_name: str,
    role_arn: str = "",
    time_left: TimeLeft = _unlimited,
) -> Report:
    """Deregister every container instance of `cluster` (force) and the hosts' managed instances.

    Raises TeardownIncomplete when the time left runs out first.
    """
    report = Report()
    # Everything is listed first (a few calls per hundred hosts), so that a teardown stopped
    # by the deadline knows exactly what it left.
    instances = container_instances(ecs, cluster, time_left)
    hosts = {str(i.get("ec2InstanceId", "")) for i in instances}
    hosts = {mi for mi in hosts if mi.startswith("mi-")}
    hosts |= managed_instances(ssm, role_name, role_arn, time_left)

    def deregister_container_instance(arn: str) -> bool:
        ecs.deregister_container_instance(cluster=cluster, containerInstance=arn, force=True)
        return True

    report.container_instances, report.container_instances_left = run_all(
        (str(i["containerInstanceArn"]) for i in instances),
        deregister_container_instance,
        time_left,
    )
    deregistered = set(report.container_instances)
    report.disconnected = sum(
        1
        for i in instances
        if i["containerInstanceArn"] in deregistered and not i.get("agentConnected", False)
    )

    def deregister_managed_instance(mi: str) -> bool:
        try:
            ssm.deregister_managed_instance(InstanceId=mi)
        except Exception as exc:
            if _code(exc) != "InvalidInstanceId":  # already deregistered
                raise
            return False
        return True

    report.managed_instances, report.managed_instances_left = run_all(
        sorted(hosts),
        deregister_managed_instance,
        time_left,
    )
    logger.info(
        json.dumps(
            {
                "msg": "hosts deregistered",
                "cluster": cluster,
                "container_instances": len(report.container_instances),
                "disconnected": report.disconnected,
                "managed_instances": report.managed_instances,
                "container_instances_left": report.container_instances_left,
                "managed_instances_left": report.managed_instances_left,
            }
        )
    )
    if report.container_instances_left or report.managed_instances_left:
        raise TeardownIncomplete(
            f"stopped before the Lambda's deadline with {report.container_instances_left} "
            f"container instance(s) and {report.managed_instances_left} managed instance(s) "
            f"of {cluster} left registered ({len(report.container_instances)} and "
            f"{len(report.managed_instances)} deregistered in this run). Run `cdk destroy` "
            "again: every step is idempotent and it carries on where this one stopped"
        )
    return report


def on_event(
    event: Mapping[str, Any], ecs: Ecs, ssm: Ssm, time_left: TimeLeft = _unlimited
) -> tuple[str, dict[str, str]]:
    """(physical resource id, data) for one CloudFormation event; raises on failure."""
    props = event.get("ResourceProperties", {})
    cluster, role_name = str(props.get("ClusterArn", "")), str(props.get("HostRoleName", ""))
    if event["RequestType"] != "Delete":
        if not cluster.startswith("arn:") or not role_name:
            raise ValueError(
                f"ClusterArn must be a cluster ARN and HostRoleName a role name, got "
                f"ClusterArn={cluster!r} HostRoleName={role_name!r}"
            )
        return physical_id(cluster), {}
    physical = str(event.get("PhysicalResourceId", ""))
    if physical != physical_id(cluster):
        # A failed create's placeholder, or an ID this code never issued: nothing was set up.
        logger.info(json.dumps({"msg": "nothing to tear down", "physical_id": physical}))
        return physical, {}
    report = tear_down(
        ecs,
        ssm,
        cluster=cluster,
        role_name=role_name,
        role_arn=str(props.get("HostRoleArn", "")),
        time_left=time_left,
    )
    return physical, report.data()
