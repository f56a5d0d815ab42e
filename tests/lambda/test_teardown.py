"""The teardown custom resource: `cdk destroy` succeeds with hosts registered, connected or not.

ECS and SSM are fakes with the documented behaviour the teardown depends on (botocore's service
models, which the API references are generated from): ListContainerInstances returns every
state but INACTIVE, in pages; DescribeContainerInstances takes at most 100 instances;
DeleteCluster refuses a cluster with registered container instances
(ClusterContainsContainerInstancesException); DescribeInstanceInformation pages 5 to 50 items;
DeregisterManagedInstance of an unknown node is InvalidInstanceId. Every request is checked
against the real botocore model, so a misspelt parameter or an out-of-range page size fails.
With `force`, ECS moves the instance to INACTIVE and its tasks to STOPPED even when the agent
is disconnected (aws/amazon-ecs-agent#125, maintainer's answer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asset_modules import load
from botocore.exceptions import ClientError
from botocore.session import get_session
from botocore.validate import ParamValidator

ROOT = Path(__file__).resolve().parents[2]
ACTIVATION = ROOT / "lambda" / "activation"
CLUSTER = "arn:aws:ecs:us-east-1:111122223333:cluster/mesh"
ROLE = "mesh-EcsAnywhereHostRole"


teardown = load("activation", "teardown")
_SESSION = get_session()


def validated(service: str, operation: str, params: dict[str, Any]) -> None:
    model = _SESSION.get_service_model(service).operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def error(code: str, operation: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message or code}}, operation)


@dataclass
class Host:
    arn: str
    mi: str
    connected: bool = True
    status: str = "ACTIVE"
    tasks: int = 1


@dataclass
class FakeEcs:
    hosts: list[Host]
    page_size: int = 2
    cluster_exists: bool = True
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def _cluster(self, operation: str, params: dict[str, Any]) -> None:
        validated("ecs", operation, params)
        self.calls.append((operation, params))
        if params.get("cluster") not in (CLUSTER, "mesh"):
            raise error("ClusterNotFoundException", operation, "Cluster not found.")
        if not self.cluster_exists:
            raise error("ClusterNotFoundException", operation, "Cluster not found.")

    def list_container_instances(self, **params: Any) -> dict[str, Any]:
        self._cluster("ListContainerInstances", params)
        listed = [h.arn for h in self.hosts if h.status != "INACTIVE"]
        start = int(params.get("nextToken", "0"))
        size = min(params.get("maxResults", 100), self.page_size)
        page: dict[str, Any] = {"containerInstanceArns": listed[start : start + size]}
        if start + size < len(listed):
            page["nextToken"] = str(start + size)
        return page

    def describe_container_instances(self, **params: Any) -> dict[str, Any]:
        self._cluster("DescribeContainerInstances", params)
        assert len(params["containerInstances"]) <= 100
        wanted = set(params["containerInstances"])
        return {
            "containerInstances": [
                {
                    "containerInstanceArn": h.arn,
                    "ec2InstanceId": h.mi,
                    "agentConnected": h.connected,
                    "status": h.status,
                    "runningTasksCount": h.tasks,
                }
                for h in self.hosts
                if h.arn in wanted
            ]
        }

    def deregister_container_instance(self, **params: Any) -> dict[str, Any]:
        self._cluster("DeregisterContainerInstance", params)
        (host,) = [h for h in self.hosts if h.arn == params["containerInstance"]]
        if host.tasks and not params.get("force"):
            raise error("InvalidParameterException", "DeregisterContainerInstance", "has tasks")
        host.status, host.tasks = "INACTIVE", 0
        return {"containerInstance": {"containerInstanceArn": host.arn, "status": "INACTIVE"}}

    def delete_cluster(self) -> None:
        if any(h.status != "INACTIVE" for h in self.hosts):
            raise error("ClusterContainsContainerInstancesException", "DeleteCluster")
        self.cluster_exists = False


@dataclass
class FakeSsm:
    nodes: dict[str, dict[str, str]]
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def describe_instance_information(self, **params: Any) -> dict[str, Any]:
        validated("ssm", "DescribeInstanceInformation", params)
        self.calls.append(("DescribeInstanceInformation", params))
        assert params["Filters"] == [{"Key": "ResourceType", "Values": ["ManagedInstance"]}]
        ids = sorted(self.nodes)
        start = int(params.get("NextToken", "0"))
        size = params["MaxResults"]
        page: dict[str, Any] = {
            "InstanceInformationList": [
                {"InstanceId": i, "ResourceType": "ManagedInstance", **self.nodes[i]}
                for i in ids[start : start + size]
            ]
        }
        if start + size < len(ids):
            page["NextToken"] = str(start + size)
        return page

    def deregister_managed_instance(self, **params: Any) -> dict[str, Any]:
        validated("ssm", "DeregisterManagedInstance", params)
        self.calls.append(("DeregisterManagedInstance", params))
        if params["InstanceId"] not in self.nodes:
            raise error("InvalidInstanceId", "DeregisterManagedInstance")
        del self.nodes[params["InstanceId"]]
        return {}


def mi(n: int) -> str:
    return f"mi-{n:017x}"


def instance_arn(n: int) -> str:
    return f"arn:aws:ecs:us-east-1:111122223333:container-instance/mesh/{n:032x}"


@pytest.fixture
def world() -> tuple[FakeEcs, FakeSsm]:
    """Three connected hosts, two whose agents lost the connection, a managed instance that
    registered with SSM but never joined ECS, and another team's node with another role."""
    hosts = [Host(instance_arn(n), mi(n)) for n in range(3)]
    hosts += [Host(instance_arn(n), mi(n), connected=False) for n in (3, 4)]
    nodes = {h.mi: {"IamRole": ROLE, "PingStatus": "Online"} for h in hosts[:3]}
    nodes.update({h.mi: {"IamRole": ROLE, "PingStatus": "ConnectionLost"} for h in hosts[3:]})
    nodes[mi(7)] = {"IamRole": ROLE, "PingStatus": "Online"}
    nodes[mi(9)] = {"IamRole": "someone-elses-role", "PingStatus": "Online"}
    return FakeEcs(hosts), FakeSsm(nodes)


def delete_event(**props: str) -> dict[str, Any]:
    return {
        "RequestType": "Delete",
        "PhysicalResourceId": teardown.physical_id(CLUSTER),
        "ResourceProperties": {"ClusterArn": CLUSTER, "HostRoleName": ROLE, **props},
    }


def test_delete_deregisters_every_host_so_the_cluster_can_be_deleted(
    world: tuple[FakeEcs, FakeSsm],
) -> None:
    ecs, ssm = world
    # GIVEN the cluster cannot be deleted while hosts are registered
    with pytest.raises(ClientError, match="ClusterContainsContainerInstancesException"):
        ecs.delete_cluster()
    # WHEN CloudFormation deletes the teardown resource
    physical, data = teardown.on_event(delete_event(), ecs, ssm)
    # THEN every container instance, connected or not, was deregistered with force
    deregistered = [p for op, p in ecs.calls if op == "DeregisterContainerInstance"]
    assert len(deregistered) == 5
    assert all(p["force"] is True for p in deregistered)
    # AND every managed instance registered with the hosts' role is gone, no one else's
    assert set(ssm.nodes) == {mi(9)}
    assert data == {"ContainerInstancesDeregistered": "5", "ManagedInstancesDeregistered": "6"}
    assert physical == teardown.physical_id(CLUSTER)
    # AND the cluster can now be deleted
    ecs.delete_cluster()


def test_pages_are_followed_to_the_end(world: tuple[FakeEcs, FakeSsm]) -> None:
    ecs, ssm = world
    ecs.page_size = 1
    teardown.on_event(delete_event(), ecs, ssm)
    lists = [p for op, p in ecs.calls if op == "ListContainerInstances"]
    assert len(lists) == 5
    assert all(h.status == "INACTIVE" for h in ecs.hosts)


def test_a_cluster_already_gone_still_releases_the_managed_instances(
    world: tuple[FakeEcs, FakeSsm],
) -> None:
    ecs, ssm = world
    ecs.cluster_exists = False
    _, data = teardown.on_event(delete_event(), ecs, ssm)
    assert data["ContainerInstancesDeregistered"] == "0"
    assert set(ssm.nodes) == {mi(9)}


def test_a_managed_instance_deregistered_by_hand_is_not_an_error(
    world: tuple[FakeEcs, FakeSsm],
) -> None:
    ecs, ssm = world
    del ssm.nodes[mi(3)]  # the operator already removed one disconnected host from SSM
    _, data = teardown.on_event(delete_event(), ecs, ssm)
    assert data["ManagedInstancesDeregistered"] == "5"
    assert set(ssm.nodes) == {mi(9)}


def test_a_role_reported_as_an_arn_is_recognised(world: tuple[FakeEcs, FakeSsm]) -> None:
    ecs, ssm = world
    ssm.nodes[mi(7)]["IamRole"] = f"arn:aws:iam::111122223333:role/{ROLE}"
    teardown.on_event(delete_event(), ecs, ssm)
    assert mi(7) not in ssm.nodes


def test_other_errors_fail_the_deletion(world: tuple[FakeEcs, FakeSsm]) -> None:
    ecs, ssm = world

    def denied(**params: Any) -> dict[str, Any]:
        raise error("AccessDeniedException", "DeregisterContainerInstance")

    ecs.deregister_container_instance = denied  # type: ignore[method-assign]
    with pytest.raises(ClientError, match="AccessDeniedException"):
        teardown.on_event(delete_event(), ecs, ssm)


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_create_and_update_touch_nothing_and_keep_one_physical_id(
    world: tuple[FakeEcs, FakeSsm], request_type: str
) -> None:
    ecs, ssm = world
    event = {**delete_event(), "RequestType": request_type}
    physical, _ = teardown.on_event(event, ecs, ssm)
    assert physical == teardown.physical_id(CLUSTER)
    assert ecs.calls == []
    assert ssm.calls == []


def test_delete_of_a_resource_that_never_was_created_touches_nothing(
    world: tuple[FakeEcs, FakeSsm],
) -> None:
    ecs, ssm = world
    teardown.on_event({**delete_event(), "PhysicalResourceId": "Teardown"}, ecs, ssm)
    assert ecs.calls == []
    assert ssm.calls == []


def test_fails_when_created_without_a_cluster_arn(world: tuple[FakeEcs, FakeSsm]) -> None:
    ecs, ssm = world
    event = {**delete_event(ClusterArn="mesh"), "RequestType": "Create"}
    with pytest.raises(ValueError, match=r"ClusterArn must be a cluster ARN.*'mesh'"):
        teardown.on_event(event, ecs, ssm)


def test_the_handler_answers_cloudformation_for_the_teardown(
    world: tuple[FakeEcs, FakeSsm], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = load("activation", "handler")
    ecs, ssm = world
    answered: list[dict[str, Any]] = []
    monkeypatch.setattr(handler, "_teardown_clients", lambda: (ecs, ssm))
    monkeypatch.setattr(
        handler,
        "_respond",
        lambda event, status, physical, data, reason: answered.append(
            {"Status": status, "PhysicalResourceId": physical, "Data": data, "Reason": reason}
        ),
    )
    event = {**delete_event(), "ResourceType": handler.TEARDOWN_TYPE}
    handler.handler(event, None)
    assert answered == [
        {
            "Status": "SUCCESS",
            "PhysicalResourceId": teardown.physical_id(CLUSTER),
            "Data": {"ContainerInstancesDeregistered": "5", "ManagedInstancesDeregistered": "6"},
            "Reason": "",
        }
    ]
    assert json.dumps(answered)  # nothing unserialisable goes back to CloudFormation
