"""ECS Container Instance State Change: a host's agent disconnects, reconnects, or the host leaves.

What lands in Consul
- Agent disconnected (`agentConnected` false): nothing visible at first. "The Amazon ECS
  container agent disconnects and reconnects several times per hour as a part of its normal
  operation, so agent connection events should be expected. These events are not an indication
  that there is an issue with the container agent or your container instance." (ECS developer
  guide, "Container instance state change events"). The host's record notes when the
  disconnection began (the event's time) and nothing else happens.
- Still disconnected after the grace (HOST_DISCONNECT_GRACE_MINUTES, config key
  host_disconnect_grace_minutes, 5 by default): the reconcile pass, having confirmed with a
  DescribeContainerInstances of its own that the agent is still disconnected, marks the record
  and every task node of the host gets one node-level check, `ecs-agent-connectivity`, in state
  critical (`mark_after_grace`). Consul folds node checks into the health of every service on the
  node, so the host's services and sidecars drop out of healthy endpoint sets (DNS, `?passing`,
  Envoy's EDS) at once: traffic drains away from a host ECS has lost.
- Agent reconnected: the record forgets the disconnection and any marker is deleted at once,
  nothing else is written. The service checks were never touched, so what remains is
  consul-esm's own verdict, which it kept computing throughout (restoring "passing" ourselves
  would claim a health nobody measured). The marker carries no
  Definition, so consul-esm, which runs only HTTP and TCP definitions (consul-esm check.go,
  `UpdateChecks`), leaves it alone.
- Deregistered (status DEREGISTERING or INACTIVE): its tasks can never run again, so each is
  removed through `apply` (tombstone + node delete, cas on the task's record), like a stop whose
  version no event can exceed: a late RUNNING event cannot bring it back.

Version gaps: "events may not be delivered to your event listeners in the order in which the
events occurred" (ECS developer guide, `ecs_cwet_handling.md`), and placing or stopping a task
on a host changes its version too, so two events of a host that stayed disconnected can arrive
V+2 before V+1, and a pass can read DescribeContainerInstances ahead of the events. A gap may
also hide a reconnect whose event is late or lost. So a marker is only ever cleared by evidence
of a connection: a connected state newer than the record, or a late one whose version falls
inside the recorded disconnection (`interruption`). Marking needs the opposite, a confirmation
at least as new as the record, and a disconnection's start that survived no unexplained gap:
marking can come late, never early.

Ordering: these events are also delivered at least once and out of order, with a `version` per
container instance. One KV record per instance, `kv_layout.host_key` (`.../hosts/<instance-id>`),
moves forward only (cas on its ModifyIndex). The markers are then converged to the record and
converged again until the record read after the writes is the one they were computed from: a
newer event handled concurrently either lands before that read (we redo its state) or its own
convergence runs after our writes. The same discipline as the sidecar write in apply.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import apply
import identity
import inventory
import kv_layout
import logs
import registrar
import retry
from consul import TxnConflict
from inventory import Inventory
from metrics import Metrics
from model import ECS_SOURCE, MalformedEvent, parse_time

INSTANCE_STATE_CHANGE = "ECS Container Instance State Change"
MARKER_CHECK_ID = "ecs-agent-connectivity"
DEREGISTERED_STATUSES = frozenset({"DEREGISTERING", "INACTIVE"})
# A task of a deregistered host stops for good: its tombstone outranks every event version.
GONE_VERSION = 2**63 - 1
CAS_ATTEMPTS = 5
CONVERGE_ROUNDS = 5

_METRIC = {
    "recorded": "HostDisconnected",
    "marked": "HostChecksCritical",
    "unmarked": "HostChecksRestored",
    "deregistered": "HostDeregistered",
    "unchanged": "Duplicate",
    "duplicate": "Duplicate",
    "stale": "IgnoredStale",
    "ignored": "Skipped",
}


@dataclass(frozen=True)
class InstanceState:
    """What the registrar acts on, from an event or a DescribeContainerInstances item."""

    cluster_arn: str
    container_instance_arn: str
    version: int
    agent_connected: bool
    status: str

    @property
    def deregistered(self) -> bool:
        return self.status in DEREGISTERED_STATUSES


def instance_id(container_instance_arn: str) -> str:
    """Last segment of `arn:aws:ecs:region:acct:container-instance/cluster/<id>`."""
    tail = container_instance_arn.rsplit("/", 1)[-1]
    if ":container-instance/" not in container_instance_arn or not tail or ":" in tail:
        raise ValueError(f"not a container instance ARN: {container_instance_arn!r}")
    return tail


def host_key(cluster_arn: str, container_instance_arn: str) -> str:
    return kv_layout.host_key(cluster_arn, instance_id(container_instance_arn))


def instance_state(detail: Mapping[str, Any], path: str = "detail") -> InstanceState:
    """Validate an event `detail` or a DescribeContainerInstances item; errors name the field."""
    values: dict[str, Any] = {}
    for key in ("clusterArn", "containerInstanceArn", "status"):
        value = detail.get(key)
        if not isinstance(value, str) or not value:
            raise MalformedEvent(f"{path}.{key} must be a non-empty string, got {value!r}")
        values[key] = value
    version = detail.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise MalformedEvent(f"{path}.version must be a non-negative integer, got {version!r}")
    connected = detail.get("agentConnected")
    if not isinstance(connected, bool):
        raise MalformedEvent(f"{path}.agentConnected must be true or false, got {connected!r}")
    try:
        kv_layout.scope(values["clusterArn"])
        instance_id(values["containerInstanceArn"])
    except ValueError as err:
        raise MalformedEvent(f"{path}: {err}") from None
    return InstanceState(
        cluster_arn=values["clusterArn"],
        container_instance_arn=values["containerInstanceArn"],
        version=version,
        agent_connected=connected,
        status=values["status"],
    )


def is_instance_event(body: str | bytes) -> bool:
    """Cheap test the SQS handler uses to route a body here instead of the task path."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if INSTANCE_STATE_CHANGE not in text:
        return False
    try:
        doc = json.loads(text)
    except (ValueError, TypeError):
        return False
    return isinstance(doc, dict) and doc.get("detail-type") == INSTANCE_STATE_CHANGE


def parse_instance_event(body: str | bytes) -> tuple[InstanceState, datetime]:
    """An SQS body holding an ECS Container Instance State Change -> its state and time."""
    try:
        doc = json.loads(body)
    except (ValueError, TypeError) as err:
        raise MalformedEvent(f"body is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent(f"event must be a JSON object, got {type(doc).__name__}")
    if doc.get("source") != ECS_SOURCE:
        raise MalformedEvent(f"event.source must be {ECS_SOURCE!r}, got {doc.get('source')!r}")
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        raise MalformedEvent(f"event.detail must be a JSON object, got {type(detail).__name__}")
    return instance_state(detail), parse_time(doc.get("time"), "event.time")


# --------------------------------------------------------------------------------------------
# The per-instance record


@dataclass(frozen=True)
class HostRecord:
    """The instance's last applied state, and where its current disconnection stands.

    `disconnected_since`: when the disconnection began (ISO time; None when connected, or
    unknown for a record written before it was kept). `marked`: the disconnection outlasted the
    grace and was confirmed, so the task nodes carry the critical marker.
    `since_version`: the instance version the disconnection was first seen at; every version
    from it to `version` was seen disconnected or lies in a gap, so a connected state reported
    with a version in between proves a reconnect hid in a gap. `gap_since`: when the newest
    state that followed such a gap was seen, the latest the current disconnection can have
    begun if a reconnect hid in the gap (None: no gap since the disconnection was marked).
    Both None for records of releases that did not keep them (no interruption is inferred).
    """

    version: int
    agent_connected: bool
    status: str
    disconnected_since: str | None = None
    marked: bool = False
    since_version: int | None = None
    gap_since: str | None = None

    @property
    def deregistered(self) -> bool:
        return self.status in DEREGISTERED_STATUSES

    @property
    def drained(self) -> bool:
        """Should the host's task nodes carry the marker?"""
        return self.marked and not self.agent_connected and not self.deregistered

    def encode(self) -> bytes:
        doc = {
            "version": self.version,
            "agent_connected": self.agent_connected,
            "status": self.status,
            "disconnected_since": self.disconnected_since,
            "marked": self.marked,
            "since_version": self.since_version,
            "gap_since": self.gap_since,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> HostRecord | None:
        """None for an unreadable value (it is overwritten by the next cas)."""
        try:
            doc = json.loads(data)
            version, connected, status = doc["version"], doc["agent_connected"], doc["status"]
        except (ValueError, TypeError, KeyError):
            return None
        if isinstance(version, bool) or not isinstance(version, int):
            return None
        if not isinstance(connected, bool) or not isinstance(status, str):
            return None
        since = doc.get("disconnected_since")
        marked = doc.get("marked")
        if not isinstance(marked, bool):
            # A record of a release without the grace: it marked a disconnected host at once.
            marked = not connected
        since_version, gap_since = doc.get("since_version"), doc.get("gap_since")
        return cls(
            version,
            connected,
            status,
            since if isinstance(since, str) else None,
            marked,
            since_version if _is_int(since_version) else None,
            gap_since if isinstance(gap_since, str) else None,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def next_record(previous: HostRecord | None, state: InstanceState, seen_at: datetime) -> HostRecord:
    """The record after `state` (newer than `previous`), which was observed at `seen_at`.

    A disconnection keeps its start across consecutive versions: the version grows with every
    change of the instance (ContainerInstance.version, ECS API reference), so nothing happened
    in between. Across a gap:
    - a marked disconnection stays marked, with its start: the host may well have stayed
      disconnected (a task placed or stopped on it bumps the version, and its events arrive in
      any order), and only evidence of a connection clears a marker. If a reconnect did hide in
      the gap, its own late event (`interruption`), the next reconnect, or the next pass that
      reads the agent connected clears it; `gap_since` keeps when this state was seen, the
      start the disconnection falls back to then;
    - a disconnection not marked yet restarts at `seen_at`: carrying its start over a hidden
      reconnect could mark the host before its new disconnection has lasted the grace. Marking
      can come late, never early.
    """
    if state.agent_connected or state.deregistered:
        return HostRecord(state.version, state.agent_connected, state.status)
    seen = seen_at.isoformat(timespec="seconds")
    if previous is not None and not previous.agent_connected and not previous.deregistered:
        if state.version == previous.version + 1:
            return replace(previous, version=state.version, status=state.status)
        if previous.marked:
            return replace(previous, version=state.version, status=state.status, gap_since=seen)
    return HostRecord(state.version, False, state.status, seen, since_version=state.version)


def interruption(record: HostRecord | None, state: InstanceState) -> HostRecord | None:
    """The record once `state`, older than it, is taken into account; None when it changes
    nothing (a stale state, the usual case).

    A connected state whose version lies after the version the recorded disconnection was first
    seen at, and before the record's, is a reconnect that hid in a version gap: the disconnection
    the marker was set for ended, and the current one began after it. The marker goes, and the
    disconnection restarts from `gap_since`, when the state after the gap was seen (never
    earlier than the current disconnection's real start: marking stays late, never early). A
    redelivery of that same state finds the record it produced (`since_version` is its version)
    and yields it unchanged, so the markers converge whatever failed the first time, unless a
    pass has marked the host again since (its disconnection outlasted the grace after all).
    """
    if (
        record is None
        or not state.agent_connected
        or state.deregistered
        or record.agent_connected
        or record.deregistered
        or record.since_version is None
        or record.gap_since is None
        or not record.since_version <= state.version < record.version
    ):
        return None
    if state.version == record.since_version:
        return None if record.marked else record
    return replace(
        record,
        marked=False,
        disconnected_since=record.gap_since,
        since_version=state.version,
    )


def due_for_marking(record: HostRecord | None, now: datetime, grace: timedelta) -> bool:
    """Has this disconnection outlasted the grace, and is it not marked yet?"""
    if record is None or record.agent_connected or record.deregistered or record.marked:
        return False
    if record.disconnected_since is None:
        return True
    try:
        since = parse_time(record.disconnected_since, "disconnected_since")
    except MalformedEvent:
        return True
    return since <= now - grace


def _read(
    consul: Inventory, key: str, *, consistent: bool = False
) -> tuple[HostRecord | None, int]:
    entry = consul.kv_get(key, consistent=consistent)
    if entry is None:
        return None, 0
    return HostRecord.decode(entry.value), entry.modify_index


@dataclass(frozen=True)
class Outcome:
    kind: str  # recorded | marked | unmarked | deregistered | unchanged | stale | ignored
    reason: str
    tasks: int = 0  # task nodes the outcome touched


class Contention(retry.RetryableError):
    """The instance's record kept changing while we converged: let SQS redeliver."""


def _cas(consul: Inventory, key: str, record: HostRecord, index: int) -> bool:
    """Write `record` if the stored one is still at `index`; False when another writer won."""
    value = base64.b64encode(record.encode()).decode()
    try:
        consul.txn([{"KV": {"Verb": "cas", "Key": key, "Value": value, "Index": index}}])
    except TxnConflict as conflict:
        if conflict.failed_op(0):
            return False
        raise
    return True


def apply_instance_state(consul: Inventory, state: InstanceState, seen_at: datetime) -> Outcome:
    """Advance the instance's record to `state` (never backwards), then converge its tasks.

    `seen_at`: when the state was observed (the event's time), which starts a disconnection.
    """
    key = host_key(state.cluster_arn, state.container_instance_arn)
    for attempt in range(1, CAS_ATTEMPTS + 1):
        record, index = _read(consul, key)
        if record is not None and state.version < record.version:
            new = interruption(record, state)
            if new is None:
                return Outcome("stale", f"version {state.version} is older than {record.version}")
            logs.info(
                "a reconnect hid in a version gap: the recorded disconnection ended",
                reconnect_version=state.version,
                since_version=record.since_version,
            )
        elif record is not None and state.version == record.version:
            break  # a duplicate: make sure the tasks match what it recorded
        else:
            new = next_record(record, state, seen_at)
        if new == record or _cas(consul, key, new, index):
            break
        logs.info("host record changed under us; deciding again", attempt=attempt)
    else:
        raise Contention(f"host record {key} changed {CAS_ATTEMPTS} times while applying")
    return converge(consul, state.cluster_arn, state.container_instance_arn)


def mark_after_grace(
    consul: Inventory, state: InstanceState, now: datetime, grace: timedelta
) -> Outcome:
    """Mark a host disconnected for longer than `grace`; `state` is a DescribeContainerInstances
    answer read just now that still says disconnected (the reconcile pass's confirmation)."""
    key = host_key(state.cluster_arn, state.container_instance_arn)
    for attempt in range(1, CAS_ATTEMPTS + 1):
        record, index = _read(consul, key)
        if record is None or record.agent_connected or record.deregistered:
            return Outcome("ignored", "the record no longer says disconnected")
        if record.marked:
            break
        if state.version < record.version:
            # An answer older than what the record already knows confirms nothing about now.
            return Outcome(
                "ignored",
                f"DescribeContainerInstances answered version {state.version}, older than the "
                f"record's {record.version}: not a confirmation",
            )
        if state.version > record.version:
            record = next_record(record, state, now)
        if not due_for_marking(record, now, grace):
            return Outcome("recorded", "disconnected for less than the grace")
        if _cas(consul, key, replace(record, marked=True), index):
            break
        logs.info("host record changed under us; deciding again", attempt=attempt)
    else:
        raise Contention(f"host record {key} changed {CAS_ATTEMPTS} times while marking")
    return converge(consul, state.cluster_arn, state.container_instance_arn)


def instance_tasks(
    consul: Inventory, cluster_arn: str, container_instance_arn: str
) -> dict[str, str]:
    """Task nodes of one container instance in the catalog: node -> task ARN (by service meta)."""
    expression = inventory.instance_services_filter(cluster_arn, container_instance_arn)
    tasks: dict[str, str] = {}
    for name in consul.service_names(expression):
        for entry in consul.service_nodes(name, expression):
            node, meta = entry.get("Node"), entry.get("ServiceMeta") or {}
            arn = meta.get("task-arn")
            if isinstance(node, str) and node.startswith(identity.NODE_PREFIX) and arn:
                tasks[node] = str(arn)
    return tasks


def marked_nodes(consul: Inventory) -> set[str]:
    """Every node carrying the disconnection marker (one request; usually an empty answer)."""
    checks = consul.checks("any", f"CheckID == {inventory.quoted(MARKER_CHECK_ID)}")
    return {str(c["Node"]) for c in checks if isinstance(c.get("Node"), str)}


def marker_ops(
    container_instance_arn: str, add: Iterable[str], remove: Iterable[str], since: str | None
) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = [
        {
            "Check": {
                "Verb": "set",
                "Check": {
                    "Node": node,
                    "CheckID": MARKER_CHECK_ID,
                    "Name": "ECS agent connectivity of the host",
                    "Status": "critical",
                    "Notes": (
                        "Set by the ECS Anywhere registrar while the ECS agent of "
                        f"{container_instance_arn} is disconnected; deleted when it reconnects."
                    ),
                    "Output": f"ECS agent disconnected since {since or 'an unknown time'}",
                    "ServiceID": "",
                },
            }
        }
        for node in sorted(add)
    ]
    ops.extend(
        {"Check": {"Verb": "delete", "Check": {"Node": node, "CheckID": MARKER_CHECK_ID}}}
        for node in sorted(remove)
    )
    return ops


def _txn_chunks(consul: Inventory, ops: Sequence[Mapping[str, Any]]) -> None:
    for start in range(0, len(ops), inventory.MAX_TXN_OPS):
        consul.txn(ops[start : start + inventory.MAX_TXN_OPS])


def converge(consul: Inventory, cluster_arn: str, container_instance_arn: str) -> Outcome:
    """Make the instance's task nodes match its record; repeat while the record moves."""
    key = host_key(cluster_arn, container_instance_arn)
    for _ in range(CONVERGE_ROUNDS):
        record, _index = _read(consul, key, consistent=True)
        if record is None:
            return Outcome("ignored", "no readable record for this container instance")
        tasks = instance_tasks(consul, cluster_arn, container_instance_arn)
        if record.deregistered:
            return _remove_tasks(consul, cluster_arn, record, tasks)
        marked = marked_nodes(consul) & set(tasks)
        want = set(tasks) if record.drained else set()
        add, remove = want - marked, marked - want
        if not add and not remove and not record.agent_connected and not record.marked:
            return Outcome(
                "recorded", f"agent disconnected since {record.disconnected_since}: within grace"
            )
        if not add and not remove:
            return Outcome("unchanged", "the host's task nodes already match its agent state")
        ops = marker_ops(container_instance_arn, add, remove, record.disconnected_since)
        try:
            _txn_chunks(consul, ops)
        except TxnConflict as conflict:
            logs.info("a task node changed while marking it; listing again", error=str(conflict))
            continue
        after, _ = _read(consul, key, consistent=True)
        if after == record:
            if add:
                return Outcome(
                    "marked", "agent disconnected past the grace: task checks critical", len(add)
                )
            return Outcome("unmarked", "agent reconnected: marker removed", len(remove))
        logs.info("host record moved while converging; converging again")
    raise Contention(f"host record {key} kept moving while converging its tasks")


def _remove_tasks(
    consul: Inventory, cluster_arn: str, record: HostRecord, tasks: Mapping[str, str]
) -> Outcome:
    removed = 0
    for node, task_arn in sorted(tasks.items()):
        with logs.task_context(task_arn):
            result = apply.apply(
                consul,
                key=kv_layout.task_key(cluster_arn, identity.task_id(task_arn)),
                node=node,
                desired=None,
                version=GONE_VERSION,
                event_time=datetime.now(UTC).isoformat(),
                repair=True,
            )
            logs.info("task of a deregistered host removed", outcome=result.kind)
            removed += result.kind in ("deregistered", "repaired")
    return Outcome("deregistered", f"host {record.status}: {removed} task(s) removed", removed)


# --------------------------------------------------------------------------------------------
# The SQS path (called by handler._process for this detail-type)


def process(body: str | bytes, budget: retry.Budget, metrics: Metrics) -> bool:
    """Handle one SQS body; True when it may be deleted from the queue. Never raises."""
    try:
        state, event_time = parse_instance_event(body)
    except MalformedEvent as err:
        logs.error("malformed message; it will end in the DLQ", reason=str(err))
        metrics.count("Malformed")
        return False
    fields: dict[str, Any] = {
        "container_instance_arn": state.container_instance_arn,
        "version": state.version,
        "agent_connected": state.agent_connected,
        "status": state.status,
    }
    if budget.exhausted:
        logs.warning("no time left in this invocation; leaving the message to SQS", **fields)
        metrics.count("Failed")
        return False
    try:
        rt = registrar.runtime()
        if state.cluster_arn != rt.settings.cluster_arn:
            metrics.count("Skipped")
            logs.info("event ignored", reason=f"instance of cluster {state.cluster_arn}", **fields)
            return True
        outcome = apply_instance_state(inventory.connect(rt, budget), state, event_time)
    except Exception as err:
        logs.error(
            "failed to apply the host event; SQS will redeliver it",
            error=f"{type(err).__name__}: {err}",
            retryable=isinstance(err, retry.RetryableError),
            **fields,
        )
        metrics.count("Failed")
        return False
    metrics.count(_METRIC[outcome.kind])
    if outcome.kind == "deregistered":
        metrics.count("Deregistered", outcome.tasks)
    lag_ms = (datetime.now(UTC) - event_time).total_seconds() * 1000
    logs.info(
        f"host event {outcome.kind}",
        reason=outcome.reason,
        tasks=outcome.tasks,
        lag_ms=round(lag_ms),
        **fields,
    )
    return True
