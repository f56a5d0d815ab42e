"""Custom resource: deregister the cluster's hosts before CloudFormation deletes the cluster.

ECS refuses to delete a cluster that still has registered container instances
(`ClusterContainsContainerInstancesException`: "You must deregister all container instances
from this cluster before you may delete it", ECS API reference, DeleteCluster), and a service's
deletion waits for its tasks to stop, which never happens on a host that is gone. So on Delete
this resource, which the stack deletes before the cluster and before the services that run on
it:
1. lists every container instance of the cluster (ListContainerInstances without a status
   filter returns every state but INACTIVE, paginated) and deregisters each with `force`: a
   disconnected host cannot stop its tasks, and with force ECS moves them to STOPPED and the
   instance to INACTIVE (aws/amazon-ecs-agent#125, maintainer's answer);
2. deregisters the hosts' SSM managed instances (`mi-...`): those of the container instances,
   and every managed instance registered with the hosts' IAM role (a host whose ECS agent never
   registered, or already left). A managed instance already gone (`InvalidInstanceId`) is done.
AWS recommends both steps for an external instance one is finished with (ECS Developer Guide,
"Deregistering an external instance"). Containers keep running on hosts that are still up, no
longer managed: docs/operations.md says how to clean a host.

Create and Update do nothing. The physical ID is derived from the cluster ARN, so it survives
updates (a new one would make CloudFormation delete, i.e. tear down, the old one); only a
replaced cluster, whose hosts then really are gone with it, changes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger()

DESCRIBE_BATCH = 100  # DescribeContainerInstances: "A list of up to 100 container instance IDs"
SSM_PAGE = 50  # DescribeInstanceInformation MaxResults: 5 to 50


class Ecs(Protocol):
    def list_container_instances(self, **kwargs: Any) -> dict[str, Any]: ...
    def describe_container_instances(self, **kwargs: Any) -> dict[str, Any]: ...
    def deregister_container_instance(self, **kwargs: Any) -> dict[str, Any]: ...


class Ssm(Protocol):
    def describe_instance_information(self, **kwargs: Any) -> dict[str, Any]: ...
    def deregister_managed_instance(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass
class Report:
    """What one teardown did; logged, and returned to CloudFormation as counts only."""

    container_instances: list[str] = field(default_factory=list)
    disconnected: int = 0
    managed_instances: list[str] = field(default_factory=list)

    def data(self) -> dict[str, str]:
        return {
            "ContainerInstancesDeregistered": str(len(self.container_instances)),
            "ManagedInstancesDeregistered": str(len(self.managed_instances)),
        }


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def physical_id(cluster_arn: str) -> str:
    return f"ecs-anywhere-teardown:{cluster_arn}"


def _container_instance_arns(ecs: Ecs, cluster: str) -> Iterator[str]:
    token = ""
    while True:
        page = ecs.list_container_instances(
            cluster=cluster, maxResults=100, **({"nextToken": token} if token else {})
        )
        yield from page.get("containerInstanceArns", [])
        token = page.get("nextToken") or ""
        if not token:
            return


def container_instances(ecs: Ecs, cluster: str) -> list[dict[str, Any]]:
    """Every container instance of `cluster` that is not INACTIVE; [] when it is gone."""
    try:
        arns = list(_container_instance_arns(ecs, cluster))
    except Exception as exc:
        if _code(exc) == "ClusterNotFoundException":
            return []
        raise
    found: list[dict[str, Any]] = []
    for start in range(0, len(arns), DESCRIBE_BATCH):
        batch = arns[start : start + DESCRIBE_BATCH]
        found += ecs.describe_container_instances(cluster=cluster, containerInstances=batch).get(
            "containerInstances", []
        )
    return found


def _role_matches(assigned: str, role_name: str) -> bool:
    """SSM reports the role an on-prem node was registered with: by name, or as an ARN."""
    return assigned == role_name or assigned.endswith(f"/{role_name}")


def managed_instances(ssm: Ssm, role_name: str) -> set[str]:
    """The SSM managed instances (`mi-...`) registered with `role_name`."""
    found: set[str] = set()
    token = ""
    while True:
        page = ssm.describe_instance_information(
            Filters=[{"Key": "ResourceType", "Values": ["ManagedInstance"]}],
            MaxResults=SSM_PAGE,
            **({"NextToken": token} if token else {}),
        )
        for info in page.get("InstanceInformationList", []):
            if _role_matches(str(info.get("IamRole", "")), role_name):
                found.add(str(info["InstanceId"]))
        token = page.get("NextToken") or ""
        if not token:
            return found


def tear_down(ecs: Ecs, ssm: Ssm, *, cluster: str, role_name: str) -> Report:
    """Deregister every container instance of `cluster` (force) and the hosts' managed instances."""
    report = Report()
    hosts: set[str] = set()
    for instance in container_instances(ecs, cluster):
        arn = str(instance["containerInstanceArn"])
        ecs.deregister_container_instance(cluster=cluster, containerInstance=arn, force=True)
        report.container_instances.append(arn)
        if not instance.get("agentConnected", False):
            report.disconnected += 1
        mi = str(instance.get("ec2InstanceId", ""))
        if mi.startswith("mi-"):
            hosts.add(mi)
    for mi in sorted(hosts | managed_instances(ssm, role_name)):
        try:
            ssm.deregister_managed_instance(InstanceId=mi)
        except Exception as exc:
            if _code(exc) != "InvalidInstanceId":  # already deregistered
                raise
            continue
        report.managed_instances.append(mi)
    logger.info(
        json.dumps(
            {
                "msg": "hosts deregistered",
                "cluster": cluster,
                "container_instances": len(report.container_instances),
                "disconnected": report.disconnected,
                "managed_instances": report.managed_instances,
            }
        )
    )
    return report


def on_event(event: Mapping[str, Any], ecs: Ecs, ssm: Ssm) -> tuple[str, dict[str, str]]:
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
    return physical, tear_down(ecs, ssm, cluster=cluster, role_name=role_name).data()
