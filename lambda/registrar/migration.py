"""Moving state records from the name-keyed layout to the ARN-keyed one (kv_layout.py).

Run by every reconcile pass until it is done, so a deploy needs no extra step and the first
pass after it does the work. What the pass reads (`read`): this cluster's prefix
(`kv_layout.cluster_prefix`) and, until the migration marker says there is nothing left, the
two legacy prefixes `ecs-registrar/<cluster-name>/tasks/` and `.../hosts/` apart; never the
whole `ecs-registrar/<cluster-name>/`, which also holds the ARN-layout records of every
same-named cluster of other accounts and Regions sharing the Consul.

A legacy record is written to only when it is provably this cluster's: task IDs and container
instance IDs are unique, and ownership comes from what this pass read of ECS and of the
catalog, or from this cluster's own ARN-layout record of the same ID, never from the name the
legacy layout shares with a cluster of another account or Region. For a legacy record of task
or instance `X`:

- running (or unreadable) task record, and `X` runs in this cluster (listing) or its node
  carries this cluster's ARN: moved, i.e. created in the ARN layout (cas index 0) and deleted
  from the legacy one (delete-cas), in one txn;
- running task record whose ARN-layout record exists (the event path rewrote it since): the
  legacy copy is superseded and deleted (delete-cas); only this cluster writes its ARN layout,
  and a running record is never copied, so that record proves `X` is this cluster's;
- tombstone whose ARN-layout record exists and is not the copy below (this cluster's event
  path or pass wrote it: `X` is ours), or whose `X` this pass attributes: superseded or moved,
  like a running record;
- other tombstone younger than the tombstone grace: copied (cas index 0, byte for byte) and
  left in place. Its owner cannot be told from a same-named cluster's (it has no node, and ECS
  forgets stopped tasks), and a tombstone only ever blocks its own task, so copying is harmless
  while deleting could cost the other cluster its ordering. A copy proves nothing: it is the
  legacy value byte for byte, which is how `plan` tells it from a record this cluster wrote;
- host record of a container instance this pass described, or whose ARN-layout record exists:
  moved, or deleted when superseded;
- anything else (another cluster's, or undecidable, old tombstones among them): left as it is,
  and written to by nobody. docs/runbook.md "Legacy state records" says how to remove what
  is left once every registrar sharing the Consul runs this release.

Done: a pass with a complete ECS listing whose plan is empty writes the marker
`kv_layout.migration_key` (its time). Passes keep reading the legacy prefixes for
MIGRATION_SETTLE after it, so a record an invocation of the previous release was still writing
while the deploy replaced it is moved too; after that the pass makes no request for the legacy
layout. The drain deletes the marker with the rest of the cluster's prefix.

Until the first pass after the deploy has run, the event path sees none of the legacy records:
a stop still lands (it writes a new tombstone), a RUNNING event is written again, and the one
risk, a RUNNING event delivered after its task's stop whose tombstone is still legacy, leaves a
node the same pass then removes (its task is stopped in ECS). docs/architecture.md records it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import inventory
import kv_layout
import logs
import verification
from consul import TxnConflict
from inventory import Inventory, KVPair
from model import RUNNING, MalformedEvent, StateRecord, parse_time
from reconcile_diff import event_time_of

Record = tuple[StateRecord | None, int]  # (record or None when unreadable, ModifyIndex)

# How long after the migration marker the pass still reads the legacy prefixes: a registrar or
# reconcile invocation of the previous release that was running when the deploy replaced the
# code ends within its timeout (60 s and at most 5 minutes), so whatever it wrote is moved by
# the passes of this window (at most 3 times the longest timeout).
MIGRATION_SETTLE = timedelta(minutes=15)


@dataclass
class Records:
    """The pass's reads of this cluster's prefix and, while migrating, the legacy prefixes."""

    tasks: dict[str, Record] = field(default_factory=dict)  # task ID -> record (ARN layout)
    task_values: dict[str, bytes] = field(default_factory=dict)  # legacy task ID -> ARN value
    instances: dict[str, str] = field(default_factory=dict)  # task ID -> container instance
    host_mode: set[str] = field(default_factory=set)  # task IDs registered in host mode
    hosts: dict[str, KVPair] = field(default_factory=dict)  # instance ID -> ARN-layout record
    legacy_tasks: dict[str, KVPair] = field(default_factory=dict)
    legacy_hosts: dict[str, KVPair] = field(default_factory=dict)
    legacy_read: bool = False  # the legacy prefixes were read (the migration is not settled)
    migrated_at: datetime | None = None  # the marker's time; None when not written yet
    verified: KVPair | None = None  # kv_layout.verified_key (verification.py)


def decode(value: bytes) -> StateRecord | None:
    try:
        return StateRecord.decode(value)
    except ValueError:
        return None  # unreadable: apply overwrites it with cas


def _marker_time(value: bytes) -> datetime | None:
    try:
        return parse_time(json.loads(value).get("migrated_at"), "migrated_at")
    except (ValueError, TypeError, AttributeError, MalformedEvent):
        return None  # unreadable: read the legacy prefixes, and write the marker again


def read(
    consul: Inventory,
    cluster_arn: str,
    now: datetime,
    *,
    shards: bool = False,
    max_bytes: int | None = None,
) -> Records:
    """One request for this cluster's prefix; two more (the legacy prefixes) until the
    migration marker is MIGRATION_SETTLE old.

    `max_bytes`: the single read raises connections.BodyTooLarge when its answer is longer
    (reconcile_consul.py then reads in shards).

    `shards` (large clusters, reconcile_consul.py): the prefix is read in 19 requests instead
    of one, each answer decoded and dropped before the next, so the peak is one shard's answer
    plus the compact records: the two markers, the legacy prefixes when they are read, the
    host records, and the task records in 16 shards by the task ID's first hex digit. Shard
    mode reads only task keys whose ID starts with a lowercase hex digit (ECS task IDs are 32
    lowercase hex digits, older ones UUIDs): any other key under `tasks/`, which the single
    read would file as an unreadable record, is not read then. A shard that cannot be read
    raises, like the single read: the pass then deletes nothing.
    """
    found = Records()
    cluster = kv_layout.scope(cluster_arn)
    marker = kv_layout.migration_key(cluster_arn)
    verified = kv_layout.verified_key(cluster_arn)
    prefix = kv_layout.cluster_prefix(cluster_arn)
    # task ID -> raw ARN-layout value, for migration.plan; None: keep every one (the single
    # read files the legacy records after it), else only these task IDs' values
    values: dict[str, bytes] = {}
    wanted: set[str] | None = None

    def sort_all(read_prefix: str, limit: int | None = None) -> None:
        for pair in consul.kv_list(read_prefix, max_bytes=limit):
            if pair.key == marker:
                found.migrated_at = _marker_time(pair.value)
            elif pair.key == verified:
                found.verified = pair
            else:
                _sort(found, values, pair, cluster, wanted)

    if shards:
        # The markers first: they say whether the legacy prefixes are read, and those are read
        # before the task shards, so a shard keeps the raw value of its legacy-held tasks only
        # and the pass's peak is one shard's answer, not every record's raw bytes.
        wanted = set()
        for read_prefix in (marker, verified):
            sort_all(read_prefix)
        found.legacy_read = _legacy_read(found, now)
        if found.legacy_read:
            _read_legacy(consul, found, cluster_arn, values, cluster)
        wanted = set(found.legacy_tasks)
        tasks = f"{prefix}{kv_layout.TASKS}/"
        for read_prefix in [f"{prefix}{kv_layout.HOSTS}/", *(tasks + d for d in _HEX)]:
            sort_all(read_prefix)
    else:
        sort_all(prefix, max_bytes)
        found.legacy_read = _legacy_read(found, now)
        if found.legacy_read:
            _read_legacy(consul, found, cluster_arn, values, cluster)
    if found.legacy_read:
        found.task_values = {tid: values[tid] for tid in found.legacy_tasks if tid in values}
    return found


_HEX = "0123456789abcdef"


def _legacy_read(found: Records, now: datetime) -> bool:
    return found.migrated_at is None or now < found.migrated_at + MIGRATION_SETTLE


def _read_legacy(
    consul: Inventory,
    found: Records,
    cluster_arn: str,
    values: dict[str, bytes],
    cluster: kv_layout.ClusterScope,
) -> None:
    for kind in (kv_layout.TASKS, kv_layout.HOSTS):
        for pair in consul.kv_list(kv_layout.legacy_prefix(cluster_arn, kind)):
            _sort(found, values, pair, cluster, None)


def _sort(
    found: Records,
    values: dict[str, bytes],
    pair: KVPair,
    cluster: kv_layout.ClusterScope,
    wanted: set[str] | None,
) -> None:
    """File one pair of either layout. Task records are kept compact: the sidecar body (the
    bulk of a record) is dropped once its container instance and network mode are noted
    (`Records.instances`, `Records.host_mode`), and the raw value is kept only for the task
    IDs `wanted` (None: all)."""
    where = kv_layout.locate(pair.key, cluster)
    if where is None or "/" in where.item_id:
        return
    if where.kind == kv_layout.TASKS and where.legacy:
        found.legacy_tasks[where.item_id] = pair
    elif where.kind == kv_layout.TASKS:
        record = decode(pair.value)
        if record is not None and record.sidecar is not None:
            instance = _instance_of(record.sidecar)
            if instance is not None:
                found.instances[where.item_id] = instance
            if verification.host_mode(record.sidecar):
                found.host_mode.add(where.item_id)
            record = replace(record, sidecar=None)
        found.tasks[where.item_id] = (record, pair.modify_index)
        if wanted is None or where.item_id in wanted:
            values[where.item_id] = pair.value
    elif where.legacy:
        found.legacy_hosts[where.item_id] = pair
    else:
        found.hosts[where.item_id] = pair


def _instance_of(sidecar: Mapping[str, Any]) -> str | None:
    """The container instance a sidecar body's service meta names (catalog.sidecar_body)."""
    service = sidecar.get("Service")
    meta = service.get("Meta") if isinstance(service, Mapping) else None
    instance = meta.get("container-instance-arn") if isinstance(meta, Mapping) else None
    return instance if isinstance(instance, str) else None


def mark_done(consul: Inventory, cluster_arn: str, now: datetime) -> bool:
    """Write the migration marker (create only: a marker already there keeps its time)."""
    value = json.dumps({"migrated_at": now.isoformat()}).encode()
    try:
        consul.txn([_create(kv_layout.migration_key(cluster_arn), value)])
    except TxnConflict:
        return False
    logs.info("nothing of this cluster is left in the legacy layout; it is no longer read")
    return True


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
    written = event_time_of(record)
    return written is not None and written >= now - grace


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
        tombstone = record is not None and record.status != RUNNING
        current = records.task_values.get(tid)
        # This cluster's own ARN-layout record of the task (a copy of a tombstone is the legacy
        # value byte for byte, and proves nothing)
        ours_there = current is not None and (not tombstone or current != pair.value)
        if ours_there or (tid in our_tasks and current is not None):
            steps.append(Step(tid, (_delete(pair),)))
        elif tid in our_tasks:
            ops = (_create(new_key, pair.value), _delete(pair))
            steps.append(Step(tid, ops, moves_task=not tombstone, record=record))
        elif tombstone and current is None and record and _young(record, now, tombstone_grace):
            steps.append(Step(tid, (_create(new_key, pair.value),)))
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
