"""State records move from the name-keyed layout to the cluster-ARN one (kv_layout.py,
migration.py) in the first reconcile pass after the deploy: what is provably this cluster's
moves, young tombstones are copied, everything else stays, and the next pass writes nothing."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import handler
import host_state
import kv_layout
import pytest
import reconcile
import registrar
import retry
from ecs_fake import FakeEcs
from model import RUNNING, STOPPED, StateRecord
from registrar_fixtures import (
    CLUSTER_ARN,
    INSTANCE_ARN,
    LambdaContext,
    failed_ids,
    fake_runtime,
    sqs_event,
    task_event,
)

from tests.consul_double import ConsulDouble

INSTANCE_ID = host_state.instance_id(INSTANCE_ARN)


def tid(n: int) -> str:
    return f"{n:032x}"


def new_key(n: int) -> str:
    return kv_layout.task_key(CLUSTER_ARN, tid(n))


def old_key(n: int) -> str:
    return kv_layout.legacy_key(CLUSTER_ARN, kv_layout.TASKS, tid(n))


@dataclass
class World:
    consul: ConsulDouble
    rt: registrar.Runtime
    ecs: FakeEcs

    def deliver(self, *events: dict[str, Any]) -> list[str]:
        return failed_ids(handler.handler(sqs_event(events), LambdaContext()))

    def reconcile(self) -> reconcile.PassReport:
        return reconcile.run_pass(
            self.rt,
            reconcile.ReconcileSettings(),
            retry.Budget.fixed(60.0),
            clients=self.ecs.clients,
        )

    def record(self, key: str) -> StateRecord | None:
        entry = self.consul.kv().get(key)
        return None if entry is None else StateRecord.decode(entry[0])

    def demote(self, key: str, legacy: str) -> None:
        """Put a record back where the release before the ARN layout kept it."""
        self.consul.seed_kv(legacy, self.consul.kv()[key][0])
        request = urllib.request.Request(f"{self.consul.url}/v1/kv/{key}", method="DELETE")
        with urllib.request.urlopen(request, timeout=5):
            pass


@pytest.fixture
def world(consul_double: ConsulDouble) -> Iterator[World]:
    rt = fake_runtime(consul_double.url)
    registrar.set_runtime(rt)
    yield World(consul_double, rt, FakeEcs())
    registrar.set_runtime(None)


def test_the_first_pass_moves_what_is_this_clusters_and_leaves_the_rest(world: World) -> None:
    now = datetime.now(UTC)
    # GIVEN what the previous release left in the name-keyed layout: task 1 running, registered
    # by its event; task 2 stopped an hour ago; task 3 stopped a week ago (ECS forgot it); a
    # running record of task 4 that our ECS and catalog know nothing of (a same-named cluster's
    # of another account); and the record of the host task 1 runs on
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    world.demote(new_key(1), old_key(1))
    hour_ago = StateRecord(6, STOPPED, event_time=(now - timedelta(hours=1)).isoformat())
    world.consul.seed_kv(old_key(2), hour_ago.encode())
    world.ecs.put_task(tid(2), version=6, last_status="STOPPED", desired_status="STOPPED")
    week_ago = StateRecord(6, STOPPED, event_time=(now - timedelta(days=7)).isoformat())
    world.consul.seed_kv(old_key(3), week_ago.encode())
    world.ecs.forget(tid(3))
    twin = StateRecord(3, RUNNING, "d1", event_time=now.isoformat()).encode()
    world.consul.seed_kv(old_key(4), twin)
    host = host_state.HostRecord(5, True, "ACTIVE").encode()
    world.consul.seed_kv(kv_layout.legacy_key(CLUSTER_ARN, kv_layout.HOSTS, INSTANCE_ID), host)

    # WHEN the first pass after the deploy runs
    report = world.reconcile()

    # THEN task 1's record moved, and its catalog entries were found in sync (no rewrite)
    kv = world.consul.kv()
    assert (new_key(1) in kv, old_key(1) in kv) == (True, False)
    assert (report.in_sync, report.missing, report.changed) == (1, 0, 0)
    # AND the young tombstone was copied (and kept for whoever else may own it)
    assert (new_key(2) in kv, old_key(2) in kv) == (True, True)
    # AND the week-old tombstone of a forgotten task was collected
    assert old_key(3) not in kv
    assert report.tombstones_collected == 1
    # AND the record nothing proves ours is left as it was, and not copied
    assert kv[old_key(4)][0] == twin
    assert new_key(4) not in kv
    # AND the host's record moved
    assert kv[kv_layout.host_key(CLUSTER_ARN, INSTANCE_ID)][0] == host
    assert report.migrated == 3

    # WHEN the next pass runs, THEN it writes nothing
    world.consul.reset_requests()
    assert world.reconcile().repaired == 0
    assert world.consul.writes() == 0
    # AND a late RUNNING event of task 2 finds its tombstone
    assert world.deliver(task_event(task_id=tid(2), version=3)) == []
    assert f"ecs-task-{tid(2)}" not in world.consul.nodes()


def test_a_stop_before_the_first_pass_lands_and_the_pass_drops_the_old_record(
    world: World,
) -> None:
    # GIVEN task 1 registered by the previous release (its record in the name-keyed layout)
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    world.demote(new_key(1), old_key(1))

    # WHEN its stop arrives before any pass has run
    stop = world.ecs.put_task(tid(1), version=6, last_status="STOPPED", desired_status="STOPPED")
    assert world.deliver(stop) == []

    # THEN the task is gone and tombstoned in the ARN layout
    assert world.consul.nodes() == {}
    tombstone = world.record(new_key(1))
    assert tombstone is not None
    assert tombstone.status == STOPPED
    # AND the first pass deletes the superseded running record, the second writes nothing
    world.reconcile()
    assert old_key(1) not in world.consul.kv()
    world.consul.reset_requests()
    world.reconcile()
    assert world.consul.writes() == 0


def test_a_late_running_event_before_the_first_pass_is_removed_by_it(world: World) -> None:
    # GIVEN task 1 stopped under the previous release: its tombstone is in the legacy layout
    assert world.deliver(world.ecs.put_task(tid(1))) == []
    stop = world.ecs.put_task(tid(1), version=6, last_status="STOPPED", desired_status="STOPPED")
    assert world.deliver(stop) == []
    world.demote(new_key(1), old_key(1))

    # WHEN its RUNNING event is delivered late, before the first pass (the one window the
    # migration leaves: the event path reads the ARN layout only)
    assert world.deliver(task_event(task_id=tid(1), version=4)) == []
    assert f"ecs-task-{tid(1)}" in world.consul.nodes()

    # THEN the first pass removes it: ECS reports the task stopped
    report = world.reconcile()
    assert world.consul.nodes() == {}
    assert report.stale == 1
