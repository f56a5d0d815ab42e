"""Phase "diff" of the reconcile pass: pure functions from what ECS and Consul said to what
the pass writes. No I/O, no clock (the caller passes times in); tests/lambda/test_reconcile_diff.py
tables them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import identity
from model import RUNNING, STOPPED, MalformedEvent, Registration, StateRecord, TaskEvent, parse_time

Records = Mapping[str, tuple[StateRecord | None, int]]  # task ID -> (record, ModifyIndex)
Nodes = Mapping[str, Mapping[str, Any]]  # node name -> catalog node


@dataclass(frozen=True)
class Wanted:
    """A running mesh task and the registration it should have."""

    event: TaskEvent
    registration: Registration


@dataclass(frozen=True)
class Gone:
    """The tombstone a task confirmed gone gets: the version it stops at, and MISSING_REASON
    when the proof was DescribeTasks' MISSING (a later pass may overwrite that one)."""

    version: int
    reason: str | None = None


def in_sync(wanted: Wanted, records: Records, nodes: Nodes) -> bool:
    """Nothing to write: a running record with the same digest, the node on the same address."""
    registration = wanted.registration
    record, _ = records.get(wanted.event.task_id, (None, 0))
    node = nodes.get(registration.node)
    return (
        record is not None
        and record.status == RUNNING
        and record.digest == registration.digest()
        and node is not None
        and node.get("Address") == registration.address
    )


def drift(wanted: Iterable[Wanted], records: Records, nodes: Nodes) -> list[Wanted]:
    """The running tasks whose entries are missing or differ, in the order given."""
    return [w for w in wanted if not in_sync(w, records, nodes)]


def deletion_suspects(records: Records, nodes: Nodes, listed: set[str]) -> set[str]:
    """Task IDs the catalog (a node) or a running or unreadable record has, and the listing
    lacks: DescribeTasks decides which are gone."""
    suspects = {
        node[len(identity.NODE_PREFIX) :] for node in nodes if node.startswith(identity.NODE_PREFIX)
    }
    suspects |= {
        tid for tid, (record, _) in records.items() if record is None or record.status == RUNNING
    }
    return suspects - listed


def stopping_gone(stopping: Iterable[TaskEvent], records: Records, nodes: Nodes) -> dict[str, Gone]:
    """Listed tasks ECS is already stopping, whose node or running record is still there."""
    gone: dict[str, Gone] = {}
    for event in stopping:
        record, _ = records.get(event.task_id, (None, 0))
        if identity.node_name(event.task_arn) in nodes or (
            record is not None and record.status == RUNNING
        ):
            gone[event.task_id] = Gone(event.version)
    return gone


def event_time_of(record: StateRecord | None) -> datetime | None:
    """The record's event time; None when it has none or it does not parse."""
    if record is None or record.event_time is None:
        return None
    try:
        return parse_time(record.event_time, "event_time")
    except MalformedEvent:
        return None


def record_older_than(record: StateRecord | None, cutoff: datetime) -> bool:
    """Was `record` written before `cutoff`? A record without a readable time counts as old
    (it predates event times, or was not written by the event path)."""
    written = event_time_of(record)
    return written is None or written <= cutoff


def old_tombstones(
    records: Records, listed: set[str], cutoff: datetime, limit: int
) -> dict[str, int]:
    """Task ID -> ModifyIndex of the tombstones stopped before `cutoff` of tasks not listed,
    at most `limit`, in task ID order."""
    old: dict[str, int] = {}
    for tid, (record, index) in sorted(records.items()):
        if record is None or record.status != STOPPED or tid in listed:
            continue
        stopped_at = event_time_of(record)
        if stopped_at is not None and stopped_at < cutoff:
            old[tid] = index
        if len(old) >= limit:
            break
    return old
