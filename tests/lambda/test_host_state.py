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

    def host_record(self, instance: str = INSTANCE_ARN) -> host_state.HostRecord | None:
        entry = self.consul.kv().get(host_state.host_key(CLUSTER_ARN, instance))
        return None if entry is None else host_state.HostRecord.decode(entry[0])

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

    def markers_ever_deleted(self) -> bool:
        """Did any request since the last reset delete a marker (even one put back later)?"""
        for r in self.consul.requests:
            if r.path != "/v1/txn" or not r.body:
                continue
            for op in json.loads(r.body):
                check = op.get("Check") or {}
                if check.get("Verb") == "delete" and check["Check"]["CheckID"] == MARKER:
                    return True
        return False


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
# Version gaps: a marked host that is still disconnected keeps its marker; only evidence of a
# connection clears it, and an answer older than the record never marks


def test_a_marked_host_keeps_its_marker_when_v_plus_2_arrives_before_v_plus_1(
    world: World,
) -> None:
    # GIVEN a host marked at version 3, disconnected since T0
    disconnect_past_the_grace(world)
    world.consul.reset_requests()

    # WHEN two tasks are stopped on it while it stays disconnected (each bumps the instance
    # version), and their events arrive V+2 first, then V+1
    later = T0 + GRACE * 2
    assert world.deliver(instance_event(version=5, connected=False, at=later)) == []
    assert world.marked() == {node(1), node(2)}
    assert world.deliver(instance_event(version=4, connected=False, at=later)) == []

    # THEN no marker was deleted at any point, and the disconnection keeps its start
    assert world.marked() == {node(1), node(2)}
    assert not world.markers_ever_deleted()
    assert world.passing("web") == {node(3)}
    record = world.host_record()
    assert record is not None
    assert (record.version, record.marked) == (5, True)
    assert record.disconnected_since == T0.isoformat(timespec="seconds")


def test_a_pass_reading_the_host_two_versions_ahead_keeps_its_marker(world: World) -> None:
    # GIVEN a host marked at version 3
    disconnect_past_the_grace(world)
    world.consul.reset_requests()

    # WHEN a pass reads DescribeContainerInstances at version 5 (still disconnected) while the
    # events of versions 4 and 5 are in flight, and those events arrive after it
    world.agent(connected=False, version=5)
    report = world.pass_at(T0 + GRACE * 2)
    for version in (5, 4):
        assert world.deliver(instance_event(version=version, connected=False, at=T0)) == []

    # THEN the host stayed drained throughout
    assert report.failed == 0
    assert world.marked() == {node(1), node(2)}
    assert not world.markers_ever_deleted()


def test_a_reconnect_hidden_in_the_gap_clears_the_marker_when_its_event_arrives(
    world: World,
) -> None:
    # GIVEN a host marked at version 3; in ECS it reconnects (v4) at T1, then disconnects (v5)
    # at T2, a routine blip; the v5 event arrives first and keeps the marker
    disconnect_past_the_grace(world)
    t1, t2 = T0 + GRACE * 2, T0 + GRACE * 2 + timedelta(minutes=1)
    assert world.deliver(instance_event(version=5, connected=False, at=t2)) == []
    assert world.marked() == {node(1), node(2)}

    # WHEN the late v4 (connected) event arrives: evidence that the marked disconnection ended
    assert world.deliver(instance_event(version=4, connected=True, at=t1)) == []

    # THEN the marker goes at once, and a redelivery of v4 changes nothing
    assert world.marked() == set()
    assert world.deliver(instance_event(version=4, connected=True, at=t1)) == []
    assert world.marked() == set()
    # AND the new disconnection counts from when v5 was seen, never from the old start: a pass
    # within the grace of t2 does not mark, one after it does
    world.agent(connected=False, version=5)
    assert world.pass_at(t2 + GRACE - timedelta(minutes=1)).marked == 0
    assert world.marked() == set()
    assert world.pass_at(t2 + GRACE + timedelta(minutes=1)).marked == 1
    assert world.marked() == {node(1), node(2)}
    # AND a late duplicate of v4 does not undo that verdict
    assert world.deliver(instance_event(version=4, connected=True, at=t1)) == []
    assert world.marked() == {node(1), node(2)}


def test_a_connect_event_older_than_the_disconnection_clears_nothing(world: World) -> None:
    # GIVEN a host marked at version 3 (disconnected since v3), then a gap to v5
    disconnect_past_the_grace(world)
    assert world.deliver(instance_event(version=5, connected=False, at=T0 + GRACE)) == []

    # WHEN a duplicate of the connected state before the disconnection (v2) arrives late
    assert world.deliver(instance_event(version=2, connected=True, at=T0)) == []

    # THEN it proves nothing about the disconnection: still marked
    assert world.marked() == {node(1), node(2)}


def test_an_answer_older_than_the_record_never_marks(world: World) -> None:
    # GIVEN a disconnection recorded at version 5 (its event's time T0), not marked yet
    assert world.deliver(instance_event(version=5, connected=False, at=T0)) == []

    # WHEN a pass after the grace reads DescribeContainerInstances lagging at version 4 (also
    # disconnected): ECS may have reconnected the agent since version 5
    world.agent(connected=False, version=4)
    report = world.pass_at(T0 + GRACE + timedelta(minutes=1))

    # THEN an answer older than the record confirms nothing: not marked
    assert report.marked == 0
    assert world.marked() == set()
    assert not world.markers_ever_written()


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
# Properties over agent histories: whatever the delivery (duplicates, any order, lost events,
# so version gaps), a host is marked only after the grace, keeps its marker while ECS has not
# seen it reconnect, and ends marked exactly when it ended disconnected


@st.composite
def agent_histories(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """ECS's view of the agent from version 3 on: (minute after T0, connected) per version.

    Alternating connected and disconnected spells; within a spell, bursts of changes that keep
    the connection: placing or stopping a task on the host changes its version too ("Placing or
    stopping tasks on a container instance modifies the available resources", ECS developer
    guide, ecs_cwe_events.md), several within the same minute when a deployment or a scale-in
    stops the tasks of a dead host."""
    changes: list[tuple[int, bool]] = []
    minute, connected = 0, True
    for _ in range(draw(st.integers(1, 4))):
        minute += draw(st.integers(1, 15))
        connected = not connected
        changes.append((minute, connected))
        for _ in range(draw(st.integers(0, 2))):
            minute += draw(st.integers(0, 10))
            changes += [(minute, connected)] * draw(st.integers(1, 3))
    return changes


def _truth(changes: list[tuple[int, bool]], minute: float) -> tuple[bool, int, float]:
    """ECS at `minute`: (connected, version, minute the current connection state began)."""
    connected, version, since = True, 2, 0.0
    for at, state in changes:
        if at <= minute:
            if state != connected:
                since = float(at)
            connected, version = state, version + 1
    return connected, version, since


def _events(changes: list[tuple[int, bool]]) -> list[dict[str, Any]]:
    return [
        instance_event(version=3 + n, connected=state, at=T0 + timedelta(minutes=minute))
        for n, (minute, state) in enumerate(changes)
    ]


def _end(world: World, changes: list[tuple[int, bool]], start: float) -> None:
    """Passes long after the last change (the first may only record a disconnection whose
    events were all lost, the second marks it); THEN marked exactly when it ended disconnected."""
    connected, version, _ = _truth(changes, start)
    world.agent(connected=connected, version=version)
    world.pass_at(T0 + timedelta(minutes=start))
    world.pass_at(T0 + timedelta(minutes=start) + GRACE * 2)
    assert world.marked() == (set() if connected else {node(1)})


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
            # GIVEN the agent's history, each change's event delivered 0-3 times (0: lost, a
            # version gap) in any order, reconcile passes at random minutes in between (each
            # sees ECS as it is at its minute, so some read versions the events have not)
            changes = data.draw(agent_histories())
            copies = [e for e in _events(changes) for _ in range(data.draw(st.integers(0, 3)))]
            deliveries = data.draw(st.permutations(copies))
            last = changes[-1][0]
            horizon = int(last * 60 + GRACE.total_seconds())
            steps = [("deliver", d) for d in deliveries] + [
                ("pass", data.draw(st.integers(0, horizon)) / 60)
                for _ in range(data.draw(st.integers(1, 6)))
            ]
            steps = data.draw(st.permutations(steps))

            for kind, what in steps:
                before = world.marked()
                if kind == "deliver":
                    assert world.deliver(what) == []
                    # THEN an event never marks
                    assert before or not world.marked()
                    continue
                minute = float(what)
                connected, version, since = _truth(changes, minute)
                world.agent(connected=connected, version=version)
                world.pass_at(T0 + timedelta(minutes=minute))
                if world.marked() and not before:
                    # THEN a marker is only ever written for a disconnection that has lasted
                    # the grace, as ECS itself saw it at that pass
                    assert not connected
                    assert minute - since >= GRACE.total_seconds() / 60

            _end(world, changes, last + 3 * GRACE.total_seconds() / 60)
        finally:
            registrar.set_runtime(None)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_marked_host_keeps_its_marker_until_ecs_has_seen_it_reconnect(
    data: st.DataObject,
) -> None:
    with ConsulDouble() as consul:
        registrar.set_runtime(fake_runtime(consul.url, hosts=FakeHosts(dict(ADDRESSES))))
        try:
            world = World(consul)
            assert world.deliver(world.ecs.put_task(tid(1))) == []
            # GIVEN the agent's history on a real clock: each change's event delivered 0-2
            # times (0: lost), each copy 0-20 minutes after the change (so out of order, and
            # often after a pass has read a newer version from DescribeContainerInstances),
            # and reconcile passes at random minutes, each seeing ECS as it is then
            changes = data.draw(agent_histories())
            timed: list[tuple[float, str, Any]] = []
            for event, (minute, _) in zip(_events(changes), changes, strict=True):
                for _ in range(data.draw(st.integers(0, 2))):
                    timed.append((minute + data.draw(st.integers(0, 20)), "deliver", event))
            last = changes[-1][0]
            minute, every = 0.0, data.draw(st.integers(3, 10))  # the pass's schedule
            while minute <= last + 20:
                minute += every + data.draw(st.integers(0, 59)) / 60
                timed.append((minute, "pass", None))
            steps = sorted(data.draw(st.permutations(timed)), key=lambda step: step[0])

            marked_episode: float | None = None  # when the disconnection marked began (ECS)
            for minute, kind, event in steps:
                connected, version, since = _truth(changes, minute)
                world.agent(connected=connected, version=version)
                before = world.marked()
                if kind == "deliver":
                    assert world.deliver(event) == []
                else:
                    world.pass_at(T0 + timedelta(minutes=minute))
                after = world.marked()
                if after and not before:
                    # THEN only a pass marks, after the grace of a disconnection ECS still sees
                    assert kind == "pass"
                    assert not connected
                    assert minute - since >= GRACE.total_seconds() / 60
                    marked_episode = since
                if before and not connected and since == marked_episode:
                    # THEN a host marked for a disconnection that is still going on stays
                    # marked, whatever gap or order the events and passes came in
                    assert after == {node(1)}
                if not after:
                    marked_episode = None

            _end(world, changes, last + 20 + 3 * GRACE.total_seconds() / 60)
        finally:
            registrar.set_runtime(None)
