"""ECS and SSM fakes for the teardown custom resource (lambda/activation/teardown.py).

They have the documented behaviour the teardown depends on (botocore's service models, which
the API references are generated from): ListContainerInstances returns every state but
INACTIVE, in pages; DescribeContainerInstances takes at most 100 instances; DeleteCluster
refuses a cluster with registered container instances
(ClusterContainsContainerInstancesException); DescribeInstanceInformation pages 5 to 50 items
and filters server-side on `ResourceType` and `IamRole` (InstanceInformationStringFilter keys
in the SSM API reference; a node matches when its value is one of the filter's values);
DeregisterManagedInstance of an unknown node is InvalidInstanceId. Every request is checked
against the real botocore model, so a misspelt parameter, filter key or an out-of-range page
size fails. With `force`, ECS moves the instance to INACTIVE even when the agent is
disconnected; its tasks are orphaned, not stopped (ECS API reference,
DeregisterContainerInstance), which the fakes do not need to model.

`Api` gives both fakes what the scale tests and bench/teardown.py need: each call takes
`latency` seconds of wall time, advances a fake Lambda clock by `cost` seconds, and counts the
calls in flight. Used by tests/lambda/test_teardown.py and bench/teardown.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from botocore.session import get_session
from botocore.validate import ParamValidator

CLUSTER = "arn:aws:ecs:us-east-1:111122223333:cluster/mesh"
ROLE = "mesh-EcsAnywhereHostRole"
ROLE_ARN = f"arn:aws:iam::111122223333:role/{ROLE}"


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
class Api:
    """Wall-time latency, a fake Lambda clock and the calls in flight, shared by both fakes."""

    latency: float = 0.0
    cost: float = 0.0  # fake seconds one call takes off the Lambda's remaining time
    budget: float = 900.0  # the Lambda's remaining time at the start, fake seconds
    in_flight: int = 0
    most_in_flight: int = 0
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.elapsed += self.cost
        if self.latency:
            time.sleep(self.latency)
        with self.lock:
            self.in_flight -= 1

    def time_left(self) -> float:
        with self.lock:
            return self.budget - self.elapsed


@dataclass
class FakeEcs:
    hosts: list[Host]
    page_size: int = 2
    cluster_exists: bool = True
    api: Api = field(default_factory=Api)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _index: dict[str, Host] = field(default_factory=dict, repr=False)

    def _cluster(self, operation: str, params: dict[str, Any]) -> None:
        validated("ecs", operation, params)
        self.api.call()
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
        host = self._host(params["containerInstance"])
        if host.tasks and not params.get("force"):
            raise error("InvalidParameterException", "DeregisterContainerInstance", "has tasks")
        host.status, host.tasks = "INACTIVE", 0
        return {"containerInstance": {"containerInstanceArn": host.arn, "status": "INACTIVE"}}

    def _host(self, arn: str) -> Host:
        if arn not in self._index:  # built on first use (and after hosts were added)
            self._index = {h.arn: h for h in self.hosts}
        return self._index[arn]

    def delete_cluster(self) -> None:
        if any(h.status != "INACTIVE" for h in self.hosts):
            raise error("ClusterContainsContainerInstancesException", "DeleteCluster")
        self.cluster_exists = False


# The InstanceInformation field each server-side filter key compares (SSM API reference,
# InstanceInformationStringFilter); the teardown uses only these two.
FILTER_FIELDS = {"ResourceType": "ResourceType", "IamRole": "IamRole"}


@dataclass
class FakeSsm:
    nodes: dict[str, dict[str, str]]
    api: Api = field(default_factory=Api)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def _matches(self, node: dict[str, str], filters: list[dict[str, Any]]) -> bool:
        for item in filters:
            assert item["Key"] in FILTER_FIELDS, f"filter key the fake does not model: {item}"
            if node.get(FILTER_FIELDS[item["Key"]]) not in item["Values"]:
                return False
        return True

    def describe_instance_information(self, **params: Any) -> dict[str, Any]:
        validated("ssm", "DescribeInstanceInformation", params)
        self.api.call()
        self.calls.append(("DescribeInstanceInformation", params))
        nodes = {
            i: {"InstanceId": i, "ResourceType": "ManagedInstance", **n}
            for i, n in self.nodes.items()
        }
        ids = sorted(i for i, n in nodes.items() if self._matches(n, params.get("Filters", [])))
        start = int(params.get("NextToken", "0"))
        size = params["MaxResults"]
        page: dict[str, Any] = {
            "InstanceInformationList": [nodes[i] for i in ids[start : start + size]]
        }
        if start + size < len(ids):
            page["NextToken"] = str(start + size)
        return page

    def deregister_managed_instance(self, **params: Any) -> dict[str, Any]:
        validated("ssm", "DeregisterManagedInstance", params)
        self.api.call()
        self.calls.append(("DeregisterManagedInstance", params))
        if self.nodes.pop(params["InstanceId"], None) is None:
            raise error("InvalidInstanceId", "DeregisterManagedInstance")
        return {}


def mi(n: int) -> str:
    return f"mi-{n:017x}"


def instance_arn(n: int) -> str:
    return f"arn:aws:ecs:us-east-1:111122223333:container-instance/mesh/{n:032x}"


ROLE_ARN = f"arn:aws:iam::111122223333:role/{ROLE}"


def big_world(hosts: int, *, others: int = 0, api: Api | None = None) -> tuple[FakeEcs, FakeSsm]:
    """`hosts` registered hosts of this stack, `others` managed instances of other teams."""
    api = api or Api()
    ecs = FakeEcs([Host(instance_arn(n), mi(n)) for n in range(hosts)], page_size=100, api=api)
    nodes = {mi(n): {"IamRole": ROLE, "PingStatus": "Online"} for n in range(hosts)}
    nodes.update({mi(10_000 + n): {"IamRole": "other-team"} for n in range(others)})
    return ecs, FakeSsm(nodes, api=api)
