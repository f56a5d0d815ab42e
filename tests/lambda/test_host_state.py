"""ECS Container Instance State Change: disconnects drain a host, reconnects restore it, a
deregistered host's tasks go. Through handler.handler (the SQS path) and the reconcile pass."""

from __future__ import annotations

import copy
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import handler
import host_state
import pytest
import reconcile
import registrar
import retry
from ecs_fake import FakeEcs, Instance
from registrar_fixtures import (
    CLUSTER_ARN,
    INSTANCE_ARN,
    OTHER_CLUSTER_ARN,
    FakeHosts,
    LambdaContext,
    failed_ids,
    fake_runtime,
    load_event,
    sqs_event,
    task_event,
)

from tests.consul_double import ConsulDouble

OTHER_INSTANCE = INSTANCE_ARN.replace("5d7e3c2a", "99990000")
ADDRESSES = {INSTANCE_ARN: "10.20.30.40", OTHER_INSTANCE: "10.20.30.41"}
MARKER = host_state.MARKER_CHECK_ID


def tid(n: int) -> str:
    return f"{n:032x}"


def node(n: int) -> str:
    return f"ecs-task-{tid(n)}"


def instance_event(
    *,
    version: int,
    connected: bool = True,
    status: str = "ACTIVE",
    instance: str = INSTANCE_ARN,
    cluster: str = CLUSTER_ARN,
) -> dict[str, Any]:
    doc = copy.deepcopy(load_event("container_instance_state_change.json"))
    detail = doc["detail"]
    detail.update(
        version=version,
        agentConnected=connected,
        status=status,
        containerInstanceArn=instance,
        clusterArn=cluster,
    )
    doc["resources"] = [instance]
    return doc


@dataclass
class World:
    consul: ConsulDouble

    def deliver(self, *events: dict[str, Any] | str) -> list[str]:
        return failed_ids(handler.handler(sqs_event(events), LambdaContext()))

    def marked(self) -> set[str]:
        return {c["Node"] for c in self.consul.checks() if c["CheckID"] == MARKER}

    def passing(self, service: str) -> set[str]:
        """Nodes Consul reports healthy for `service` (what DNS and Envoy's EDS see)."""
        query = urllib.parse.quote(service)
        url = f"{self.consul.url}/v1/health/service/{query}?passing"
        with urllib.request.urlopen(url, timeout=5) as response:
            return {e["Node"]["Node"] for e in json.loads(response.read())}


@pytest.fixture
def world(consul_double: ConsulDouble) -> Iterator[World]:
    registrar.set_runtime(fake_runtime(consul_double.url, hosts=FakeHosts(dict(ADDRESSES))))
    w = World(consul_double)
    # Tasks 1 and 2 on the host, task 3 on another host.
    assert (
        w.deliver(
            task_event(task_id=tid(1)),
            task_event(task_id=tid(2)),
            task_event(task_id=tid(3), container_instance_arn=OTHER_INSTANCE),
        )
        == []
    )
    yield w
    registrar.set_runtime(None)


def test_a_disconnected_agent_drains_its_hosts_services(world: World) -> None:
    assert world.passing("web") == {node(1), node(2), node(3)}

    # WHEN the host's agent disconnects
    assert world.deliver(instance_event(version=3, connected=False)) == []

    # THEN its task nodes carry a critical marker, so their services and sidecars stop passing
    assert world.marked() == {node(1), node(2)}
    assert world.passing("web") == {node(3)}
    assert world.passing("web-sidecar-proxy") == {node(3)}
    # AND the service checks consul-esm runs were left as they were, and the marker is a
    # node-level check without a Definition, which consul-esm never runs nor overwrites
    checks = {c["CheckID"]: c for c in world.consul.checks(node=node(1))}
    assert checks[f"service:web-{tid(1)}"]["Status"] == "passing"
    marker = checks[MARKER]
    assert (marker["Status"], marker["ServiceID"], marker["Definition"]) == ("critical", "", {})
    assert INSTANCE_ARN in marker["Notes"]


def test_a_reconnect_removes_the_marker_and_nothing_else(world: World) -> None:
    assert world.deliver(instance_event(version=3, connected=False)) == []
    before = {c["CheckID"]: c for c in world.consul.checks(node=node(1)) if c["CheckID"] != MARKER}

    assert world.deliver(instance_event(version=4, connected=True)) == []

    assert world.marked() == set()
    assert world.passing("web") == {node(1), node(2), node(3)}
    after = {c["CheckID"]: c for c in world.consul.checks(node=node(1))}
    assert after == before


def test_a_late_disconnect_does_not_undo_a_newer_reconnect(world: World) -> None:
    # GIVEN the reconnect (v4) is handled before the disconnect (v3) it follows
    assert world.deliver(instance_event(version=4, connected=True)) == []
    world.consul.reset_requests()

    assert world.deliver(instance_event(version=3, connected=False)) == []

    assert world.marked() == set()
    assert world.consul.writes() == 0


def test_duplicates_write_nothing(world: World) -> None:
    assert world.deliver(instance_event(version=3, connected=False)) == []
    world.consul.reset_requests()

    assert world.deliver(instance_event(version=3, connected=False)) == []

    assert world.consul.writes() == 0
    assert world.marked() == {node(1), node(2)}


def test_a_task_started_while_disconnected_is_marked_by_the_next_event(world: World) -> None:
    assert world.deliver(instance_event(version=3, connected=False)) == []
    assert world.deliver(task_event(task_id=tid(4))) == []

    # a redelivered (duplicate) disconnect converges the host's tasks to its record
    assert world.deliver(instance_event(version=3, connected=False)) == []

    assert world.marked() == {node(1), node(2), node(4)}


def test_a_deregistered_host_removes_its_tasks_for_good(world: World) -> None:
    assert world.deliver(instance_event(version=5, status="DEREGISTERING", connected=False)) == []

    assert sorted(world.consul.nodes()) == [node(3)]
    # AND a late RUNNING event of its tasks cannot bring them back
    assert world.deliver(task_event(task_id=tid(1), version=9)) == []
    assert sorted(world.consul.nodes()) == [node(3)]


def test_other_clusters_and_malformed_instance_events(world: World) -> None:
    bad = instance_event(version=3)
    del bad["detail"]["agentConnected"]
    world.consul.reset_requests()

    failed = world.deliver(
        instance_event(version=3, connected=False, cluster=OTHER_CLUSTER_ARN), json.dumps(bad)
    )

    assert failed == ["msg-1"]
    assert world.consul.count() == 0
    assert world.marked() == set()


def test_fails_on_a_container_instance_arn_that_is_not_one() -> None:
    detail = instance_event(version=1, instance="i-0123")["detail"]
    with pytest.raises(ValueError, match="not a container instance ARN: 'i-0123'"):
        host_state.instance_state(detail)


# --------------------------------------------------------------------------------------------
# Lost host events: the reconcile pass repairs them from DescribeContainerInstances


def test_reconcile_marks_and_unmarks_hosts_whose_events_were_lost(world: World) -> None:
    rt = registrar.runtime()
    ecs = FakeEcs()
    ecs.instances[OTHER_INSTANCE] = Instance(
        OTHER_INSTANCE, "mi-99990000", ADDRESSES[OTHER_INSTANCE]
    )
    for n in (1, 2):
        ecs.put_task(tid(n))
    ecs.put_task(tid(3), container_instance_arn=OTHER_INSTANCE)

    def run_pass() -> reconcile.PassReport:
        return reconcile.run_pass(
            rt, reconcile.ReconcileSettings(), retry.Budget.fixed(60.0), clients=ecs.clients
        )

    # GIVEN the agent disconnected, but the event was lost
    ecs.instances[INSTANCE_ARN].agent_connected = False
    ecs.instances[INSTANCE_ARN].version = 7
    report = run_pass()
    assert world.marked() == {node(1), node(2)}
    assert report.hosts == 1

    # AND the reconnect event is lost too
    ecs.instances[INSTANCE_ARN].agent_connected = True
    ecs.instances[INSTANCE_ARN].version = 8
    run_pass()
    assert world.marked() == set()

    # AND a pass with nothing to do writes nothing
    world.consul.reset_requests()
    assert run_pass().repaired == 0
    assert world.consul.writes() == 0


def test_reconcile_removes_a_deregistered_hosts_tasks_once(world: World) -> None:
    rt = registrar.runtime()
    ecs = FakeEcs()
    ecs.instances[OTHER_INSTANCE] = Instance(
        OTHER_INSTANCE, "mi-99990000", ADDRESSES[OTHER_INSTANCE]
    )
    for n in (1, 2):
        ecs.put_task(tid(n))
    ecs.put_task(tid(3), container_instance_arn=OTHER_INSTANCE)

    def run_pass() -> reconcile.PassReport:
        return reconcile.run_pass(
            rt, reconcile.ReconcileSettings(), retry.Budget.fixed(60.0), clients=ecs.clients
        )

    # GIVEN the host was deregistered (its tasks orphaned, still RUNNING for ECS), event lost
    ecs.instances[INSTANCE_ARN].status = "INACTIVE"
    ecs.instances[INSTANCE_ARN].version = 9

    # WHEN passes run
    first = run_pass()

    # THEN its tasks are removed once, and later passes neither re-register them nor write
    assert sorted(world.consul.nodes()) == [node(3)]
    assert first.hosts == 1
    world.consul.reset_requests()
    second = run_pass()
    assert (second.repaired, second.missing) == (0, 0)
    assert world.consul.writes() == 0
