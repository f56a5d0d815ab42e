"""The reconcile pass: drift repair, safety of deletions, the cap, tombstone GC, time budget.

Consul is the HTTP double; ECS and SSM are `ecs_fake.FakeEcs` behind the boto3 methods the
code calls; the event path (handler.handler) runs on the fast in-memory runtime of
registrar_fixtures, with the same task definitions and addresses as the fake ECS.
"""

from __future__ import annotations

import json
import tracemalloc
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import handler
import host_state
import inventory
import kv_layout
import listing
import migration
import pytest
import reconcile
import reconcile_consul
import registrar
import retry
import verification
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
from ecs_fake import FakeEcs, Instance, denied, running_ids, throttled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import MISSING_REASON, RUNNING, STOPPED, StateRecord, parse_event
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    INSTANCE_ARN,
    FakeHosts,
    LambdaContext,
    failed_ids,
    fake_runtime,
    load_event,
    seed_settled_markers,
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
    return kv_layout.task_key(CLUSTER_ARN, tid(n))


@dataclass
class World:
    consul: ConsulDouble
    rt: registrar.Runtime
    ecs: FakeEcs

    def deliver(self, *events: dict[str, Any]) -> list[str]:
        """The event path: one SQS batch through handler.handler; the failed message ids."""
        return failed_ids(handler.handler(sqs_event(events), LambdaContext()))

    def reconcile(
        self, budget: retry.Budget | None = None, now: datetime | None = None, **overrides: Any
    ) -> reconcile.PassReport:
        return reconcile.run_pass(
            self.rt,
            reconcile.ReconcileSettings(**overrides),
            budget or retry.Budget.fixed(60.0),
            clients=self.ecs.clients,
            now=(lambda: now) if now is not None else (lambda: datetime.now(UTC)),
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


def settle_migration(world: World) -> None:
    """The cluster moved off the legacy layout and had its registrations verified long ago."""
    seed_settled_markers(world.consul)


def test_a_pass_over_a_catalog_in_sync_writes_nothing(world: World) -> None:
    # GIVEN three tasks registered by their events, on a cluster migrated long ago
    world.run(1, 2, 3)
    settle_migration(world)
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


def test_a_task_publishing_a_port_range_is_registered(world: World) -> None:
    # GIVEN a running task whose RUNNING event was lost, and whose DescribeTasks answer carries
    # port-range bindings (no containerPort/hostPort) next to its single-port ones
    detail = load_event("task_running_port_range.json")["detail"]
    task_id = detail["taskArn"].rsplit("/", 1)[-1]
    world.ecs.tasks[task_id] = detail

    # WHEN a pass runs
    report = world.reconcile()

    # THEN the task is registered, not skipped as unusable
    assert report.missing == 1
    assert f"ecs-task-{task_id}" in world.consul.nodes()


def test_a_host_reported_in_a_docker_bridge_pool_is_registered_with_a_warning(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two running tasks (events lost) on a host whose SSM address lies in 172.18.0.0/16,
    # which Docker also gives user-defined bridges (br-*), and on-prem networks use too
    world.run(1, 2, deliver=False)
    world.ecs.instances[INSTANCE_ARN].address = "172.18.0.1"
    capsys.readouterr()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN both are registered (the address may be right), the host is counted once, and a
    # warning names the host and the attribute that settles it
    assert len(world.consul.nodes()) == 2
    assert (report.doubtful, report.metrics()["HostAddressDoubtful"]) == (1, 1)
    warnings = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"level":"WARNING"' in line and "172.18.0.1" in line
    ]
    assert warnings
    assert {w["container_instance_arn"] for w in warnings} == {INSTANCE_ARN}
    assert all("consul-mesh.address" in w["message"] for w in warnings)


def test_a_host_reported_on_docker0_keeps_its_tasks_out_until_its_address_is_set(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two running tasks (events lost) on a host whose SSM address is docker0's
    world.run(1, 2, deliver=False)
    world.ecs.instances[INSTANCE_ARN].address = "172.17.0.1"
    capsys.readouterr()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN neither is registered; both are counted, and one error line names the host and the
    # attribute that fixes it
    assert world.consul.nodes() == {}
    assert (report.refused, report.metrics()["HostAddressRefused"]) == (2, 2)
    errors = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"level":"ERROR"' in line
    ]
    assert len(errors) == 1
    assert INSTANCE_ARN in errors[0]["error"]
    assert "consul-mesh.address" in errors[0]["error"]

    # WHEN the operator sets the attribute, THEN the next pass registers both on it
    world.ecs.instances[INSTANCE_ARN].override = "192.168.40.7"
    assert world.reconcile().missing == 2
    assert {n["Address"] for n in world.consul.nodes().values()} == {"192.168.40.7"}


def test_one_host_ssm_will_not_describe_costs_only_its_own_tasks(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN 30 running tasks (events lost) on 30 hosts, one of which SSM no longer knows
    # (deregistered from SSM: DescribeInstanceInformation fails whole for any batch naming it)
    hosts = world.ecs.add_instances(30)
    for n, host in enumerate(hosts):
        world.ecs.put_task(
            tid(n),
            container_instance_arn=host,
            host_ports={"web": {8080: 32768 + n}, "envoy": {20000: 42768 + n}},
        )
    bad = world.ecs.instances[hosts[7]].instance_id
    world.ecs.ssm_refuses.add(bad)
    capsys.readouterr()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN every other host keeps its address and its task is registered
    assert report.missing == 29
    assert node(7) not in world.consul.nodes()
    # AND the lost one is reported by its ID, with SSM's error, not as "no IP"
    out = capsys.readouterr().out
    assert bad in out
    assert "InvalidInstanceId" in out
    assert report.failed == 1
    # AND finding it cost a few calls, not one per host
    assert world.ecs.calls["DescribeInstanceInformation"] <= 2 * 5 + 1


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


# A cluster named like ours in another account (cluster names are unique per account and Region).
TWIN_CLUSTER_ARN = CLUSTER_ARN.replace("123456789012", "210987654321")


def test_a_same_named_cluster_of_another_account_keeps_its_tasks(world: World) -> None:
    # GIVEN a cluster "mesh" of another account registering its task 9 in the same Consul
    registrar.set_runtime(fake_runtime(world.consul.url, cluster_arn=TWIN_CLUSTER_ARN))
    assert world.deliver(task_event(task_id=tid(9), cluster_arn=TWIN_CLUSTER_ARN)) == []
    registrar.set_runtime(world.rt)
    # AND our own task 1, which our ECS runs (it knows nothing of the twin's task 9)
    world.run(1)

    # WHEN our reconcile pass runs
    report = world.reconcile()

    # THEN it neither deletes nor tombstones the twin's task
    assert sorted(world.consul.nodes()) == [node(1), node(9)]
    assert (report.stale, report.in_sync) == (0, 1)
    # AND the twin's own stop still applies: its record was never taken for ours
    registrar.set_runtime(fake_runtime(world.consul.url, cluster_arn=TWIN_CLUSTER_ARN))
    stop = task_event("task_stopped.json", task_id=tid(9), cluster_arn=TWIN_CLUSTER_ARN)
    assert world.deliver(stop) == []
    assert sorted(world.consul.nodes()) == [node(1)]


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


def test_a_running_task_answered_missing_once_stays_registered_throughout(world: World) -> None:
    # GIVEN a task registered by its RUNNING event a minute ago
    event = world.ecs.put_task(tid(1))
    event["time"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert world.deliver(event) == []
    # AND ECS, eventually consistent, leaves it out of ListTasks and answers MISSING for one pass
    world.ecs.hidden.add(tid(1))

    # WHEN that pass runs
    first = world.reconcile()

    # THEN the task is neither removed nor tombstoned
    assert node(1) in world.consul.nodes()
    assert first.stale == 0
    record = world.record(1)
    assert record is not None
    assert record.status == RUNNING
    # AND once ECS answers normally, the next pass finds it in sync
    world.ecs.hidden.clear()
    world.consul.reset_requests()
    second = world.reconcile()
    assert (second.in_sync, second.repaired) == (1, 0)
    assert world.consul.writes() == 0


def test_missing_is_proof_once_the_record_is_an_hour_old(world: World) -> None:
    # GIVEN a task registered by its RUNNING event, whose stop was lost, and which ECS has
    # since forgotten: an hour later a pass finds it MISSING
    event = world.ecs.put_task(tid(1))
    event["time"] = datetime.now(UTC).isoformat()
    assert world.deliver(event) == []
    world.ecs.forget(tid(1))

    # WHEN a pass runs within the hour, THEN it keeps the task
    assert world.reconcile().stale == 0
    # AND the first pass after the hour removes it
    report = reconcile.run_pass(
        world.rt,
        reconcile.ReconcileSettings(),
        retry.Budget.fixed(60.0),
        clients=world.ecs.clients,
        now=lambda: datetime.now(UTC) + reconcile.MISSING_PROOF_AGE,
    )
    assert report.stale == 1
    assert world.consul.nodes() == {}


def test_a_task_removed_on_missing_is_registered_again_once_ecs_lists_it_running(
    world: World,
) -> None:
    # GIVEN a task registered by its RUNNING event, which ECS, faulty, leaves out of ListTasks
    # and answers MISSING for once its record is more than an hour old: a pass removes it
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    world.ecs.hidden.add(tid(1))
    later = datetime.now(UTC) + reconcile.MISSING_PROOF_AGE
    assert world.reconcile(now=later).stale == 1
    assert world.consul.nodes() == {}
    tombstone = world.record(1)
    assert tombstone is not None
    assert (tombstone.status, tombstone.reason) == (STOPPED, MISSING_REASON)

    # WHEN a later pass finds it listed and described RUNNING
    world.ecs.hidden.clear()
    report = world.reconcile(now=later)

    # THEN it is registered again over that tombstone, counted apart (it pages)
    assert node(1) in world.consul.nodes()
    assert (report.resurrected, report.missing) == (1, 0)
    assert report.metrics()["DriftResurrected"] == 1
    record = world.record(1)
    assert record is not None
    assert (record.status, record.reason) == (RUNNING, None)
    # AND the next pass finds it in sync and writes nothing
    world.consul.reset_requests()
    assert world.reconcile(now=later).in_sync == 1
    assert world.consul.writes() == 0


def test_tombstones_ecs_reported_are_never_overwritten(world: World) -> None:
    # GIVEN a task whose stop event landed, while ECS's lagging listing still says RUNNING
    world.run(1)
    world.stop(1)
    world.ecs.put_task(tid(1), version=3)

    # WHEN passes run
    report = world.reconcile()
    world.reconcile()

    # THEN the reported tombstone stands (no reason tag), nothing is registered again
    assert node(1) not in world.consul.nodes()
    assert report.resurrected == 0
    record = world.record(1)
    assert record is not None
    assert (record.status, record.reason) == (STOPPED, None)


def test_a_stop_event_turns_a_missing_tombstone_into_a_reported_one(world: World) -> None:
    # GIVEN a task removed on MISSING (its record an hour old)
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    world.ecs.hidden.add(tid(1))
    later = datetime.now(UTC) + reconcile.MISSING_PROOF_AGE
    assert world.reconcile(now=later).stale == 1

    # WHEN its stop event arrives, and then a pass whose listing still shows it RUNNING
    world.stop(1)
    world.ecs.hidden.clear()
    world.ecs.put_task(tid(1), version=3)
    report = world.reconcile(now=later)

    # THEN the stop's tombstone holds: the pass cannot bring the task back
    record = world.record(1)
    assert record is not None
    assert (record.status, record.version, record.reason) == (STOPPED, 6, None)
    assert node(1) not in world.consul.nodes()
    assert report.resurrected == 0


def test_a_task_the_listing_missed_is_kept(world: World) -> None:
    # GIVEN a registered task ECS still runs but that ListTasks (eventually consistent) omits
    world.run(1)
    world.ecs.tasks[tid(1)]["launchType"] = "FARGATE"  # not listed as EXTERNAL

    report = world.reconcile()

    assert node(1) in world.consul.nodes()
    assert report.stale == 0


OTHER_HOST = INSTANCE_ARN[: INSTANCE_ARN.rindex("/")] + "/" + "f" * 32


def add_other_host(world: World) -> None:
    """A second host, known to ECS, SSM and the event path's host source."""
    world.ecs.instances[OTHER_HOST] = Instance(OTHER_HOST, "mi-0fff", "10.20.30.41")
    assert isinstance(world.rt.hosts, FakeHosts)
    world.rt.hosts.addresses[OTHER_HOST] = "10.20.30.41"


@pytest.mark.parametrize("host", ["INACTIVE", "DEREGISTERING", "MISSING"])
def test_tasks_orphaned_by_a_force_deregistered_host_are_removed(world: World, host: str) -> None:
    # GIVEN tasks 1 and 2 on a host, task 3 on another, all registered by their events
    add_other_host(world)
    world.run(1, 2)
    world.run(3, container_instance_arn=OTHER_HOST)
    # AND the first host deregistered with force, its event lost: its tasks are orphaned, out
    # of ListTasks while DescribeTasks still answers RUNNING; DescribeContainerInstances says
    # INACTIVE or DEREGISTERING, or has forgotten the host (MISSING)
    if host == "MISSING":
        del world.ecs.instances[INSTANCE_ARN]
    else:
        world.ecs.instances[INSTANCE_ARN].status = host
    world.ecs.orphaned |= {tid(1), tid(2)}
    # (a MISSING host is proof under the MISSING rule only: the records must be an hour old)
    later = datetime.now(UTC) + reconcile.MISSING_PROOF_AGE

    # WHEN passes run, with a deletion cap of 1
    first = world.reconcile(now=later, max_deletions=1)

    # THEN the orphans go through the deletion path and its cap, the other host's task stays
    assert (first.stale, first.held_back) == (1, 1)
    second = world.reconcile(now=later, max_deletions=1)
    assert (second.stale, second.held_back) == (1, 0)
    assert sorted(world.consul.nodes()) == [node(3)]
    # AND they are tombstoned for good (no event can pass that version); only the MISSING
    # host's are tagged as inferred
    for n in (1, 2):
        record = world.record(n)
        assert record is not None
        assert (record.status, record.version) == (STOPPED, host_state.GONE_VERSION)
        assert record.reason == (MISSING_REASON if host == "MISSING" else None)
    # AND the next pass writes nothing
    world.consul.reset_requests()
    world.reconcile(now=later)
    assert world.consul.writes() == 0


def test_an_unlisted_task_on_an_active_host_or_a_young_record_is_kept(world: World) -> None:
    # GIVEN task 1 left out of ListTasks but described RUNNING on its ACTIVE host, and task 2
    # the same on a host DescribeContainerInstances answers MISSING, its record just written
    add_other_host(world)
    world.run(1)
    event = world.ecs.put_task(tid(2), container_instance_arn=OTHER_HOST)
    assert world.deliver({**event, "time": datetime.now(UTC).isoformat()}) == []
    del world.ecs.instances[OTHER_HOST]
    world.ecs.orphaned |= {tid(1), tid(2)}

    # WHEN a pass runs
    report = world.reconcile()

    # THEN both are kept: an eventually consistent listing, and a MISSING too young to prove
    assert report.stale == 0
    assert sorted(world.consul.nodes()) == [node(1), node(2)]


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
    settle_migration(world)
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


def test_a_pass_starts_no_aws_request_it_could_not_finish(world: World) -> None:
    # GIVEN a registered task that stopped unseen, and a pass with 6 s of budget left: less
    # than one AWS request may take (connect + read timeouts)
    world.run(1)
    world.stop(1, deliver=False)
    world.ecs.calls.clear()

    # WHEN the pass runs
    report = world.reconcile(budget=retry.Budget(lambda: 6_000, 0))

    # THEN it starts no AWS request, knows its listing is incomplete, and deletes nothing
    assert sum(world.ecs.calls.values()) == 0
    assert not report.complete
    assert node(1) in world.consul.nodes()


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
    # ... except a tombstone inferred from MISSING: a pass registering the listed task, or a
    # stop event, overwrites it; a RUNNING event (perhaps late) and a pass's stop do not
    missing = StateRecord(2**63 - 1, STOPPED, reason=MISSING_REASON)
    assert decide(wanted, 3, missing, repair=True) == Register(wanted)
    assert decide(None, 6, missing) == Deregister()
    assert isinstance(decide(wanted, 3, missing), VerifyAbsent)
    assert isinstance(decide(None, 6, missing, repair=True), VerifyAbsent)


# --------------------------------------------------------------------------------------------
# Property: a random 10% of the events are lost; one pass restores exactly the running set


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per task: its events in ECS order (and so its final state in ECS)."""
    tasks = []
    for n in range(draw(st.integers(min_value=1, max_value=8))):
        task = uuid_like(draw(st.integers(min_value=0, max_value=2**64)), n)
        family = draw(st.sampled_from(["web", "api", "plain"]))
        fate = draw(
            st.sampled_from(["runs", "stops", "forgotten", "stops-before-running", "blinks"])
        )
        steps = [("PENDING", "RUNNING")]
        if fate != "stops-before-running":
            steps.append(("RUNNING", "RUNNING"))
        if fate not in ("runs", "blinks"):
            steps += [("STOPPING", "STOPPED"), ("STOPPED", "STOPPED")]
        events = [
            {"family": family, "version": v + 1, "last_status": last, "desired_status": desired}
            for v, (last, desired) in enumerate(steps)
        ]
        # "blinks": runs, registered by its (just delivered) events, while ECS answers MISSING
        # for it during the pass (eventual consistency)
        tasks.append((task, [*events, {"forget": fate == "forgotten", "blink": fate == "blinks"}]))
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
            # the rest delivered in any order; blinking tasks' events all arrive, just now
            played = 0
            delivered = []
            now = datetime.now(UTC).isoformat()
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
                    if fate["blink"]:
                        delivered.append({**event, "time": now})
                    elif lost[played % len(lost)] >= 0.1:
                        delivered.append(event)
                    played += 1
                if fate["forget"]:
                    ecs.forget(task)
                if fate["blink"]:
                    ecs.hidden.add(task)
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
            # AND a second pass, ECS answering normally again, finds nothing left to do
            ecs.hidden.clear()
            consul.reset_requests()
            reconcile.run_pass(
                rt, reconcile.ReconcileSettings(), retry.Budget.fixed(60.0), clients=ecs.clients
            )
            assert consul.writes() == 0
        finally:
            registrar.set_runtime(None)


def spread_tasks(world: World, count: int = 250, hosts: int = 60, family: str = "web") -> list[str]:
    """`count` running tasks over `hosts` hosts, registered by a first pass. "web" runs in
    bridge mode (dynamic host ports), "api" in host mode."""
    instances = world.ecs.add_instances(hosts)
    for n in range(count):
        world.ecs.put_task(
            tid(n),
            family=family,
            container_instance_arn=instances[n % len(instances)],
            host_ports=bridge_ports(n) if family == "web" else None,
        )
    assert world.reconcile().missing == count
    return instances


def bridge_ports(n: int, shift: int = 0) -> dict[str, dict[int, int]]:
    return {"web": {8080: 32768 + n + shift}, "envoy": {20000: 42768 + n + shift}}


def test_a_first_pass_after_a_deploy_describes_every_task(world: World) -> None:
    # GIVEN 250 running tasks over 60 hosts, and a marker written by other registration code
    spread_tasks(world, family="api")
    seed_settled_markers(world.consul)
    stale = json.dumps({"shape": "0" * 16, "since": "2020-01-01T00:00:00+00:00", "verified": True})
    world.consul.seed_kv(kv_layout.verified_key(CLUSTER_ARN), stale.encode())
    world.consul.reset_requests()
    world.ecs.calls.clear()

    # WHEN a pass runs over the catalog in sync
    report = world.reconcile()

    # THEN it reads ECS in pages and batches, describing every task (this code never has)
    assert report.in_sync == 250
    assert dict(world.ecs.calls) == {
        "ListTasks": 3,  # 100 per page
        "DescribeTasks": 3,  # 100 per call
        "DescribeContainerInstances": 1,  # 100 per call
        "DescribeInstanceInformation": 2,  # 50 per call
    }
    # AND Consul three times, and once more for the marker (this code, not yet verified)
    assert (world.consul.count(), world.consul.writes()) == (4, 1)


def test_an_in_sync_pass_describes_no_task_consul_vouches_for(world: World) -> None:
    # GIVEN 250 running host-mode tasks over 60 hosts, all described by this code before
    spread_tasks(world, family="api")
    seed_settled_markers(world.consul)
    world.consul.reset_requests()
    world.ecs.calls.clear()

    # WHEN the next pass runs over the catalog in sync
    report = world.reconcile()

    # THEN it lists the tasks and reads their hosts, and describes none of them
    assert (report.in_sync, report.running) == (250, 250)
    assert dict(world.ecs.calls) == {
        "ListTasks": 3,
        "DescribeContainerInstances": 1,
        "DescribeInstanceInformation": 2,
    }
    # AND Consul three times, writing nothing
    assert (world.consul.count(), world.consul.writes()) == (3, 0)


def test_a_vouched_task_whose_host_moved_is_described_and_repaired(world: World) -> None:
    # GIVEN verified passes, and a host whose SSM address changed since its tasks registered
    instances = spread_tasks(world, count=20, hosts=4, family="api")
    seed_settled_markers(world.consul)
    moved = world.ecs.instances[instances[0]]
    moved.address = "10.77.0.9"
    world.ecs.calls.clear()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN the moved host's 5 tasks were described and re-registered on the new address; the
    # other 15 were not described
    assert (report.changed, report.in_sync) == (5, 15)
    assert world.ecs.calls["DescribeTasks"] == 1
    assert sum(n["Address"] == "10.77.0.9" for n in world.consul.nodes().values()) == 5


def test_a_vouched_task_whose_node_is_gone_is_described_and_registered(world: World) -> None:
    # GIVEN verified passes, and a task node someone deleted (its record stays)
    spread_tasks(world, count=20, hosts=4, family="api")
    seed_settled_markers(world.consul)
    request = urllib.request.Request(
        f"{world.consul.url}/v1/catalog/deregister",
        data=json.dumps({"Node": f"ecs-task-{tid(3)}"}).encode(),
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=5):
        pass

    # WHEN a pass runs, THEN it is registered again
    report = world.reconcile()
    assert (report.missing, report.in_sync) == (1, 19)
    assert f"ecs-task-{tid(3)}" in world.consul.nodes()


def test_a_bridge_task_whose_container_restarted_on_a_new_port_is_repaired(
    world: World,
) -> None:
    # GIVEN verified passes over 10 host-mode and 10 bridge-mode tasks, all in sync
    instances = spread_tasks(world, count=10, hosts=4, family="api")
    for n in range(10, 20):
        world.ecs.put_task(
            tid(n), container_instance_arn=instances[n % 4], host_ports=bridge_ports(n)
        )
    assert world.reconcile().missing == 10
    seed_settled_markers(world.consul)
    # AND a bridge task's containers restarted in place by their restart policy: same task,
    # record, node and host, but Docker gave them new dynamic host ports, and no event came
    world.ecs.put_task(
        tid(12), container_instance_arn=instances[0], host_ports=bridge_ports(12, shift=1000)
    )
    world.ecs.calls.clear()

    # WHEN one pass runs
    report = world.reconcile()

    # THEN every bridge task was described (one call) and the restarted one re-registered on
    # its new ports; the host-mode tasks were not described
    assert (report.changed, report.in_sync) == (1, 19)
    assert world.ecs.calls["DescribeTasks"] == 1
    ports = {s["ServicePort"] for s in world.consul.services(node(12))}
    assert ports == {32768 + 12 + 1000, 42768 + 12 + 1000}


def test_verification_waits_for_a_clean_pass_after_the_settle_time(world: World) -> None:
    # GIVEN a cluster of host-mode tasks whose passes have never been verified
    spread_tasks(world, count=20, hosts=4, family="api")
    seed_settled_markers(world.consul)
    world.consul.seed_kv(kv_layout.verified_key(CLUSTER_ARN), b"not json")
    now = datetime.now(UTC)

    def marker() -> dict[str, Any]:
        return dict(json.loads(world.consul.kv()[kv_layout.verified_key(CLUSTER_ARN)][0]))

    # WHEN a clean pass runs, THEN it writes the marker for this code, not yet verified
    world.reconcile(now=now)
    assert (marker()["shape"], marker()["verified"]) == (verification.SHAPE, False)
    # AND a pass within SETTLE, or one that could not read the listing, verifies nothing
    world.reconcile(now=now + verification.SETTLE / 2)
    world.ecs.faults["ListTasks"] = [denied("ListTasks")]
    world.reconcile(now=now + verification.SETTLE)
    assert marker()["verified"] is False
    # AND the first clean pass after it does, and the one after that describes nothing
    world.reconcile(now=now + verification.SETTLE)
    assert marker()["verified"] is True
    world.ecs.calls.clear()
    world.reconcile(now=now + verification.SETTLE)
    assert world.ecs.calls["DescribeTasks"] == 0


def test_a_large_cluster_reads_its_records_in_shards_with_the_same_outcome(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a cluster "large" enough for shards (the threshold lowered to 10 listed tasks),
    # 20 tasks in sync but one whose host moved, and one that stopped unseen
    monkeypatch.setattr(reconcile_consul, "SHARD_TASKS", 10)
    instances = spread_tasks(world, count=21, hosts=21)
    seed_settled_markers(world.consul)
    world.ecs.instances[instances[4]].address = "10.77.0.9"
    world.stop(20, deliver=False)
    world.consul.reset_requests()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN the records were read in 19 requests: 16 task shards, the host records, 2 markers
    kv_reads = [
        r.path
        for r in world.consul.requests
        if r.path.startswith("/v1/kv/") and len(r.path.rsplit("/", 1)[-1]) != 32  # a record
    ]
    assert len(kv_reads) == 19
    assert sum("/tasks/" in p for p in kv_reads) == 16
    # AND the pass did what the single read does: repaired the moved task, removed the stopped
    assert (report.in_sync, report.changed, report.stale) == (19, 1, 1)
    assert node(20) not in world.consul.nodes()


def record_reads(world: World) -> list[str]:
    """The KV listings of the pass (not the single-record reads of its repairs)."""
    return [
        r.path
        for r in world.consul.requests
        if r.path.startswith("/v1/kv/") and len(r.path.rsplit("/", 1)[-1].split("?")[0]) != 32
    ]


def test_a_failed_listing_reads_the_records_in_shards(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 25 tasks, fewer than the (lowered) shard threshold of 30, and a ListTasks that
    # fails: its count (0) says nothing of how many records there are
    monkeypatch.setattr(reconcile_consul, "SHARD_TASKS", 30)
    spread_tasks(world, count=25, hosts=5)
    seed_settled_markers(world.consul)
    world.ecs.faults["ListTasks"] = [denied("ListTasks")]
    world.consul.reset_requests()

    # WHEN a pass runs, THEN it deletes nothing and reads the records in 16 shards, never in
    # one answer of unknown size
    report = world.reconcile()
    assert not report.complete
    assert report.stale == 0
    assert sum("/tasks/" in p for p in record_reads(world)) == 16


def test_the_shard_decision_counts_the_task_nodes_too(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 25 registered tasks, a shard threshold of 20, and a listing (complete) that shows
    # only 15 of them, as an eventually consistent ListTasks may
    monkeypatch.setattr(reconcile_consul, "SHARD_TASKS", 20)
    spread_tasks(world, count=25, hosts=5)
    seed_settled_markers(world.consul)
    world.ecs.hidden |= {tid(n) for n in range(15, 25)}
    world.consul.reset_requests()

    # WHEN a pass runs, THEN the 25 owned nodes decide: the records are read in shards
    world.reconcile()
    assert sum("/tasks/" in p for p in record_reads(world)) == 16


def test_a_shard_that_cannot_be_read_fails_the_pass_and_deletes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a sharded cluster with a task that stopped unseen, and one shard Consul will not serve
    monkeypatch.setattr(reconcile_consul, "SHARD_TASKS", 10)
    spread_tasks(world, count=21, hosts=3)
    seed_settled_markers(world.consul)
    world.stop(20, deliver=False)
    shard = f"/v1/kv/{kv_layout.cluster_prefix(CLUSTER_ARN)}tasks/7"
    world.consul.inject(kind="status", path_prefix=shard, status=500, times=-1)

    # WHEN a pass runs, THEN it fails, and the stopped task's node is still there
    with pytest.raises(Exception, match="HTTP 500"):
        world.reconcile()
    assert node(20) in world.consul.nodes()


@pytest.mark.parametrize("sharded", [True, False], ids=["shards", "single read"])
def test_records_hidden_by_the_tokens_acl_fail_the_pass_and_delete_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, sharded: bool
) -> None:
    # GIVEN 21 registered tasks (their IDs all fall in shard "0"), one of which ECS no longer
    # knows (MISSING) 10 minutes after it started: too young a record for MISSING to prove
    # anything
    if sharded:
        monkeypatch.setattr(reconcile_consul, "SHARD_TASKS", 10)
    spread_tasks(world, count=21, hosts=3)
    seed_settled_markers(world.consul)
    world.ecs.forget(tid(20))
    # AND a registrar token that may no longer read the task records: Consul leaves them out
    # of the recursive read and says so in X-Consul-Results-Filtered-By-ACLs
    world.consul.hide_keys(f"{kv_layout.cluster_prefix(CLUSTER_ARN)}tasks/0")

    # WHEN a pass runs, THEN it fails on the filtered read instead of reading no records, and
    # the MISSING task's node is still there
    with pytest.raises(Exception, match="X-Consul-Results-Filtered-By-ACLs"):
        world.reconcile()
    assert node(20) in world.consul.nodes()


# --------------------------------------------------------------------------------------------
# The move from the name-keyed layout to the cluster-ARN one (kv_layout.py, migration.py): the
# first pass after the deploy moves what is provably this cluster's, copies young tombstones,
# leaves the rest, and the next pass writes nothing.

INSTANCE_ID = host_state.instance_id(INSTANCE_ARN)


def legacy_key(n: int) -> str:
    return kv_layout.legacy_key(CLUSTER_ARN, kv_layout.TASKS, tid(n))


def demote(world: World, n: int) -> None:
    """Put task n's record back where the release before the ARN layout kept it."""
    world.consul.seed_kv(legacy_key(n), world.consul.kv()[key(n)][0])
    request = urllib.request.Request(f"{world.consul.url}/v1/kv/{key(n)}", method="DELETE")
    with urllib.request.urlopen(request, timeout=5):
        pass


def test_the_first_pass_moves_what_is_this_clusters_and_leaves_the_rest(world: World) -> None:
    now = datetime.now(UTC)
    # GIVEN what the previous release left in the name-keyed layout: task 1 running, registered
    # by its event; task 2 stopped an hour ago; task 3 stopped a week ago (ECS forgot it); a
    # running record of task 4 that our ECS and catalog know nothing of (a same-named cluster's
    # of another account); and the record of the host task 1 runs on
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    demote(world, 1)
    hour_ago = StateRecord(6, STOPPED, event_time=(now - timedelta(hours=1)).isoformat())
    world.consul.seed_kv(legacy_key(2), hour_ago.encode())
    world.ecs.put_task(tid(2), version=6, last_status="STOPPED", desired_status="STOPPED")
    week_ago = StateRecord(6, STOPPED, event_time=(now - timedelta(days=7)).isoformat())
    world.consul.seed_kv(legacy_key(3), week_ago.encode())
    world.ecs.forget(tid(3))
    twin = StateRecord(3, RUNNING, "d1", event_time=now.isoformat()).encode()
    world.consul.seed_kv(legacy_key(4), twin)
    host = host_state.HostRecord(5, True, "ACTIVE").encode()
    world.consul.seed_kv(kv_layout.legacy_key(CLUSTER_ARN, kv_layout.HOSTS, INSTANCE_ID), host)

    # WHEN the first pass after the deploy runs
    report = world.reconcile()

    # THEN task 1's record moved, and its catalog entries were found in sync (no rewrite)
    kv = world.consul.kv()
    assert (key(1) in kv, legacy_key(1) in kv) == (True, False)
    assert (report.in_sync, report.missing, report.changed) == (1, 0, 0)
    # AND the young tombstone was copied (and kept for whoever else may own it)
    assert (key(2) in kv, legacy_key(2) in kv) == (True, True)
    # AND the week-old tombstone of a forgotten task, which nothing attributes to this cluster,
    # is left for its owner (or the one-off cleanup in docs/operations.md), not collected
    assert legacy_key(3) in kv
    assert report.tombstones_collected == 0
    # AND the record nothing proves ours is left as it was, and not copied
    assert kv[legacy_key(4)][0] == twin
    assert key(4) not in kv
    # AND the host's record moved
    assert kv[kv_layout.host_key(CLUSTER_ARN, INSTANCE_ID)][0] == host
    assert report.migrated == 3

    # WHEN the next pass runs, THEN its only write is the marker saying the migration is done
    world.consul.reset_requests()
    assert world.reconcile().repaired == 0
    assert world.consul.writes() == 1
    assert kv_layout.migration_key(CLUSTER_ARN) in world.consul.kv()
    # AND the pass after it writes nothing
    world.consul.reset_requests()
    world.reconcile()
    assert world.consul.writes() == 0
    # AND a late RUNNING event of task 2 finds its tombstone
    assert world.deliver(task_event(task_id=tid(2), version=3)) == []
    assert f"ecs-task-{tid(2)}" not in world.consul.nodes()


def test_the_legacy_layout_costs_two_reads_until_the_migration_settles(world: World) -> None:
    # GIVEN a cluster running tasks registered by their events, nothing in the legacy layout
    world.run(1, 2)
    seed_settled_markers(world.consul, migrated=False)
    now = datetime.now(UTC)
    world.consul.reset_requests()

    # WHEN the first pass after the deploy runs
    world.reconcile(now=now)

    # THEN it read this cluster's prefix and the two legacy prefixes, found nothing left to
    # move, and wrote the marker (its one write)
    kv_reads = sorted(r.path for r in world.consul.requests if r.path.startswith("/v1/kv/"))
    name = "/v1/kv/ecs-registrar/mesh/"
    assert kv_reads == [f"{name}hosts/", f"{name}tasks/", f"{name}us-east-1/123456789012/"]
    assert (world.consul.count(), world.consul.writes()) == (3 + 2 + 1, 1)
    assert kv_layout.migration_key(CLUSTER_ARN) in world.consul.kv()

    # AND passes within MIGRATION_SETTLE still read the legacy prefixes, writing nothing
    world.consul.reset_requests()
    world.reconcile(now=now + migration.MIGRATION_SETTLE / 2)
    assert (world.consul.count(), world.consul.writes()) == (3 + 2, 0)

    # AND the passes after it make the 3 requests of a pass, no legacy read
    world.consul.reset_requests()
    world.reconcile(now=now + migration.MIGRATION_SETTLE)
    assert (world.consul.count(), world.consul.writes()) == (3, 0)


def test_no_pass_reads_or_collects_a_same_named_clusters_records(world: World) -> None:
    # GIVEN a cluster "mesh" of another account in the same Consul, running the ARN layout:
    # its running task 9, and its tombstone of task 8 from a week ago
    registrar.set_runtime(fake_runtime(world.consul.url, cluster_arn=TWIN_CLUSTER_ARN))
    assert world.deliver(task_event(task_id=tid(9), cluster_arn=TWIN_CLUSTER_ARN)) == []
    registrar.set_runtime(world.rt)
    week_ago = datetime.now(UTC) - timedelta(days=7)
    old_stop = StateRecord(6, STOPPED, event_time=week_ago.isoformat()).encode()
    twin_tombstone = kv_layout.task_key(TWIN_CLUSTER_ARN, tid(8))
    world.consul.seed_kv(twin_tombstone, old_stop)
    # AND a week-old legacy tombstone of task 7 nothing attributes to us (ECS forgot it)
    world.consul.seed_kv(legacy_key(7), old_stop)
    world.ecs.forget(tid(7))
    world.run(1)
    world.consul.reset_requests()

    # WHEN our passes run
    world.reconcile()

    # THEN no answer of Consul carried the twin's records (no read of the whole name)
    assert not any(r.path.rstrip("/") == "/v1/kv/ecs-registrar/mesh" for r in world.consul.requests)
    # AND neither the twin's tombstone nor the unattributable legacy one was collected
    kv = world.consul.kv()
    assert twin_tombstone in kv
    assert legacy_key(7) in kv


def test_a_stop_before_the_first_pass_lands_and_the_pass_drops_the_old_record(
    world: World,
) -> None:
    # GIVEN task 1 registered by the previous release (its record in the name-keyed layout)
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    demote(world, 1)

    # WHEN its stop arrives before any pass has run
    stop = world.ecs.put_task(tid(1), version=6, last_status="STOPPED", desired_status="STOPPED")
    assert world.deliver(stop) == []

    # THEN the task is gone and tombstoned in the ARN layout
    assert world.consul.nodes() == {}
    tombstone = world.record(1)
    assert tombstone is not None
    assert tombstone.status == STOPPED
    # AND the first pass deletes the superseded running record, the second writes only the
    # migration marker, the third nothing
    world.reconcile()
    assert legacy_key(1) not in world.consul.kv()
    for writes in (1, 0):
        world.consul.reset_requests()
        world.reconcile()
        assert world.consul.writes() == writes


def test_a_late_running_event_before_the_first_pass_is_removed_by_it(world: World) -> None:
    # GIVEN task 1 stopped under the previous release: its tombstone is in the legacy layout
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    stop = world.ecs.put_task(tid(1), version=6, last_status="STOPPED", desired_status="STOPPED")
    assert world.deliver(stop) == []
    demote(world, 1)

    # WHEN its RUNNING event is delivered late, before the first pass (the one window the
    # migration leaves: the event path reads the ARN layout only)
    assert world.deliver(task_event(task_id=tid(1), version=4)) == []
    assert f"ecs-task-{tid(1)}" in world.consul.nodes()

    # THEN the first pass removes it: ECS reports the task stopped
    report = world.reconcile()
    assert world.consul.nodes() == {}
    assert report.stale == 1


class _RecordsKv:
    """`kv_list` over this cluster's task records, each answer built anew per call (as an HTTP
    answer is decoded anew): what `migration.read` asks of Consul, without the HTTP."""

    def __init__(self, tasks: int, pad: int) -> None:
        self._ids = [f"{n:032x}"[::-1] for n in range(tasks)]
        self._pad = pad

    def record(self, task_id: str) -> bytes:
        sidecar = {
            "Service": {
                "Meta": {"container-instance-arn": INSTANCE_ARN, "pad": "x" * self._pad},
                "Proxy": {"LocalServiceAddress": "127.0.0.1"},
            }
        }
        return StateRecord(3, RUNNING, "d" * 64, sidecar, "2026-01-01T00:00:00+00:00").encode()

    def kv_list(self, prefix: str, *, max_bytes: int | None = None) -> list[inventory.KVPair]:
        if prefix == kv_layout.migration_key(CLUSTER_ARN):
            value = json.dumps({"migrated_at": "2026-01-01T00:00:00+00:00"}).encode()
            return [inventory.KVPair(prefix, value, 1)]
        return [
            inventory.KVPair(k, self.record(tid), 2)
            for tid in self._ids
            if (k := kv_layout.task_key(CLUSTER_ARN, tid)).startswith(prefix)
        ]


def test_a_sharded_read_holds_one_shard_of_raw_records_at_a_time() -> None:
    # GIVEN 1,600 task records of ~8 KB each (12 MiB of raw values), migrated long ago
    kv = _RecordsKv(1600, pad=8000)
    raw = sum(len(kv.record(t)) for t in kv._ids)

    # WHEN they are read in shards, under tracemalloc
    tracemalloc.start()
    try:
        records = migration.read(kv, CLUSTER_ARN, datetime.now(UTC), shards=True)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # THEN every record was read, and the peak is about one shard's raw values (1/16), not all
    # of them: sharding bounds the pass's memory (review-16 m1: every raw value was kept)
    assert len(records.tasks) == 1600
    assert records.host_mode == set(kv._ids)
    assert peak < raw / 4, f"peak {peak / 2**20:.1f} MiB for {raw / 2**20:.1f} MiB of records"


def _records_bytes(world: World) -> int:
    """Bytes of the cluster's records in one `?recurse` answer."""
    url = f"{world.consul.url}/v1/kv/{kv_layout.cluster_prefix(CLUSTER_ARN)}?recurse"
    with urllib.request.urlopen(url) as answer:
        return len(answer.read())


def test_tombstones_count_toward_reading_the_records_in_shards(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 6 running tasks, far fewer than SHARD_TASKS, and a single read allowed a little more
    # than their records take: a pass reads them in one request
    spread_tasks(world, count=6, hosts=3, family="api")
    seed_settled_markers(world.consul)
    limit = _records_bytes(world) + 2000
    monkeypatch.setattr(reconcile_consul, "SINGLE_READ_BYTES", limit)
    world.consul.reset_requests()
    world.reconcile()
    assert sum("/tasks/" in p for p in record_reads(world)) == 0
    # AND then 24 short-lived tasks that started and stopped, leaving 24 tombstones
    started = [world.ecs.put_task(tid(n), family="api") for n in range(6, 30)]
    assert world.deliver(*started) == []
    world.stop(*range(6, 30))
    assert _records_bytes(world) > limit
    world.consul.reset_requests()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN the records, tombstones included, outgrew one read: they were read in 16 shards
    # (the single read cut off at the limit), with a single read's outcome
    assert sum("/tasks/" in p for p in record_reads(world)) == 16
    assert single_reads(world) == 1
    assert (report.in_sync, report.stale, report.missing, report.complete) == (6, 0, 0, True)
    assert world.consul.writes() == 0

    # AND the next pass in the same execution environment goes to the shards straight away:
    # the servers do not build the whole oversized answer again for a read cut off unread
    world.consul.reset_requests()
    report = world.reconcile()
    assert single_reads(world) == 0
    assert sum("/tasks/" in p for p in record_reads(world)) == 16
    assert (report.in_sync, report.complete) == (6, True)
    assert world.consul.writes() == 0


def single_reads(world: World) -> int:
    """The pass's reads of the cluster's whole prefix in one request (not its shards)."""
    whole = "/v1/kv/" + kv_layout.cluster_prefix(CLUSTER_ARN)
    return sum(r.path == whole for r in world.consul.requests)


def slow_world(world: World, **settings: Any) -> World:
    """`world` on a runtime with these Settings (timeouts)."""
    rt = fake_runtime(world.consul.url, **settings)
    registrar.set_runtime(rt)
    return World(world.consul, rt, world.ecs)


def test_a_listing_waits_for_consul_longer_than_a_single_request_does(world: World) -> None:
    # GIVEN three registered tasks, a 0.3 s per-request timeout, and a Consul that takes 1 s
    # to start answering the node listing (it builds the whole answer before its first byte:
    # agent/http.go `wrap`), as a 100,000-node listing can on a busy server
    world = slow_world(world, consul_timeout_s=0.3)
    world.run(1, 2, 3)
    settle_migration(world)
    world.consul.inject(kind="delay", path_prefix="/v1/catalog/nodes", delay=1.0, times=-1)
    world.consul.reset_requests()

    # WHEN a pass runs
    report = world.reconcile()

    # THEN the listing is waited for (CONSUL_LIST_TIMEOUT_SECONDS, default 30 s), not failed
    # four times at the event path's per-request timeout
    assert (report.in_sync, report.complete) == (3, True)
    assert world.consul.writes() == 0


def test_a_single_read_unanswered_within_the_listing_timeout_is_read_in_shards(
    world: World,
) -> None:
    # GIVEN three registered tasks and a Consul that takes 2 s to start answering the single
    # read of the cluster's records, under a 0.5 s listing timeout (an answer too large to
    # build in time); its shards answer at once
    world = slow_world(world, consul_timeout_s=0.5, consul_list_timeout_s=0.5)
    world.run(1, 2, 3)
    settle_migration(world)
    whole = "/v1/kv/" + kv_layout.cluster_prefix(CLUSTER_ARN)
    world.consul.inject(kind="delay", path_prefix=whole, exact=True, delay=2.0, times=-1)
    world.consul.reset_requests()

    # WHEN a pass runs
    report = world.reconcile()
    world.consul.wait_idle()  # the abandoned read is recorded once the double has served it

    # THEN the single read is given up once (not retried) and the records read in 16 shards,
    # with a single read's outcome: nothing deleted, nothing written
    assert single_reads(world) == 1
    assert sum("/tasks/" in p for p in record_reads(world)) == 16
    assert (report.in_sync, report.stale, report.complete) == (3, 0, True)
    assert sorted(world.consul.nodes()) == [node(1), node(2), node(3)]
    assert world.consul.writes() == 0
    # AND the next pass goes to the shards straight away
    world.consul.reset_requests()
    assert world.reconcile().in_sync == 3
    assert single_reads(world) == 0
