"""The write protocol of docs/architecture.md "Ordering, duplicates and concurrency".

For one task and the state wanted by one event (a Registration, or None for stopped):
1. read the task's state record and its ModifyIndex;
2. `decide` (pure) what to write;
3. one txn: KV cas on the record (index from 1, 0 = must not exist) + Node delete, or Node set
   + Service set + Check set. A lost cas (409 on op 0) -> back to 1, a bounded number of times;
4. after a registration, the sidecar via /v1/catalog/register (a txn drops Proxy.Upstreams and
   Proxy.Config), then the record is read again (consistent): a stop that won meanwhile ->
   delete the node ourselves; a newer registration -> write *its* sidecar (kept in the record)
   and check again. The last sidecar written is therefore always the newest record's.

Reconcile reuses `apply` with the version DescribeTasks reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import catalog
import logs
from consul import Consul, ConsulError, TxnConflict
from decide import Deregister, Register, Skip, VerifyAbsent, VerifySidecar, decide
from model import RUNNING, STOPPED, Registration, StateRecord, StoredRecord
from retry import RetryableError

CAS_ATTEMPTS = 5
SIDECAR_ROUNDS = 5

ResultKind = Literal[
    "registered",
    "deregistered",
    "stale",
    "duplicate",
    "repaired",
    "ignored",
    "invalid",
    "unaddressable",
]


@dataclass(frozen=True)
class Result:
    kind: ResultKind
    reason: str


class Contention(RetryableError):
    """Other writers kept changing the task's record: let SQS redeliver later."""


class TxnRejected(ConsulError):
    """Consul rolled the txn back for a reason other than our cas (e.g. a bad op)."""


def read_record(consul: Consul, key: str, *, consistent: bool = False) -> StoredRecord | None:
    """The stored record; an unreadable value becomes record=None (overwritten by cas)."""
    entry = consul.kv_get(key, consistent=consistent)
    if entry is None:
        return None
    try:
        record: StateRecord | None = StateRecord.decode(entry.value)
    except ValueError as err:
        logs.warning("unreadable state record; it will be overwritten", key=key, error=str(err))
        record = None
    return StoredRecord(record=record, modify_index=entry.modify_index)


def apply(
    consul: Consul,
    *,
    key: str,
    node: str,
    desired: Registration | None,
    version: int,
    event_time: str | None = None,
    repair: bool = False,
    reason: str | None = None,
) -> Result:
    """Make the catalog reflect `desired` unless a newer or equal event already did.

    `repair` (reconcile): rewrite even at the record's own version; see `decide.decide`.
    `reason`: written into the tombstone a stop leaves (model.MISSING_REASON).
    """
    for attempt in range(1, CAS_ATTEMPTS + 1):
        stored = read_record(consul, key)
        record = stored.record if stored else None
        index = stored.modify_index if stored else 0
        action = decide(desired, version, record, repair=repair)
        if isinstance(action, Skip):
            return Result(action.kind, action.reason)
        if isinstance(action, VerifySidecar):
            return _verify_sidecar(consul, key, node, action)
        if isinstance(action, VerifyAbsent):
            return _verify_absent(consul, node, action.skip)
        body: dict[str, Any] | None = None
        if isinstance(action, Register):
            body = catalog.sidecar_body(action.registration)
            new = StateRecord(version, RUNNING, action.registration.digest(), body, event_time)
            ops = [catalog.kv_cas_op(key, new, index), *catalog.register_ops(action.registration)]
        else:
            assert isinstance(action, Deregister)
            new = StateRecord(version, STOPPED, event_time=event_time, reason=reason)
            ops = [catalog.kv_cas_op(key, new, index), *catalog.deregister_ops(node)]
        try:
            consul.txn(ops)
        except TxnConflict as conflict:
            if conflict.failed_op(0):
                logs.info("state record changed under us; deciding again", attempt=attempt)
                continue
            raise TxnRejected(f"txn rejected: {conflict}") from conflict
        if body is None:
            return Result("deregistered", f"version {version} stopped the task")
        return _write_sidecar(
            consul, key, node, body, Result("registered", f"version {version} registered")
        )
    raise Contention(f"state record {key} changed {CAS_ATTEMPTS} times while applying")


def _write_sidecar(
    consul: Consul, key: str, node: str, body: Mapping[str, Any], done: Result
) -> Result:
    for _ in range(SIDECAR_ROUNDS):
        consul.catalog_register(body)
        stored = read_record(consul, key, consistent=True)
        record = stored.record if stored else None
        if record is None:
            logs.warning("state record vanished after the sidecar write", key=key)
            return done
        if record.status == STOPPED:
            consul.catalog_deregister(node)
            return Result(
                "stale",
                f"stopped at version {record.version} during the registration; node removed",
            )
        if record.sidecar is None or record.sidecar == body:
            return done
        logs.info("a newer registration won; rewriting its sidecar", version=record.version)
        body = record.sidecar
    raise Contention(f"sidecar of {node} changed {SIDECAR_ROUNDS} times while writing it")


def _verify_sidecar(consul: Consul, key: str, node: str, action: VerifySidecar) -> Result:
    body = action.record.sidecar
    if body is None:
        return Result(action.skip.kind, action.skip.reason)
    service = str(body["Service"]["Service"])
    if catalog.sidecar_matches(dict(body), consul.service_instances(service, node=node)):
        return Result(action.skip.kind, action.skip.reason)
    logs.warning("sidecar missing or outdated behind its record; writing it", node=node)
    return _write_sidecar(
        consul, key, node, body, Result("repaired", "sidecar rewritten from the state record")
    )


def _verify_absent(consul: Consul, node: str, skip: Skip) -> Result:
    if consul.node_services(node) is None:
        return Result(skip.kind, skip.reason)
    logs.warning("node of a stopped task is back in the catalog; removing it", node=node)
    consul.catalog_deregister(node)
    return Result("repaired", "removed the node of a stopped task")
