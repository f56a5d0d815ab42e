"""The teardown custom resource: `cdk destroy` succeeds with hosts registered, connected or not.

The fakes (tests/lambda/teardown_fakes.py) say which documented ECS and SSM behaviour they
model; every request they get is validated against botocore's service models.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from asset_modules import load
from botocore.exceptions import ClientError
from teardown_fakes import (
    CLUSTER,
    ROLE,
    ROLE_ARN,
    Api,
    FakeEcs,
    FakeSsm,
    Host,
    big_world,
    error,
    instance_arn,
    mi,
)

teardown = load("activation", "teardown")


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
    api = Api()
    return FakeEcs(hosts, api=api), FakeSsm(nodes, api=api)


def delete_event(**props: str) -> dict[str, Any]:
    return {
        "RequestType": "Delete",
        "PhysicalResourceId": teardown.physical_id(CLUSTER),
        "ResourceProperties": {
            "ClusterArn": CLUSTER,
            "HostRoleName": ROLE,
            "HostRoleArn": ROLE_ARN,
            **props,
        },
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
    ssm.nodes[mi(7)]["IamRole"] = ROLE_ARN
    teardown.on_event(delete_event(), ecs, ssm)
    assert mi(7) not in ssm.nodes


def test_managed_instances_are_filtered_by_role_on_the_server(
    world: tuple[FakeEcs, FakeSsm],
) -> None:
    ecs, ssm = world
    # GIVEN an account with 500 managed instances of other teams
    ssm.nodes.update({mi(10_000 + n): {"IamRole": "other-team"} for n in range(500)})
    teardown.on_event(delete_event(), ecs, ssm)
    # THEN SSM was asked for this role's nodes only: one page, not eleven
    (describe,) = [p for op, p in ssm.calls if op == "DescribeInstanceInformation"]
    assert {"Key": "IamRole", "Values": [ROLE, ROLE_ARN]} in describe["Filters"]
    assert len(ssm.nodes) == 501
    assert mi(9) in ssm.nodes


def test_hosts_are_deregistered_in_parallel_with_a_bounded_pool() -> None:
    # GIVEN 64 hosts and an API that takes 20 ms per call
    ecs, ssm = big_world(64, api=Api(latency=0.02))
    _, data = teardown.on_event(delete_event(), ecs, ssm)
    # THEN several calls were in flight at once, never more than the pool's size
    assert 1 < ecs.api.most_in_flight <= teardown.WORKERS
    assert data == {"ContainerInstancesDeregistered": "64", "ManagedInstancesDeregistered": "64"}


def test_a_teardown_that_runs_out_of_time_answers_before_the_deadline_and_resumes() -> None:
    # GIVEN 400 hosts, 2 fake seconds per call, and a Lambda with 180 s left
    api = Api(cost=2.0, budget=180.0)
    ecs, ssm = big_world(400, api=api)
    # WHEN CloudFormation deletes the resource
    with pytest.raises(teardown.TeardownIncomplete) as err:
        teardown.on_event(delete_event(), ecs, ssm, api.time_left)
    # THEN it stopped with time to answer, and says what is left and what to do
    assert api.time_left() > teardown.RESPOND_SECONDS
    left = sum(h.status != "INACTIVE" for h in ecs.hosts)
    assert 0 < left < 400
    message = str(err.value)
    assert f"with {left} container instance(s) and 400 managed instance(s)" in message
    assert "Run `cdk destroy` again" in message
    # WHEN the operator runs the delete again, as often as it takes (each run gets a fresh
    # Lambda; the fake clock charges every call in full, as if none ran in parallel)
    for _ in range(30):
        api.elapsed = 0.0
        try:
            teardown.on_event(delete_event(), ecs, ssm, api.time_left)
            break
        except teardown.TeardownIncomplete:
            continue
    # THEN every host is deregistered and the cluster can be deleted
    ecs.delete_cluster()
    assert ssm.nodes == {}


def test_the_handler_answers_failed_with_the_rerun_message_before_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = load("activation", "handler")
    api = Api(cost=2.0, budget=100.0)
    ecs, ssm = big_world(200, api=api)
    answered: list[tuple[str, str]] = []
    monkeypatch.setattr(handler, "_teardown_clients", lambda: (ecs, ssm))
    monkeypatch.setattr(
        handler,
        "_respond",
        lambda event, status, physical, data, reason: answered.append((status, reason)),
    )

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return int(api.time_left() * 1000)

    handler.handler({**delete_event(), "ResourceType": handler.TEARDOWN_TYPE}, Context())
    ((status, reason),) = answered
    assert status == "FAILED"
    assert reason.startswith("TeardownIncomplete: stopped before the Lambda's deadline")
    assert "Run `cdk destroy` again" in reason


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
