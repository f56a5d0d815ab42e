"""ECS Container Instance State Change: a disconnect is only recorded, a disconnection that
outlasts the grace drains the host (marked by the reconcile pass once DescribeContainerInstances
confirms it), a reconnect restores it at once, a deregistered host's tasks go. Through
handler.handler (the SQS path) and the reconcile pass."""

from __future__ import annotations

import copy
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import handler
import host_state
import pytest
import reconcile
import registrar
import retry
from ecs_fake import FakeEcs, Instance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
T0 = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
GRACE = reconcile.ReconcileSettings().host_disconnect_grace


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
    at: datetime | None = None,
) -> dict[str, Any]:
    template = "container_instance_state_change.json"
    if not connected:
        template = "container_instance_disconnected.json"
    doc = copy.deepcopy(load_event(template))
    detail = doc["detail"]
    detail.update(
        version=version,
        agentConnected=connected,
        status=status,
        containerInstanceArn=instance,
        clusterArn=cluster,
    )
    doc["resources"] = [instance]
    if at is not None:
        doc["time"] = at.isoformat()
    return doc


@dataclass
class World:
    consul: ConsulDouble
    ecs: FakeEcs = field(default_factory=FakeEcs)

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

    def agent(self, *, connected: bool, version: int, instance: str = INSTANCE_ARN) -> None:
        """What DescribeContainerInstances answers for the host from now on."""
        self.ecs.instances[instance].agent_connected = connected
        self.ecs.instances[instance].version = version

    def pass_at(self, now: datetime) -> reconcile.PassReport:
        """A reconcile pass run at `now`."""
        return reconcile.run_pass(
            registrar.runtime(),
            reconcile.ReconcileSettings(),
            retry.Budget.fixed(60.0),
            clients=self.ecs.clients,
            now=lambda: now,
        )

    def markers_ever_written(self) -> bool:
        return any(
            MARKER in (r.body or b"").decode("utf-8", "replace")
            and b'"critical"' in (r.body or b"")
            for r in self.consul.requests
        )


@pytest.fixture
def world(consul_double: ConsulDouble) -> Iterator[World]:
    registrar.set_runtime(fake_runtime(consul_double.url, hosts=FakeHosts(dict(ADDRESSES))))
    w = World(consul_double)
    w.ecs.instances[OTHER_INSTANCE] = Instance(
        OTHER_INSTANCE, "mi-99990000", ADDRESSES[OTHER_INSTANCE]
    )
    # Tasks 1 and 2 on the host, task 3 on another host; ECS runs them, events delivered.
    events = [
        w.ecs.put_task(tid(1)),
        w.ecs.put_task(tid(2)),
        w.ecs.put_task(tid(3), container_instance_arn=OTHER_INSTANCE),
    ]
    assert w.deliver(*events) == []
    yield w
    registrar.set_runtime(None)


def disconnect_past_the_grace(world: World, version: int = 3) -> None:
    """The agent disconnects at T0 and stays so; a pass after the grace marks the host."""
    assert world.deliver(instance_event(version=version, connected=False, at=T0)) == []
    world.agent(connected=False, version=version)
    assert world.pass_at(T0 + GRACE + timedelta(minutes=1)).marked == 1


def test_a_disconnected_agent_drains_its_hosts_services(world: World) -> None:
    assert world.passing("web") == {node(1), node(2), node(3)}

    # WHEN the host's agent disconnects
    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []

    # THEN nothing visible happens at first: agents reconnect several times an hour
    assert world.marked() == set()
    assert world.passing("web") == {node(1), node(2), node(3)}

    # WHEN it is still disconnected at a reconcile pass after the grace
    world.agent(connected=False, version=3)
    report = world.pass_at(T0 + GRACE + timedelta(minutes=1))

    # THEN its task nodes carry a critical marker, so their services and sidecars stop passing
    assert report.marked == 1
    assert report.metrics()["HostChecksCritical"] == 1
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
    assert T0.isoformat(timespec="seconds") in marker["Output"]


def test_a_reconnect_within_the_grace_writes_no_critical_check_at_any_point(
    world: World,
) -> None:
    world.consul.reset_requests()

    # GIVEN the agent disconnects at T0 ...
    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []
    world.agent(connected=False, version=3)
    assert world.marked() == set()
    # ... a pass runs while it is still disconnected, within the grace ...
    world.pass_at(T0 + timedelta(minutes=2))
    assert world.marked() == set()
    # ... and it reconnects within the grace
    assert world.deliver(instance_event(version=4, at=T0 + timedelta(minutes=3))) == []
    world.agent(connected=True, version=4)

    # WHEN passes run long after
    world.pass_at(T0 + GRACE * 3)
    world.pass_at(T0 + GRACE * 4)

    # THEN no critical check was ever written, and every service kept passing
    assert world.marked() == set()
    assert not world.markers_ever_written()
    assert world.passing("web") == {node(1), node(2), node(3)}


def test_a_reconnect_event_handled_before_the_grace_ends_is_never_marked(world: World) -> None:
    # GIVEN the disconnect, then a pass after the grace whose fresh DescribeContainerInstances
    # (read when it is about to mark) already sees the agent back: its event is still queued
    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []
    world.agent(connected=False, version=3)
    describe = world.ecs.describe_container_instances
    reads = []

    def reconnect_after_the_first_read(**kwargs: Any) -> dict[str, Any]:
        answer = describe(**kwargs)
        reads.append(kwargs["containerInstances"])
        world.agent(connected=True, version=4)
        return answer

    world.ecs.describe_container_instances = reconnect_after_the_first_read  # type: ignore[method-assign]

    # WHEN the pass runs
    report = world.pass_at(T0 + GRACE + timedelta(minutes=1))

    # THEN the confirmation at marking time saw the reconnect: nothing was marked
    assert len(reads) == 2  # the pass's listing, then the confirmation of the one host due
    assert report.marked == 0
    assert world.marked() == set()
    assert not world.markers_ever_written()


def test_a_host_disconnected_past_the_grace_is_cleared_at_once_by_its_reconnect(
    world: World,
) -> None:
    # GIVEN a disconnected host, not marked within the grace, marked after it
    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []
    world.agent(connected=False, version=3)
    assert world.pass_at(T0 + GRACE - timedelta(minutes=1)).marked == 0
    assert world.marked() == set()
    assert world.pass_at(T0 + GRACE + timedelta(minutes=1)).marked == 1
    assert world.marked() == {node(1), node(2)}

    # WHEN the agent reconnects, THEN its event clears the markers at once (no pass needed)
    assert world.deliver(instance_event(version=4, at=T0 + GRACE * 2)) == []
    assert world.marked() == set()


def test_a_reconnect_removes_the_marker_and_nothing_else(world: World) -> None:
    disconnect_past_the_grace(world)
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
    disconnect_past_the_grace(world)
    world.consul.reset_requests()

    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []

    assert world.consul.writes() == 0
    assert world.marked() == {node(1), node(2)}


def test_a_disconnect_duplicate_within_the_grace_writes_nothing(world: World) -> None:
    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []
    world.consul.reset_requests()

    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []

    assert world.consul.writes() == 0
    assert world.marked() == set()


def test_a_task_started_while_disconnected_is_marked_by_the_next_event(world: World) -> None:
    disconnect_past_the_grace(world)
    assert world.deliver(task_event(task_id=tid(4))) == []

    # a redelivered (duplicate) disconnect converges the host's tasks to its record
    assert world.deliver(instance_event(version=3, connected=False, at=T0)) == []

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


def test_fails_when_the_grace_is_out_of_range() -> None:
    with pytest.raises(ValueError, match="HOST_DISCONNECT_GRACE_MINUTES must be an integer from 1"):
        reconcile.ReconcileSettings.from_env({"HOST_DISCONNECT_GRACE_MINUTES": "0"})
    grace = reconcile.ReconcileSettings.from_env({"HOST_DISCONNECT_GRACE_MINUTES": "12"})
    assert grace.host_disconnect_grace == timedelta(minutes=12)


def test_a_record_from_before_the_grace_keeps_its_host_drained() -> None:
    # A disconnected host's record written by a release that marked at once decodes as marked,
    # so the markers it set stay until the reconnect (not removed by the first convergence).
    old = host_state.HostRecord.decode(b'{"version":3,"agent_connected":false,"status":"ACTIVE"}')
    assert old is not None
    assert (old.marked, old.drained, old.disconnected_since) == (True, True, None)


# --------------------------------------------------------------------------------------------
# Lost host events: the reconcile pass repairs them from DescribeContainerInstances


def test_reconcile_marks_and_unmarks_hosts_whose_events_were_lost(world: World) -> None:
    # GIVEN the agent disconnected, but the event was lost
    world.agent(connected=False, version=7)
    first = world.pass_at(T0)
    # THEN the first pass records the disconnection (starting the grace now) and marks nothing
    assert world.marked() == set()
    assert first.marked == 0
    # AND the first pass after the grace marks the host
    report = world.pass_at(T0 + GRACE + timedelta(minutes=1))
    assert world.marked() == {node(1), node(2)}
    assert report.marked == 1

    # AND the reconnect event is lost too
    world.agent(connected=True, version=8)
    world.pass_at(T0 + GRACE * 2)
    assert world.marked() == set()

    # AND a pass with nothing to do writes nothing
    world.consul.reset_requests()
    assert world.pass_at(T0 + GRACE * 3).repaired == 0
    assert world.consul.writes() == 0


def test_reconcile_removes_a_deregistered_hosts_tasks_once(world: World) -> None:
    # GIVEN the host was deregistered (its tasks orphaned, still RUNNING for ECS), event lost
    world.ecs.instances[INSTANCE_ARN].status = "INACTIVE"
    world.ecs.instances[INSTANCE_ARN].version = 9

    # WHEN passes run
    first = world.pass_at(T0)

    # THEN its tasks are removed once, and later passes neither re-register them nor write
    assert sorted(world.consul.nodes()) == [node(3)]
    assert first.hosts == 1
    world.consul.reset_requests()
    second = world.pass_at(T0)
    assert (second.repaired, second.missing) == (0, 0)
    assert world.consul.writes() == 0


# --------------------------------------------------------------------------------------------
# Property: whatever the delivery, a host is marked only after the grace, and a reconnect
# clears it


@st.composite
def flips(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """The agent's state changes: (minutes after T0, connected), alternating, from connected."""
    changes, minute, connected = [], 0, True
    for _ in range(draw(st.integers(1, 6))):
        minute += draw(st.integers(1, 12))
        connected = not connected
        changes.append((minute, connected))
    return changes


def _truth(changes: list[tuple[int, bool]], minute: float) -> tuple[bool, int, float]:
    """ECS at `minute`: (connected, version, minute the current state began)."""
    connected, version, since = True, 2, 0.0
    for at, state in changes:
        if at <= minute:
            connected, version, since = state, version + 1, float(at)
    return connected, version, since


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_delivery_a_host_is_marked_only_after_the_grace(
    data: st.DataObject,
) -> None:
    with ConsulDouble() as consul:
        registrar.set_runtime(fake_runtime(consul.url, hosts=FakeHosts(dict(ADDRESSES))))
        try:
            world = World(consul)
            assert world.deliver(world.ecs.put_task(tid(1))) == []
            # GIVEN the agent's history, each change's event delivered 1-3 times in any order,
            # reconcile passes at random minutes in between (each sees ECS as it is then)
            changes = data.draw(flips())
            events = [
                instance_event(version=3 + n, connected=state, at=T0 + timedelta(minutes=minute))
                for n, (minute, state) in enumerate(changes)
            ]
            copies = [e for e in events for _ in range(data.draw(st.integers(1, 3)))]
            deliveries = data.draw(st.permutations(copies))
            last = changes[-1][0]
            horizon = int(last * 60 + GRACE.total_seconds())
            steps = [("deliver", d) for d in deliveries] + [
                ("pass", data.draw(st.integers(0, horizon)) / 60)
                for _ in range(data.draw(st.integers(1, 6)))
            ]
            steps = data.draw(st.permutations(steps))

            marked_at: float | None = None
            for kind, what in steps:
                if kind == "deliver":
                    assert world.deliver(what) == []
                    continue
                minute = float(what)
                connected, version, since = _truth(changes, minute)
                world.agent(connected=connected, version=version)
                world.pass_at(T0 + timedelta(minutes=minute))
                if world.marked() and marked_at is None:
                    marked_at = minute
                    # THEN a marker is only ever written for a disconnection that has lasted
                    # the grace, as ECS itself saw it at that pass
                    assert not connected
                    assert minute - since >= GRACE.total_seconds() / 60

            # WHEN every event is in and a pass runs long after the last change
            end = last + 3 * GRACE.total_seconds() / 60
            connected, version, _ = _truth(changes, end)
            world.agent(connected=connected, version=version)
            world.pass_at(T0 + timedelta(minutes=end))

            # THEN the host is marked exactly when it ended disconnected
            assert (world.marked() == {node(1)}) == (not connected)
            if connected:
                assert world.marked() == set()
        finally:
            registrar.set_runtime(None)
