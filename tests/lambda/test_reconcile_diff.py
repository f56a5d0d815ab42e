"""The reconcile pass's diff (reconcile_diff.py): pure functions, tabled.

What ECS said (the wanted registrations, the listed IDs, the tasks ECS is stopping) against
what Consul holds (records, nodes) -> what the pass writes or asks DescribeTasks about.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import decide
import identity
import pytest
import reconcile_diff as diff
from model import RUNNING, STOPPED, Host, StateRecord, TaskEvent, parse_event
from reconcile_diff import Gone, Wanted
from registrar_fixtures import HOST_IP, task_definition, task_event

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def tid(n: int) -> str:
    return f"{n:032x}"


def event(n: int, **fields: Any) -> TaskEvent:
    return parse_event(json.dumps(task_event(task_id=tid(n), **fields)))


def wanted(n: int, address: str = HOST_IP) -> Wanted:
    e = event(n)
    definition = task_definition("web")
    app = decide.mesh_target(definition)
    assert not isinstance(app, decide.Skip)
    host = Host(address=address, instance_id="mi-0123456789abcdef0", source="ssm")
    return Wanted(e, decide.desired_registration(e, definition, app, host))


def running(w: Wanted, **fields: Any) -> StateRecord:
    return replace(StateRecord(3, RUNNING, w.registration.digest()), **fields)


def node(w: Wanted, address: str | None = None) -> dict[str, Any]:
    return {"Node": w.registration.node, "Address": address or w.registration.address}


W = wanted(1)
STOP = StateRecord(6, STOPPED, event_time=NOW.isoformat())


@pytest.mark.parametrize(
    ("case", "records", "nodes", "in_sync"),
    [
        (
            "record and node agree",
            {W.event.task_id: (running(W), 7)},
            {W.registration.node: node(W)},
            True,
        ),
        ("no record", {}, {W.registration.node: node(W)}, False),
        ("unreadable record", {W.event.task_id: (None, 7)}, {W.registration.node: node(W)}, False),
        ("no node", {W.event.task_id: (running(W), 7)}, {}, False),
        (
            "node on another address",
            {W.event.task_id: (running(W), 7)},
            {W.registration.node: node(W, "10.9.9.9")},
            False,
        ),
        (
            "other digest",
            {W.event.task_id: (running(W, digest="d0"), 7)},
            {W.registration.node: node(W)},
            False,
        ),
        ("tombstone", {W.event.task_id: (STOP, 7)}, {W.registration.node: node(W)}, False),
    ],
)
def test_in_sync(case: str, records: diff.Records, nodes: diff.Nodes, in_sync: bool) -> None:
    assert diff.in_sync(W, records, nodes) is in_sync, case
    assert diff.drift([W], records, nodes) == ([] if in_sync else [W])


def test_drift_keeps_the_order_it_was_given() -> None:
    w2, w3 = wanted(2), wanted(3)
    records = {w2.event.task_id: (running(w2), 1)}
    nodes = {w2.registration.node: node(w2)}
    assert diff.drift([w3, w2, W], records, nodes) == [w3, W]


NODE_9 = identity.NODE_PREFIX + tid(9)


@pytest.mark.parametrize(
    ("case", "records", "nodes", "listed", "suspects"),
    [
        ("node, not listed", {}, {NODE_9: {}}, set(), {tid(9)}),
        ("node, listed", {}, {NODE_9: {}}, {tid(9)}, set()),
        ("running record, not listed", {tid(9): (StateRecord(3, RUNNING), 1)}, {}, set(), {tid(9)}),
        ("unreadable record, not listed", {tid(9): (None, 1)}, {}, set(), {tid(9)}),
        ("tombstone only", {tid(9): (STOP, 1)}, {}, set(), set()),
        ("a node that is not a task's", {}, {"consul-server-1": {}}, set(), set()),
    ],
)
def test_deletion_suspects(
    case: str, records: diff.Records, nodes: diff.Nodes, listed: set[str], suspects: set[str]
) -> None:
    assert diff.deletion_suspects(records, nodes, listed) == suspects, case


@pytest.mark.parametrize(
    ("case", "records", "with_node", "gone"),
    [
        ("node present", {}, True, {tid(4): Gone(7)}),
        ("running record", {tid(4): (StateRecord(3, RUNNING), 1)}, False, {tid(4): Gone(7)}),
        ("already a tombstone, no node", {tid(4): (STOP, 1)}, False, {}),
        ("nothing of it", {}, False, {}),
    ],
)
def test_stopping_gone(
    case: str, records: diff.Records, with_node: bool, gone: dict[str, Gone]
) -> None:
    stopping = event(4, version=7, desired_status="STOPPED", last_status="DEACTIVATING")
    nodes = {identity.node_name(stopping.task_arn): {}} if with_node else {}
    assert diff.stopping_gone([stopping], records, nodes) == gone, case


HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("case", "record", "old"),
    [
        (
            "written two hours ago",
            StateRecord(3, RUNNING, event_time=(NOW - 2 * HOUR).isoformat()),
            True,
        ),
        ("written just now", StateRecord(3, RUNNING, event_time=NOW.isoformat()), False),
        ("no time", StateRecord(3, RUNNING), True),
        ("unreadable time", StateRecord(3, RUNNING, event_time="yesterday"), True),
        ("no record", None, True),
    ],
)
def test_record_older_than(case: str, record: StateRecord | None, old: bool) -> None:
    assert diff.record_older_than(record, NOW - HOUR) is old, case


def tomb(days: float) -> StateRecord:
    return StateRecord(6, STOPPED, event_time=(NOW - timedelta(days=days)).isoformat())


@pytest.mark.parametrize(
    ("case", "records", "listed", "limit", "old"),
    [
        ("old tombstone", {tid(1): (tomb(6), 11)}, set(), 10, {tid(1): 11}),
        ("young tombstone", {tid(1): (tomb(1), 11)}, set(), 10, {}),
        ("old, but listed", {tid(1): (tomb(6), 11)}, {tid(1)}, 10, {}),
        (
            "running record",
            {tid(1): (StateRecord(3, RUNNING, event_time="2020-01-01T00:00:00+00:00"), 11)},
            set(),
            10,
            {},
        ),
        ("no time", {tid(1): (StateRecord(6, STOPPED), 11)}, set(), 10, {}),
        ("unreadable", {tid(1): (None, 11)}, set(), 10, {}),
        (
            "limit, in ID order",
            {tid(n): (tomb(6), n) for n in (3, 1, 2)},
            set(),
            2,
            {tid(1): 1, tid(2): 2},
        ),
    ],
)
def test_old_tombstones(
    case: str, records: diff.Records, listed: set[str], limit: int, old: dict[str, int]
) -> None:
    assert diff.old_tombstones(records, listed, NOW - timedelta(days=5), limit) == old, case
