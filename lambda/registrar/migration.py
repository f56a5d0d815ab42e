"""Moving state records from the name-keyed layout to the ARN-keyed one (kv_layout.py).

Run by every reconcile pass on what its one recursive read of `ecs-registrar/<cluster-name>/`
returned (both layouts share that prefix), so a deploy needs no extra step and the first pass
after it does the work. A record is moved only when it is provably this cluster's: task IDs
and container instance IDs are unique, and ownership comes from what this pass read of ECS and
of the catalog, never from the name the two layouts share with a cluster of another account or
Region. For a legacy record of task or instance `X`:

- running (or unreadable) task record, and `X` runs in this cluster (listing) or its node
  carries this cluster's ARN: moved, i.e. created in the ARN layout (cas index 0) and deleted
  from the legacy one (delete-cas), in one txn;
- running task record whose ARN-layout record exists (the event path rewrote it since): the
  legacy copy is superseded and deleted (delete-cas);
- tombstone younger than the tombstone grace: copied (cas index 0) and left in place. Its
  owner cannot be told from a same-named cluster's (it has no node, and ECS forgets stopped
  tasks), and a tombstone only ever blocks its own task, so copying is harmless while deleting
  could cost the other cluster its ordering. Older tombstones are collected by the pass's
  tombstone phase like the ARN layout's (no delayed event outlives the grace);
- host record of a container instance this pass described, or whose ARN-layout record exists:
  moved, or deleted when superseded;
- anything else (another cluster's, or undecidable): left as it is, and written to by nobody.

Until the first pass after the deploy has run, the event path sees none of the legacy records:
a stop still lands (it writes a new tombstone), a RUNNING event is written again, and the one
risk, a RUNNING event delivered after its task's stop whose tombstone is still legacy, leaves a
node the same pass then removes (its task is stopped in ECS). docs/architecture.md records it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import inventory
import kv_layout
from inventory import Inventory, KVPair
from model import RUNNING, MalformedEvent, StateRecord, parse_time

Record = tuple[StateRecord | None, int]  # (record or None when unreadable, ModifyIndex)


@dataclass
class Records:
    """One recursive read of `kv_layout.name_prefix`, sorted by layout and kind."""

    tasks: dict[str, Record] = field(default_factory=dict)  # task ID -> record (ARN layout)
    hosts: dict[str, KVPair] = field(default_factory=dict)  # instance ID -> ARN-layout record
    legacy_tasks: dict[str, KVPair] = field(default_factory=dict)
    legacy_hosts: dict[str, KVPair] = field(default_factory=dict)


def decode(value: bytes) -> StateRecord | None:
    try:
        return StateRecord.decode(value)
    except ValueError:
        return None  # unreadable: apply overwrites it with cas


def read(consul: Inventory, cluster_arn: str) -> Records:
    found = Records()
    cluster = kv_layout.scope(cluster_arn)
    for pair in consul.kv_list(kv_layout.name_prefix(cluster_arn)):
        where = kv_layout.locate(pair.key, cluster)
        if where is None or "/" in where.item_id:
            continue
        if where.kind == kv_layout.TASKS and where.legacy:
            found.legacy_tasks[where.item_id] = pair
        elif where.kind == kv_layout.TASKS:
            found.tasks[where.item_id] = (decode(pair.value), pair.modify_index)
        elif where.legacy:
            found.legacy_hosts[where.item_id] = pair
        else:
            found.hosts[where.item_id] = pair
    return found


@dataclass(frozen=True)
class Step:
    """The ops of one record's migration; they land together or not at all."""

    item_id: str
    ops: tuple[dict[str, Any], ...]
    moves_task: bool = False  # a running (or unreadable) task record now in the ARN layout
    record: StateRecord | None = None


def _create(key: str, value: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(value).decode()
    return {"KV": {"Verb": "cas", "Key": key, "Value": encoded, "Index": 0}}


def _delete(pair: KVPair) -> dict[str, Any]:
    return {"KV": {"Verb": "delete-cas", "Key": pair.key, "Index": pair.modify_index}}


def _young(record: StateRecord, now: datetime, grace: timedelta) -> bool:
    if record.event_time is None:
        return False
    try:
        return parse_time(record.event_time, "event_time") >= now - grace
    except MalformedEvent:
        return False


def plan(
    records: Records,
    cluster_arn: str,
    *,
    our_tasks: set[str],
    our_hosts: set[str],
    now: datetime,
    tombstone_grace: timedelta,
) -> list[Step]:
    """What to write; `our_tasks`/`our_hosts`: IDs this pass attributes to the cluster."""
    steps: list[Step] = []
    for tid, pair in sorted(records.legacy_tasks.items()):
        record = decode(pair.value)
        new_key = kv_layout.task_key(cluster_arn, tid)
        if record is not None and record.status != RUNNING:
            if tid not in records.tasks and _young(record, now, tombstone_grace):
                steps.append(Step(tid, (_create(new_key, pair.value),)))
        elif tid in records.tasks:
            steps.append(Step(tid, (_delete(pair),)))
        elif tid in our_tasks:
            ops = (_create(new_key, pair.value), _delete(pair))
            steps.append(Step(tid, ops, moves_task=True, record=record))
    for iid, pair in sorted(records.legacy_hosts.items()):
        if iid in records.hosts:
            steps.append(Step(iid, (_delete(pair),)))
        elif iid in our_hosts:
            ops = (_create(kv_layout.host_key(cluster_arn, iid), pair.value), _delete(pair))
            steps.append(Step(iid, ops))
    return steps


def apply(consul: Inventory, steps: Sequence[Step], stop: Callable[[], bool]) -> list[Step]:
    """Write `steps`, each in one txn with its own ops; the ones that landed. A step that lost
    a race (the event path wrote the record first) is decided again by the next pass."""
    landed = inventory.txn_groups(consul, [step.ops for step in steps], stop=stop)
    return [steps[n] for n in landed]
