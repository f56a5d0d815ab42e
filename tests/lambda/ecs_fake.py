"""A fast in-memory ECS (and SSM) behind the boto3 client methods the registrar calls.

moto answers 10,000 tasks slowly, and does not paginate ListTasks by launch type nor implement
SSM DescribeInstanceInformation; this fake answers the same calls, with the same shapes
(DescribeTasks tasks are the `tests/events` fixtures' details, which ECS documents as the same
object), the documented limits (100 per DescribeTasks/DescribeContainerInstances call, 100 per
ListTasks page, 50 per DescribeInstanceInformation page) and injectable failures. Every call is
counted, so a test or benchmark can report the AWS calls of a pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    INSTANCE_ARN,
    TASK_DEFINITIONS,
    load_event,
    task_arn,
    task_event,
)

INSTANCE_ID = "mi-0a1b2c3d4e5f60718"


def throttled(operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation
    )


def denied(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, operation)


def undescribable(operation: str = "DescribeTaskDefinition") -> ClientError:
    """What ECS answers for a task definition it will not describe (deleted, or INACTIVE with
    nothing referencing it): the message terraform-provider-aws#29749 quotes."""
    return ClientError(
        {
            "Error": {"Code": "ClientException", "Message": "Unable to describe task definition."},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        operation,
    )


@dataclass
class Instance:
    arn: str
    instance_id: str
    address: str
    agent_connected: bool = True
    status: str = "ACTIVE"
    version: int = 1
    override: str | None = None  # the consul-mesh.address attribute


@dataclass
class FakeEcs:
    """One cluster's tasks and container instances; `calls` counts every API call by name.

    `forgotten` task IDs answer MISSING (ECS forgets stopped tasks after about an hour).
    `hidden` task IDs run, but ListTasks omits them and DescribeTasks answers MISSING: "The
    Amazon ECS API follows an eventual consistency model" (RunTask, ECS API reference).
    `orphaned` task IDs are left out of ListTasks while DescribeTasks keeps answering their last
    state: the worst case for tasks of a host deregistered with `force`, which "remain running
    ... but they're orphaned (no longer monitored or accounted for by Amazon ECS)"
    (DeregisterContainerInstance, ECS API reference); what ECS really lists and describes for
    them is not documented.
    `deregistered` task definition ARNs are INACTIVE: "You can only describe INACTIVE task
    definitions while an active task or service references them" (DescribeTaskDefinition, ECS
    API reference), so they are described (status INACTIVE, as in
    tests/events/task_definition_inactive.json) only while a task not STOPPED uses them.
    `ssm_refuses`: managed instance IDs SSM will not describe (deregistered hosts): a
    DescribeInstanceInformation naming one fails whole, as the SSM API reference documents
    (InvalidInstanceId, HTTP 400; its message for a deregistered mi- ID is not documented, so
    none is made up). `ssm_empty_pages`: pages answered empty, with a NextToken, before the
    rows (a filtered page may be empty while more follow).
    `faults[operation]`: one entry consumed per call, an exception to raise or None to answer.
    ListTasks takes its listing at the first page; `nextToken` pages through that listing.
    """

    cluster_arn: str = CLUSTER_ARN
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    hidden: set[str] = field(default_factory=set)
    orphaned: set[str] = field(default_factory=set)
    deregistered: set[str] = field(default_factory=set)
    ssm_refuses: set[str] = field(default_factory=set)
    ssm_empty_pages: int = 0
    instances: dict[str, Instance] = field(
        default_factory=lambda: {INSTANCE_ARN: Instance(INSTANCE_ARN, INSTANCE_ID, HOST_IP)}
    )
    calls: Counter[str] = field(default_factory=Counter)
    faults: dict[str, list[Exception | None]] = field(default_factory=dict)
    _listings: list[list[str]] = field(default_factory=list, repr=False)

    # -- building the world ------------------------------------------------------------------

    def put_task(
        self,
        task_id: str,
        *,
        version: int = 3,
        last_status: str = "RUNNING",
        desired_status: str = "RUNNING",
        family: str = "web",
        container_instance_arn: str = INSTANCE_ARN,
        host_ports: Mapping[str, Mapping[int, int]] | None = None,
    ) -> dict[str, Any]:
        """Add or replace a task; returns the EventBridge event of its current state."""
        template = "task_running_host.json" if family == "api" else "task_running_bridge.json"
        event = task_event(
            template,
            task_id=task_id,
            version=version,
            last_status=last_status,
            desired_status=desired_status,
            container_instance_arn=container_instance_arn,
            task_definition_arn=f"arn:aws:ecs:us-east-1:123456789012:task-definition/{family}:1",
            host_ports=host_ports,
        )
        self.tasks[task_id] = event["detail"]
        self.forgotten.discard(task_id)
        return event

    def forget(self, task_id: str) -> None:
        """ECS no longer knows the task: DescribeTasks answers MISSING."""
        self.tasks.pop(task_id, None)
        self.forgotten.add(task_id)

    def _fault(self, operation: str) -> None:
        self.calls[operation] += 1
        queued = self.faults.get(operation)
        fault = queued.pop(0) if queued else None
        if fault is not None:
            raise fault

    # -- ECS ---------------------------------------------------------------------------------

    def list_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self._fault("ListTasks")
        assert kwargs["cluster"] == self.cluster_arn
        size = int(kwargs.get("maxResults", 100))
        assert 1 <= size <= 100, "ListTasks maxResults is 1..100"
        token = kwargs.get("nextToken")
        if token is None:
            # The first page lists and sorts once; later pages slice that listing (sorting
            # again for each page made a 10,000-task listing O(n^2), a second of fake time).
            wanted = kwargs.get("desiredStatus", "RUNNING")
            launch = kwargs.get("launchType")
            listing = sorted(
                tid
                for tid, t in self.tasks.items()
                if t["desiredStatus"] == wanted
                and (launch is None or t["launchType"] == launch)
                and tid not in self.hidden
                and tid not in self.orphaned
            )
            self._listings.append(listing)
            key, start = len(self._listings) - 1, 0
        else:
            key_text, _, start_text = str(token).partition(":")
            key, start = int(key_text), int(start_text)
            listing = self._listings[key]
        page = listing[start : start + size]
        answer: dict[str, Any] = {"taskArns": [task_arn(tid) for tid in page]}
        if start + size < len(listing):
            answer["nextToken"] = f"{key}:{start + size}"
        return answer

    def describe_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self._fault("DescribeTasks")
        assert kwargs["cluster"] == self.cluster_arn
        names: list[str] = kwargs["tasks"]
        assert 1 <= len(names) <= 100, "DescribeTasks takes 1..100 tasks"
        found, failures = [], []
        for name in names:
            tid = name.rsplit("/", 1)[-1]
            if tid in self.tasks and tid not in self.hidden:
                found.append(self.tasks[tid])
            else:
                failures.append({"arn": task_arn(tid), "reason": "MISSING"})
        return {"tasks": found, "failures": failures}

    def describe_task_definition(self, **kwargs: Any) -> dict[str, Any]:
        self._fault("DescribeTaskDefinition")
        arn: str = kwargs["taskDefinition"]
        family = arn.rsplit("/", 1)[-1].split(":", maxsplit=1)[0]
        answer = {**TASK_DEFINITIONS[family], "taskDefinitionArn": arn, "status": "ACTIVE"}
        if arn in self.deregistered:
            referenced = any(
                t["taskDefinitionArn"] == arn and t["lastStatus"] != "STOPPED"
                for t in self.tasks.values()
            )
            if not referenced:
                raise undescribable()
            inactive = load_event("task_definition_inactive.json")["taskDefinition"]
            answer.update(status="INACTIVE", deregisteredAt=inactive["deregisteredAt"])
        return {"taskDefinition": answer}

    def describe_container_instances(self, **kwargs: Any) -> dict[str, Any]:
        self._fault("DescribeContainerInstances")
        assert kwargs["cluster"] == self.cluster_arn
        arns: list[str] = kwargs["containerInstances"]
        assert 1 <= len(arns) <= 100, "DescribeContainerInstances takes 1..100 instances"
        found, failures = [], []
        for arn in arns:
            instance = self.instances.get(arn)
            if instance is None:
                failures.append({"arn": arn, "reason": "MISSING"})
                continue
            attributes: list[dict[str, str]] = [{"name": "ecs.os-type", "value": "linux"}]
            if instance.override:
                attributes.append({"name": "consul-mesh.address", "value": instance.override})
            found.append(
                {
                    "containerInstanceArn": arn,
                    "ec2InstanceId": instance.instance_id,
                    "agentConnected": instance.agent_connected,
                    "status": instance.status,
                    "version": instance.version,
                    "attributes": attributes,
                    "runningTasksCount": 0,
                }
            )
        return {"containerInstances": found, "failures": failures}

    # -- SSM (the same object serves both clients in tests) ----------------------------------

    def describe_instance_information(self, **kwargs: Any) -> dict[str, Any]:
        self._fault("DescribeInstanceInformation")
        ids: list[str] = next(f["Values"] for f in kwargs["Filters"] if f["Key"] == "InstanceIds")
        assert len(ids) <= 100, "InstanceIds filter takes at most 100 values"
        size = int(kwargs.get("MaxResults", 10))
        assert 5 <= size <= 50, "MaxResults is 5..50"
        if set(ids) & self.ssm_refuses:
            raise ClientError(
                {
                    "Error": {"Code": "InvalidInstanceId", "Message": ""},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "DescribeInstanceInformation",
            )
        by_id = {i.instance_id: i for i in self.instances.values()}
        rows = [
            {"InstanceId": i, "IPAddress": by_id[i].address, "PingStatus": "Online"}
            for i in ids
            if i in by_id
        ]
        token = str(kwargs.get("NextToken") or "")
        empty_left = int(token[1:]) if token.startswith("e") else self.ssm_empty_pages
        if empty_left and (not token or token.startswith("e")):
            return {"InstanceInformationList": [], "NextToken": f"e{empty_left - 1}"}
        start = int(token) if token and not token.startswith("e") else 0
        answer: dict[str, Any] = {"InstanceInformationList": rows[start : start + size]}
        if start + size < len(rows):
            answer["NextToken"] = str(start + size)
        return answer

    def clients(self, service: str) -> FakeEcs:
        """`reconcile.run_pass(clients=...)`: this object answers as both ECS and SSM."""
        assert service in ("ecs", "ssm"), service
        return self

    def add_instances(self, count: int, *, subnet: str = "10.30") -> list[str]:
        """`count` more container instances on distinct addresses; their ARNs."""
        arns = []
        for n in range(count):
            arn = f"{INSTANCE_ARN[: INSTANCE_ARN.rindex('/')]}/{n:032x}"
            self.instances[arn] = Instance(
                arn, f"mi-{n:017x}", f"{subnet}.{n // 250}.{n % 250 + 1}"
            )
            arns.append(arn)
        return arns


def running_ids(ecs: FakeEcs, families: Iterable[str] = ("web", "api")) -> set[str]:
    """Task IDs of the opted-in tasks ECS runs (what the catalog must hold)."""
    wanted = {f"arn:aws:ecs:us-east-1:123456789012:task-definition/{f}:1" for f in families}
    return {
        tid
        for tid, t in ecs.tasks.items()
        if t["desiredStatus"] == "RUNNING"
        and t["lastStatus"] == "RUNNING"
        and t["taskDefinitionArn"] in wanted
    }
