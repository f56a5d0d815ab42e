"""The reconcile pass: drift repair, safety of deletions, the cap, tombstone GC, time budget.

Consul is the HTTP double; ECS and SSM are `ecs_fake.FakeEcs` behind the boto3 methods the
code calls; the event path (handler.handler) runs on the fast in-memory runtime of
registrar_fixtures, with the same task definitions and addresses as the fake ECS.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import handler
import listing
import pytest
import reconcile
import registrar
import retry
from decide import (
    Deregister,
    Register,
    Skip,
    VerifyAbsent,
    VerifySidecar,
    decide,
    desired_registration,
    mesh_target,
)
from ecs_fake import FakeEcs, denied, running_ids, throttled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import RUNNING, STOPPED, StateRecord, parse_event
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    INSTANCE_ARN,
    FakeHosts,
    LambdaContext,
    failed_ids,
    fake_runtime,
    sqs_event,
    task_definition,
    task_event,
)

from tests.consul_double import ConsulDouble

MOVED_IP = "10.20.30.99"


def tid(n: int) -> str:
    return f"{n:032x}"


def node(n: int) -> str:
    return f"ecs-task-{tid(n)}"


def key(n: int) -> str:
    return f"ecs-registrar/mesh/tasks/{tid(n)}"


@dataclass
class World:
    consul: ConsulDouble
    rt: registrar.Runtime
    ecs: FakeEcs

    def deliver(self, *events: dict[str, Any]) -> list[str]:
        """The event path: one SQS batch through handler.handler; the failed message ids."""
        return failed_ids(handler.handler(sqs_event(events), LambdaContext()))

    def reconcile(
        self, budget: retry.Budget | None = None, **overrides: Any
    ) -> reconcile.PassReport:
        return reconcile.run_pass(
            self.rt,
            reconcile.ReconcileSettings(**overrides),
            budget or retry.Budget.fixed(60.0),
            clients=self.ecs.clients,
        )

    def record(self, n: int) -> StateRecord | None:
        entry = self.consul.kv().get(key(n))
        return None if entry is None else StateRecord.decode(entry[0])

    def run(self, *numbers: int, deliver: bool = True, **fields: Any) -> None:
        """ECS runs tasks `numbers`; their RUNNING event is delivered unless `deliver=False`."""
        events = [self.ecs.put_task(tid(n), **fields) for n in numbers]
        if deliver:
            assert self.deliver(*events) == []

    def stop(self, *numbers: int, deliver: bool = True, version: int = 6) -> None:
        events = [
            self.ecs.put_task(
                tid(n), version=version, last_status="STOPPED", desired_status="STOPPED"
            )
            for n in numbers
        ]
        if deliver:
            assert self.deliver(*events) == []


@pytest.fixture
def world(consul_double: ConsulDouble) -> Iterator[World]:
    rt = fake_runtime(consul_double.url)
    registrar.set_runtime(rt)
    yield World(consul_double, rt, FakeEcs())
    registrar.set_runtime(None)


def deregister_by_hand(consul: ConsulDouble, node_name: str) -> None:
    body = json.dumps({"Node": node_name}).encode()
    request = urllib.request.Request(f"{consul.url}/v1/catalog/deregister", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=5):
        pass


# --------------------------------------------------------------------------------------------
# Drift repair


def test_tasks_whose_events_were_lost_are_registered(world: World) -> None:
    # GIVEN two running tasks whose RUNNING events never arrived, and one that did
    world.run(1, deliver=False)
    world.run(2, deliver=False, family="api")
    world.run(3)
    expected = world.consul.services(node=node(3))

    # WHEN one pass runs
    report = world.reconcile()

    # THEN the lost ones are registered exactly like the event path does it
    assert sorted(world.consul.nodes()) == [node(1), node(2), node(3)]
    assert (report.missing, report.changed, report.stale, report.in_sync) == (2, 0, 0, 1)
    web = {s["ServiceID"]: s for s in world.consul.services(node=node(1))}
    sidecar = web[f"web-{tid(1)}-sidecar-proxy"]
    assert sidecar["ServiceProxy"]["Upstreams"][0]["DestinationName"] == "backend"
    assert sidecar["ServiceProxy"]["Config"] == {"bind_address": "0.0.0.0", "bind_port": 20000}
    assert len(web) == len(expected)
    assert len(world.consul.services(node=node(2))) == 3  # api: two ports + one sidecar
    record = world.record(1)
    assert record is not None
    assert (record.status, record.version) == (RUNNING, 3)


def test_a_pass_over_a_catalog_in_sync_writes_nothing(world: World) -> None:
    # GIVEN three tasks registered by their events
    world.run(1, 2, 3)
    world.consul.reset_requests()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN it writes nothing and reads three times (nodes, records, markers)
    assert world.consul.writes() == 0
    assert world.consul.count() == 3
    assert (report.in_sync, report.repaired) == (3, 0)
    assert report.metrics()["DriftRepaired"] == 0


def test_entries_of_a_task_that_stopped_unseen_are_removed(world: World) -> None:
    # GIVEN a registered task whose stop event was lost, and one ECS no longer knows at all
    world.run(1, 2, 3)
    world.stop(1, deliver=False)
    world.ecs.forget(tid(2))

    # WHEN a pass runs
    report = world.reconcile()

    # THEN both are removed and tombstoned; the running one stays
    assert sorted(world.consul.nodes()) == [node(3)]
    assert report.stale == 2
    first, second = world.record(1), world.record(2)
    assert first is not None
    assert second is not None
    assert (first.status, first.version) == (STOPPED, 6)
    assert second.status == STOPPED
    # AND a late RUNNING event of either cannot bring it back
    assert world.deliver(task_event(task_id=tid(1), version=4)) == []
    assert node(1) not in world.consul.nodes()


def test_a_service_removed_from_the_configuration_leaves_the_catalog(world: World) -> None:
    # GIVEN two mesh services on one host: `api` (host mode, tasks 1 and 2), `web` (task 3)
    world.run(1, 2, family="api")
    world.run(3)
    assert {s["ServiceName"] for s in world.consul.services()} >= {"api", "web"}

    # WHEN `api` leaves the `services` configuration: the next deploy deletes its ECS service,
    # ECS stops both tasks; task 1's stop event arrives, task 2's is lost
    world.stop(1)
    world.stop(2, deliver=False)
    # (the event path already removed task 1's entries)
    assert node(1) not in world.consul.nodes()

    # THEN one reconcile pass removes task 2's entries as well, and only those
    report = world.reconcile()
    assert sorted(world.consul.nodes()) == [node(3)]
    assert {s["ServiceName"] for s in world.consul.services()} == {"web", "web-sidecar-proxy"}
    assert report.stale == 1
    # AND the next pass has nothing left to do
    world.consul.reset_requests()
    assert world.reconcile().stale == 0
    assert world.consul.writes() == 0


def test_a_host_whose_address_moved_is_re_registered_on_the_new_one(world: World) -> None:
    # GIVEN a task registered on the host's old address
    world.run(1)
    assert world.consul.nodes()[node(1)]["Address"] == HOST_IP

    # WHEN the host's SSM address changes (no task event: the task did not change) and a pass runs
    world.ecs.instances[INSTANCE_ARN].address = MOVED_IP
    report = world.reconcile()

    # THEN the node, every service and the sidecar's checks carry the new address
    assert report.changed == 1
    assert world.consul.nodes()[node(1)]["Address"] == MOVED_IP
    assert {s["ServiceAddress"] for s in world.consul.services(node=node(1))} == {MOVED_IP}
    checks = world.consul.checks(node=node(1))
    assert all(MOVED_IP in json.dumps(c["Definition"]) for c in checks)
    # AND the next pass finds it in sync
    world.consul.reset_requests()
    world.reconcile()
    assert world.consul.writes() == 0


def test_a_node_deleted_by_hand_is_restored_with_its_sidecar(world: World) -> None:
    world.run(1)
    deregister_by_hand(world.consul, node(1))

    report = world.reconcile()

    assert report.missing == 1
    ids = sorted(s["ServiceID"] for s in world.consul.services(node=node(1)))
    assert ids == [f"web-{tid(1)}", f"web-{tid(1)}-sidecar-proxy"]


def test_a_node_address_changed_behind_its_back_is_corrected(world: World) -> None:
    # GIVEN a registered task whose node someone re-registered on another address
    world.run(1)
    meta = world.consul.nodes()[node(1)]["Meta"]
    world.consul.seed_register({"Node": node(1), "Address": MOVED_IP, "NodeMeta": meta})

    report = world.reconcile()

    assert report.changed == 1
    assert world.consul.nodes()[node(1)]["Address"] == HOST_IP


def test_reconcile_never_resurrects_a_tombstoned_task(world: World) -> None:
    # GIVEN a task whose stop was applied, while ECS's (lagging) answer still says RUNNING
    world.run(1)
    world.stop(1)
    world.ecs.put_task(tid(1), version=3)

    # WHEN a pass runs
    world.reconcile()

    # THEN the tombstone wins: nothing is registered
    assert node(1) not in world.consul.nodes()
    record = world.record(1)
    assert record is not None
    assert record.status == STOPPED


def test_entries_it_does_not_own_are_never_touched(world: World) -> None:
    # GIVEN a node of another cluster, a node without our source, and a node of an agent
    world.consul.seed_register(
        {
            "Node": "ecs-task-ffff",
            "Address": "10.0.0.1",
            "NodeMeta": {
                "source": "ecs-anywhere-registrar",
                "cluster-arn": CLUSTER_ARN.replace("/mesh", "/other"),
            },
        }
    )
    world.consul.seed_register(
        {"Node": "ecs-task-eeee", "Address": "10.0.0.2", "NodeMeta": {"cluster-arn": CLUSTER_ARN}}
    )
    world.consul.seed_register({"Node": "consul-server-1", "Address": "10.0.0.3"})

    report = world.reconcile()

    assert sorted(world.consul.nodes()) == ["consul-server-1", "ecs-task-eeee", "ecs-task-ffff"]
    assert report.repaired == 0


# --------------------------------------------------------------------------------------------
# Safety of deletions


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(("ListTasks", [denied("ListTasks")]), id="listing-refused"),
        pytest.param(("ListTasks", [throttled("ListTasks")] * 4), id="listing-throttled"),
        pytest.param(("DescribeTasks", [throttled("DescribeTasks")] * 4), id="describe-failed"),
    ],
)
def test_a_failed_listing_deletes_nothing(
    world: World, fault: tuple[str, list[Exception | None]]
) -> None:
    # GIVEN a registered task that stopped unseen, and a task missing from the catalog
    world.run(1)
    world.stop(1, deliver=False)
    world.run(2, deliver=False)
    # AND an ECS listing that fails (after the in-invocation retries)
    operation, errors = fault
    world.ecs.faults[operation] = [*errors]

    report = world.reconcile()

    # THEN nothing is deleted or tombstoned, and the pass says why
    assert node(1) in world.consul.nodes()
    record = world.record(1)
    assert record is not None
    assert record.status == RUNNING
    assert not report.complete
    assert report.metrics()["ReconcileIncomplete"] == 1
    assert report.stale == 0


def test_a_partial_listing_deletes_nothing_but_still_registers_what_it_saw(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN ListTasks pages of 2 tasks: tasks 1 and 2 on the first page, missing from the
    # catalog, task 4 on the second; and task 3 registered but stopped unseen
    monkeypatch.setattr(listing, "LIST_PAGE", 2)
    world.run(1, 2, deliver=False)
    world.run(3, 4)
    world.stop(3, deliver=False)
    # AND the second page cannot be read
    world.ecs.faults["ListTasks"] = [None, *[throttled("ListTasks")] * 4]

    report = world.reconcile()

    # THEN what the first page showed is registered, and nothing is deleted
    assert not report.complete
    assert report.missing == 2
    assert sorted(world.consul.nodes()) == [node(1), node(2), node(3), node(4)]


def test_a_task_the_listing_missed_is_kept(world: World) -> None:
    # GIVEN a registered task ECS still runs but that ListTasks (eventually consistent) omits
    world.run(1)
    world.ecs.tasks[tid(1)]["launchType"] = "FARGATE"  # not listed as EXTERNAL

    report = world.reconcile()

    assert node(1) in world.consul.nodes()
    assert report.stale == 0


def test_a_task_that_cannot_be_confirmed_gone_is_kept(world: World) -> None:
    # GIVEN a registered task that stopped unseen, and the confirming DescribeTasks failing
    # (the listing's own DescribeTasks call succeeds)
    world.run(1, 2)
    world.stop(1, deliver=False)
    world.ecs.faults["DescribeTasks"] = [None, *[throttled("DescribeTasks")] * 4]

    report = world.reconcile()

    assert report.complete
    assert node(1) in world.consul.nodes()
    assert report.stale == 0


def test_the_deletion_cap_holds_back_the_rest_until_later_passes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN five registered tasks that all stopped unseen
    world.run(1, 2, 3, 4, 5)
    world.stop(1, 2, 3, 4, 5, deliver=False)

    # WHEN passes run with a cap of 2
    first = world.reconcile(max_deletions=2)

    # THEN each deletes at most 2 and reports what it held back
    assert (first.stale, first.held_back) == (2, 3)
    assert len(world.consul.nodes()) == 3
    assert any(
        json.loads(line).get("message", "").startswith("deletion cap reached")
        for line in capsys.readouterr().out.splitlines()
    )
    second = world.reconcile(max_deletions=2)
    assert (second.stale, second.held_back) == (2, 1)
    third = world.reconcile(max_deletions=2)
    assert (third.stale, third.held_back) == (1, 0)
    assert world.consul.nodes() == {}


def test_the_handler_reports_the_cap_as_a_metric(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.run(1, 2, 3)
    world.stop(1, 2, 3, deliver=False)
    monkeypatch.setenv("RECONCILE_MAX_DELETIONS", "1")
    monkeypatch.setattr(reconcile, "aws_client", world.ecs.clients)
    capsys.readouterr()

    summary = reconcile.handler({"source": "aws.events"}, LambdaContext())

    assert summary["DeletionsHeldBack"] == 2
    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    assert emf[-1]["DeletionsHeldBack"] == 2
    assert emf[-1]["DriftStale"] == 1
    assert emf[-1]["ClusterName"] == "mesh"
    assert emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ConsulMesh/Registrar"


def test_the_handler_runs_locally_without_a_lambda_context(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.run(1, deliver=False)
    monkeypatch.setattr(reconcile, "aws_client", world.ecs.clients)

    summary = reconcile.handler({}, None)

    assert (summary["DriftMissing"], summary["Complete"]) == (1, True)
    assert node(1) in world.consul.nodes()


def test_the_handler_fails_loudly_when_consul_cannot_be_read(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reconcile, "aws_client", world.ecs.clients)
    world.consul.inject(kind="status", path_prefix="/v1/catalog/nodes", status=500, times=-1)
    capsys.readouterr()

    with pytest.raises(Exception, match="HTTP 500"):
        reconcile.handler({}, LambdaContext())

    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    assert emf[-1]["ReconcileIncomplete"] == 1


def test_fails_when_the_deletion_cap_is_out_of_range() -> None:
    with pytest.raises(ValueError, match="RECONCILE_MAX_DELETIONS must be an integer from 1"):
        reconcile.ReconcileSettings.from_env({"RECONCILE_MAX_DELETIONS": "0"})
    with pytest.raises(ValueError, match="TOMBSTONE_GRACE_HOURS must be an integer from 25"):
        reconcile.ReconcileSettings.from_env({"TOMBSTONE_GRACE_HOURS": "2"})


# --------------------------------------------------------------------------------------------
# Tombstones


def test_old_tombstones_of_tasks_ecs_forgot_are_collected(world: World) -> None:
    # GIVEN three stopped tasks: forgotten by ECS long ago, forgotten recently, still known
    world.run(1, 2, 3)
    world.stop(1, 2, 3)
    world.ecs.forget(tid(1))
    world.ecs.forget(tid(2))
    later = datetime.now(UTC) + timedelta(days=6)

    # WHEN a pass runs six days after the first stops (the others stopped "just now")
    world.consul.seed_kv(
        key(2),
        StateRecord(6, STOPPED, event_time=(later - timedelta(hours=1)).isoformat()).encode(),
    )
    report = reconcile.run_pass(
        world.rt,
        reconcile.ReconcileSettings(),
        retry.Budget.fixed(60.0),
        clients=world.ecs.clients,
        now=lambda: later,
    )

    # THEN only the old tombstone of the forgotten task is gone
    assert report.tombstones_collected == 1
    assert key(1) not in world.consul.kv()
    assert key(2) in world.consul.kv()
    assert key(3) in world.consul.kv()


def test_an_incomplete_listing_collects_no_tombstone(world: World) -> None:
    world.run(1)
    world.stop(1)
    world.ecs.forget(tid(1))
    world.ecs.faults["ListTasks"] = [denied("ListTasks")]

    reconcile.run_pass(
        world.rt,
        reconcile.ReconcileSettings(),
        retry.Budget.fixed(60.0),
        clients=world.ecs.clients,
        now=lambda: datetime.now(UTC) + timedelta(days=30),
    )

    assert key(1) in world.consul.kv()


# --------------------------------------------------------------------------------------------
# Time budget


def test_a_pass_out_of_time_leaves_the_rest_to_the_next_pass(world: World) -> None:
    # GIVEN 6 tasks missing from the catalog and a budget that runs out once the pass has read
    # the catalog (3 requests) and registered one task (record read, txn, sidecar, re-read)
    world.run(*range(1, 7), deliver=False)
    consul = world.consul
    consul.reset_requests()

    def remaining_ms() -> int:
        return 0 if consul.count() >= 3 + 4 else 60_000

    # WHEN a pass runs
    first = world.reconcile(budget=retry.Budget(remaining_ms, 0))

    # THEN it repairs what it could and reports the rest as deferred
    assert first.missing == 1
    assert first.deferred == 5
    # AND the next scheduled pass finishes the job from the fresh difference
    second = world.reconcile()
    assert (second.missing, second.in_sync) == (5, 1)
    assert len(consul.nodes()) == 6


# --------------------------------------------------------------------------------------------
# The ordering rules in repair mode (pure)


def test_repair_rewrites_at_the_records_version_but_never_below_or_over_a_tombstone() -> None:
    event = parse_event(json.dumps(task_event()))
    definition = task_definition("web")
    app = mesh_target(definition)
    assert not isinstance(app, Skip)
    wanted = desired_registration(
        event, definition, app, FakeHosts().get(CLUSTER_ARN, INSTANCE_ARN)
    )
    running = StateRecord(5, RUNNING, wanted.digest())
    tombstone = StateRecord(7, STOPPED)

    # the event path: a duplicate only verifies the sidecar; a stop over a tombstone reads nothing
    assert isinstance(decide(wanted, 5, running), VerifySidecar)
    assert isinstance(decide(None, 9, tombstone), Skip)
    # repair mode: rewrite at the record's own version, check a tombstoned task's node is gone
    assert decide(wanted, 5, running, repair=True) == Register(wanted)
    assert decide(None, 5, running, repair=True) == Deregister()
    assert isinstance(decide(None, 9, tombstone, repair=True), VerifyAbsent)
    # ... but never below the record's version nor over a tombstone
    assert isinstance(decide(wanted, 4, running, repair=True), Skip)
    assert isinstance(decide(wanted, 9, tombstone, repair=True), VerifyAbsent)


# --------------------------------------------------------------------------------------------
# Property: a random 10% of the events are lost; one pass restores exactly the running set


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per task: its events in ECS order (and so its final state in ECS)."""
    tasks = []
    for n in range(draw(st.integers(min_value=1, max_value=8))):
        task = uuid_like(draw(st.integers(min_value=0, max_value=2**64)), n)
        family = draw(st.sampled_from(["web", "api", "plain"]))
        fate = draw(st.sampled_from(["runs", "stops", "forgotten", "stops-before-running"]))
        steps = [("PENDING", "RUNNING")]
        if fate != "stops-before-running":
            steps.append(("RUNNING", "RUNNING"))
        if fate != "runs":
            steps += [("STOPPING", "STOPPED"), ("STOPPED", "STOPPED")]
        events = [
            {"family": family, "version": v + 1, "last_status": last, "desired_status": desired}
            for v, (last, desired) in enumerate(steps)
        ]
        tasks.append((task, [*events, {"forget": fate == "forgotten"}]))
    return tasks


def uuid_like(seed: int, n: int) -> str:
    return f"{seed:016x}{n:016x}"[-32:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    lost=st.lists(st.floats(0, 1), min_size=64, max_size=64),
    order=st.randoms(use_true_random=False),
)
def test_one_pass_restores_exactly_the_running_set_after_losing_10_percent_of_events(
    history: list[tuple[str, list[dict[str, Any]]]], lost: list[float], order: Any
) -> None:
    with ConsulDouble() as consul:
        ecs = FakeEcs()
        rt = fake_runtime(consul.url)
        registrar.set_runtime(rt)
        try:
            # GIVEN each task's history played in ECS, ~10% of its events lost on the way,
            # the rest delivered in any order
            played = 0
            delivered = []
            for task, steps in history:
                *changes, fate = steps
                for change in changes:
                    event = ecs.put_task(
                        task,
                        family=change["family"],
                        version=change["version"],
                        last_status=change["last_status"],
                        desired_status=change["desired_status"],
                    )
                    if lost[played % len(lost)] >= 0.1:
                        delivered.append(event)
                    played += 1
                if fate["forget"]:
                    ecs.forget(task)
            order.shuffle(delivered)
            if delivered:
                assert failed_ids(handler.handler(sqs_event(delivered), LambdaContext())) == []

            # WHEN one reconcile pass runs
            report = reconcile.run_pass(
                rt,
                reconcile.ReconcileSettings(max_deletions=100),
                retry.Budget.fixed(60.0),
                clients=ecs.clients,
            )

            # THEN the catalog holds exactly the opted-in running tasks, on the host's address
            assert report.complete
            nodes = consul.nodes()
            assert set(nodes) == {f"ecs-task-{t}" for t in running_ids(ecs)}
            assert all(n["Address"] == HOST_IP for n in nodes.values())
            # AND a second pass finds nothing left to do
            consul.reset_requests()
            reconcile.run_pass(
                rt, reconcile.ReconcileSettings(), retry.Budget.fixed(60.0), clients=ecs.clients
            )
            assert consul.writes() == 0
        finally:
            registrar.set_runtime(None)


def test_an_in_sync_pass_costs_two_aws_calls_per_100_tasks_and_three_consul_reads(
    world: World,
) -> None:
    # GIVEN 250 running tasks spread over 60 hosts, registered by a first pass
    hosts = world.ecs.add_instances(60)
    for n in range(250):
        world.ecs.put_task(
            tid(n),
            container_instance_arn=hosts[n % len(hosts)],
            host_ports={"web": {8080: 32768 + n}, "envoy": {20000: 42768 + n}},
        )
    assert world.reconcile().missing == 250
    world.consul.reset_requests()
    world.ecs.calls.clear()

    # WHEN the next pass runs over the catalog in sync
    report = world.reconcile()

    # THEN it reads ECS in pages and batches (task definitions: the runtime's cached source) ...
    assert report.in_sync == 250
    assert dict(world.ecs.calls) == {
        "ListTasks": 3,  # 100 per page
        "DescribeTasks": 3,  # 100 per call
        "DescribeContainerInstances": 1,  # 100 per call
        "DescribeInstanceInformation": 2,  # 50 per call
    }
    # AND Consul three times, writing nothing
    assert (world.consul.count(), world.consul.writes()) == (3, 0)
