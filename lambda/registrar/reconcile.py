"""The reconcile pass: converge the catalog to ECS's truth after lost events, safely.

Entry point `handler(event, context)` (EventBridge schedule). It runs locally too, with the
registrar's environment (CONSUL_HTTP_ADDR, ECS_CLUSTER_ARN, ...):
`cd lambda/registrar && python -c "import reconcile; print(reconcile.handler({}, None))"`.

One pass
1. What the registrar owns, in 3 Consul requests whatever the cluster's size: this cluster's
   task nodes (`/v1/catalog/nodes?filter=Meta["source"] == ... and Meta["cluster-arn"] == ...`),
   its state records (`/v1/kv/ecs-registrar/<name>/<region>/<account>/?recurse`, kv_layout.py)
   and the disconnection markers
   (`/v1/health/state/any?filter=CheckID == "ecs-agent-connectivity"`).
   Until the legacy name-keyed layout is migrated (and MIGRATION_SETTLE after), 2 more: its
   `tasks/` and `hosts/` prefixes, read apart so that no same-named cluster's records come along.
2. ECS's truth (listing.py): ListTasks + DescribeTasks, 100 tasks per call; task definitions
   through the registrar's cache (immutable per ARN); container instances and SSM addresses
   in batches, fresh every pass.
   Legacy records that this pass proves to be the cluster's are moved to the ARN layout
   (migration.py) before anything is compared.
3. Every running mesh task gets its desired registration (`decide.desired_registration`, the
   event path's own function). In sync = a running record with the same digest and the node
   present on the same address: nothing is written. Otherwise `apply.apply(repair=True)` with
   the version DescribeTasks reports: the event path's cas-protected txn, so a tombstone or a
   newer record always wins and reconcile can never resurrect a stopped task. The exception:
   a tombstone this pass wrote on MISSING (tagged `reason: missing`) is overwritten when the
   task is listed and described RUNNING again (DriftResurrected, an alarm: MISSING was wrong).
4. Deletions, only when the ECS listing is complete (every page read, every task described):
   the tasks the catalog or a running record has and the listing lacks are confirmed with
   DescribeTasks (stopped, or MISSING with a record at least an hour old: one MISSING for a
   younger record is eventual consistency, not proof). A task DescribeTasks still answers
   RUNNING is kept, unless its container instance is deregistered (`_orphans`: tasks of a
   host force-deregistered while its event was lost). At most RECONCILE_MAX_DELETIONS are
   removed (through `apply`: tombstone + node delete); the rest is reported (DeletionsHeldBack
   metric and a warning) and left to the next pass. Only nodes carrying our `source` and
   cluster meta are ever listed, so nothing else can be deleted.
5. Tombstone garbage collection: stopped records older than TOMBSTONE_GRACE_HOURS of tasks ECS
   no longer knows (MISSING) are deleted with KV delete-cas (a record that changed stays). The
   grace (default 5 days) outlives every delayed event: EventBridge retries for 24 h and the
   queue keeps messages 4 days, so no late RUNNING event can find the tombstone gone. A message
   redriven from the DLQ later than that is caught by the next pass (its task is MISSING).
6. Hosts whose agent state (DescribeContainerInstances) disagrees with their record or markers
   go through `host_state.apply_instance_state`, the path of the container instance events.
   Hosts whose agent has been disconnected longer than HOST_DISCONNECT_GRACE_MINUTES are
   described once more, at the time of marking, and marked only if still disconnected
   (`host_state.mark_after_grace`): the event path never marks, so a routine reconnect within
   the grace is never visible.

Large clusters and the time budget: the pass is stateless. The listings cost ~2 AWS calls per
100 tasks, the repairs ~4 Consul requests each, and every phase stops when the invocation's
budget runs out; what was not repaired is found again by the next scheduled pass, which
recomputes the whole difference (no checkpoint to lose or to go stale). Phases run in order of
harm: missing and moved entries first, then deletions, then garbage collection. A pass that
could not read the whole listing deletes nothing (ReconcileIncomplete metric).

Metrics (EMF, namespace of metrics.py, dimension ClusterName): ReconcileTasks (running mesh
tasks), DriftMissing, DriftChanged, DriftStale, DriftHosts, DriftResurrected and their sum
DriftRepaired,
DeletionsHeldBack, TombstonesCollected, RecordsMigrated, ReconcileIncomplete,
ReconcileDeferred (repairs left for lack of time), ReconcileFailed (repairs that failed),
InvalidTaskDefinition, HostAddressRefused (tasks kept out because their host's address is
loopback, link-local, unspecified or docker0's: aws.address_problem).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import apply
import aws
import decide
import host_state
import identity
import inventory
import kv_layout
import listing
import logs
import migration
import registrar
import retry
from inventory import Inventory
from metrics import Metrics
from model import (
    MISSING_REASON,
    RUNNING,
    STOPPED,
    ContainerDefinition,
    InvalidTaskDefinition,
    MalformedEvent,
    Registration,
    StateRecord,
    TaskDefinition,
    TaskEvent,
    parse_time,
    task_event_from_detail,
)

RESERVE_MS = 15_000
# Age a task's record must have before DescribeTasks' MISSING is taken as proof the task is gone
# (Reconciler._may_be_forgotten): ECS keeps stopped tasks describable for at least this long.
MISSING_PROOF_AGE = timedelta(hours=1)
GC_PER_PASS = 1000  # tombstones examined per pass; bounds the pass's DescribeTasks calls

# AWS clients: replaced in tests (moto or fakes) with a function of the same shape.
aws_client: Callable[[str], Any] = aws.client


class ConfigError(registrar.ConfigError):
    """A reconcile setting in the environment is invalid."""


def _int_env(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class ReconcileSettings:
    """RECONCILE_MAX_DELETIONS (50, config key reconcile_max_deletions): entries one pass may
    delete. TOMBSTONE_GRACE_HOURS (120): age before a stopped task's record may go.
    HOST_DISCONNECT_GRACE_MINUTES (5, config key host_disconnect_grace_minutes): how long an ECS
    agent may stay disconnected before its host's task nodes are marked critical."""

    max_deletions: int = 50
    tombstone_grace: timedelta = timedelta(hours=120)
    host_disconnect_grace: timedelta = timedelta(minutes=5)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReconcileSettings:
        return cls(
            max_deletions=_int_env(env, "RECONCILE_MAX_DELETIONS", 50, 1, 10000),
            tombstone_grace=timedelta(
                hours=_int_env(env, "TOMBSTONE_GRACE_HOURS", 120, 25, 24 * 365)
            ),
            host_disconnect_grace=timedelta(
                minutes=_int_env(env, "HOST_DISCONNECT_GRACE_MINUTES", 5, 1, 1440)
            ),
        )


@dataclass
class PassReport:
    """What one pass saw and did; `metrics()` is what goes to CloudWatch."""

    running: int = 0
    in_sync: int = 0
    missing: int = 0
    changed: int = 0
    stale: int = 0
    hosts: int = 0
    held_back: int = 0
    tombstones_collected: int = 0
    migrated: int = 0
    deferred: int = 0
    failed: int = 0
    invalid: int = 0
    refused: int = 0
    doubtful: int = 0  # hosts whose SSM address may be a Docker bridge's (aws.address_doubt)
    marked: int = 0
    resurrected: int = 0
    complete: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return self.missing + self.changed + self.stale + self.hosts + self.resurrected

    def metrics(self) -> dict[str, int]:
        return {
            "ReconcileTasks": self.running,
            "DriftMissing": self.missing,
            "DriftChanged": self.changed,
            "DriftStale": self.stale,
            "DriftHosts": self.hosts,
            "DriftResurrected": self.resurrected,
            "DriftRepaired": self.repaired,
            "DeletionsHeldBack": self.held_back,
            "TombstonesCollected": self.tombstones_collected,
            "RecordsMigrated": self.migrated,
            "ReconcileIncomplete": 0 if self.complete else 1,
            "ReconcileDeferred": self.deferred,
            "ReconcileFailed": self.failed,
            "InvalidTaskDefinition": self.invalid,
            "HostAddressRefused": self.refused,
            "HostAddressDoubtful": self.doubtful,
            "HostChecksCritical": self.marked,
        }

    def summary(self) -> dict[str, Any]:
        return {
            **self.metrics(),
            "InSync": self.in_sync,
            "Complete": self.complete,
            "Problems": self.problems[:20],
        }


@dataclass(frozen=True)
class Owned:
    """What the registrar owns for the cluster, as read at the start of the pass."""

    nodes: dict[str, Mapping[str, Any]]  # node name -> catalog node
    records: dict[str, tuple[StateRecord | None, int]]  # task ID -> (record, ModifyIndex)
    markers: set[str]  # nodes carrying the disconnection marker
    kv: migration.Records  # every record of the read, legacy layout included


@dataclass(frozen=True)
class Gone:
    """The tombstone a task confirmed gone gets: the version it stops at, and MISSING_REASON
    when the proof was DescribeTasks' MISSING (a later pass may overwrite that one)."""

    version: int
    reason: str | None = None


@dataclass(frozen=True)
class Wanted:
    """A running mesh task and the registration it should have."""

    event: TaskEvent
    registration: Registration


def task_arn_for(cluster_arn: str, task_id: str) -> str:
    """The task ARN of `task_id` in `cluster_arn` (what identity.state_key/node_name need)."""
    prefix, name = cluster_arn.rsplit(":cluster/", 1)
    return f"{prefix}:task/{name}/{task_id}"


class Reconciler:
    """One pass over one cluster, within `budget`."""

    def __init__(
        self,
        *,
        consul: Inventory,
        ecs: listing.EcsReader,
        task_definitions: aws.TaskDefinitionSource,
        cluster_arn: str,
        settings: ReconcileSettings,
        budget: retry.Budget,
        policy: retry.RetryPolicy,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._consul = consul
        self._ecs = ecs
        self._task_definitions = task_definitions
        self._cluster_arn = cluster_arn
        self._settings = settings
        self._budget = budget
        self._policy = policy
        self._now = now
        self.report = PassReport()
        # container instance ARN -> task nodes of the running mesh tasks ECS places on it
        self._on_instance: dict[str, set[str]] = {}
        self._refused_hosts: set[str] = set()
        self._doubted_hosts: set[str] = set()

    # -- the pass ----------------------------------------------------------------------------

    def run(self) -> PassReport:
        """Raises when Consul cannot be read at all (nothing to compare against)."""
        owned = self._read_owned()
        running = self._ecs.running_tasks()
        if not running.complete:
            self.report.complete = False
            self.report.problems.extend(running.problems)
            logs.warning(
                "the ECS listing is incomplete: this pass deletes nothing",
                problems=list(running.problems[:10]),
            )
        wanted, stopping, hosts = self._wanted(running.tasks)
        settled = self._migrate(owned, set(running.tasks), hosts)
        if settled and self.report.complete and owned.kv.migrated_at is None:
            migration.mark_done(self._consul, self._cluster_arn, self._now())
        self._repair(wanted, owned)
        if self.report.complete:
            self._delete_gone(owned, set(running.tasks), stopping)
            self._collect_tombstones(owned, set(running.tasks))
        self._repair_hosts(owned, hosts)
        return self.report

    def _read_owned(self) -> Owned:
        nodes: dict[str, Mapping[str, Any]] = {
            str(n["Node"]): n
            for n in self._consul.nodes(inventory.owned_nodes_filter(self._cluster_arn))
            if isinstance(n.get("Node"), str)
        }
        kv = migration.read(self._consul, self._cluster_arn, self._now())
        markers = host_state.marked_nodes(self._consul)
        return Owned(nodes=nodes, records=dict(kv.tasks), markers=markers, kv=kv)

    def _event(self, task: Mapping[str, Any], task_id: str) -> TaskEvent | None:
        try:
            return task_event_from_detail(
                task, event_id=f"reconcile:{task_id}", event_time=self._now(), path=task_id
            )
        except MalformedEvent as err:
            logs.warning(
                "DescribeTasks answer unusable; task skipped", task_id=task_id, error=str(err)
            )
            return None

    def _wanted(
        self, tasks: Mapping[str, Mapping[str, Any]]
    ) -> tuple[list[Wanted], list[TaskEvent], listing.Hosts | None]:
        """The registration of every running mesh task; tasks ECS is already stopping."""
        candidates: list[tuple[TaskEvent, TaskDefinition, ContainerDefinition]] = []
        stopping: list[TaskEvent] = []
        for task_id in sorted(tasks):
            event = self._event(tasks[task_id], task_id)
            if event is None:
                continue
            phase = decide.triage(event, self._cluster_arn)
            if phase == "stop":
                stopping.append(event)
            if phase != "run":
                continue
            try:
                definition = self._definition(event.task_definition_arn)
            except (retry.RetryableError, aws.AwsLookupError) as err:
                self._fail(event, "task definition lookup failed", err)
                continue
            app = decide.mesh_target(definition)
            if isinstance(app, decide.Skip):
                self.report.invalid += app.kind == "invalid"
                continue
            candidates.append((event, definition, app))
        if not candidates:
            return [], stopping, None
        hosts = self._ecs.hosts(
            e.container_instance_arn for e, _, _ in candidates if e.container_instance_arn
        )
        wanted = self._registrations(candidates, hosts)
        self.report.running = len(wanted)
        return wanted, stopping, hosts

    def _registrations(
        self,
        candidates: list[tuple[TaskEvent, TaskDefinition, ContainerDefinition]],
        hosts: listing.Hosts,
    ) -> list[Wanted]:
        wanted = []
        for event, definition, app in candidates:
            instance = event.container_instance_arn
            if instance is not None:
                self._on_instance.setdefault(instance, set()).add(
                    identity.node_name(event.task_arn)
                )
                status = hosts.instances.get(instance, {}).get("status")
                if status in host_state.DEREGISTERED_STATUSES:
                    continue  # its tasks go with it (_repair_hosts), never registered again
            try:
                if instance is None:
                    raise MalformedEvent("containerInstanceArn is missing for a RUNNING task")
                host = hosts.source.get(self._cluster_arn, instance)
                if host.doubt and instance not in self._doubted_hosts:
                    self._doubted_hosts.add(instance)
                    self.report.doubtful += 1
                registration = decide.desired_registration(event, definition, app, host)
            except (InvalidTaskDefinition, MalformedEvent) as err:
                self.report.invalid += 1
                logs.warning("task cannot be registered", task_arn=event.task_arn, error=str(err))
                continue
            except aws.UnusableHostAddress as err:
                self._refuse(err)
                continue
            except (retry.RetryableError, aws.AwsLookupError) as err:
                self._fail(event, "host address lookup failed", err)
                continue
            wanted.append(Wanted(event, registration))
        return wanted

    def _refuse(self, err: aws.UnusableHostAddress) -> None:
        """A task kept out of the catalog by its host's address; one log line per host."""
        self.report.refused += 1
        if err.container_instance_arn not in self._refused_hosts:
            self._refused_hosts.add(err.container_instance_arn)
            logs.error(
                "host address refused: its tasks stay unregistered",
                container_instance_arn=err.container_instance_arn,
                error=str(err),
            )

    def _definition(self, arn: str) -> TaskDefinition:
        return retry.call(
            lambda: self._task_definitions.get(arn),
            what="DescribeTaskDefinition",
            policy=self._policy,
            budget=self._budget,
        )

    def _out_of_time(self) -> bool:
        return self._budget.exhausted

    def _fail(self, event: TaskEvent, what: str, err: Exception) -> None:
        self.report.failed += 1
        with logs.task_context(event.task_arn):
            logs.error(what, error=f"{type(err).__name__}: {err}")

    # -- phase: migration of legacy records (kv_layout.py, migration.py) ----------------------

    def _migrate(self, owned: Owned, listed: set[str], hosts: listing.Hosts | None) -> bool:
        """Move what the legacy layout holds of this cluster; True when nothing was left."""
        kv = owned.kv
        if not kv.legacy_read:
            return False
        if not kv.legacy_tasks and not kv.legacy_hosts:
            return True
        our_tasks = listed | {node.removeprefix(identity.NODE_PREFIX) for node in owned.nodes}
        described = hosts.instances if hosts is not None else {}
        steps = migration.plan(
            kv,
            self._cluster_arn,
            our_tasks=our_tasks,
            our_hosts={host_state.instance_id(arn) for arn in described},
            now=self._now(),
            tombstone_grace=self._settings.tombstone_grace,
        )
        if not steps:
            return True
        if self._out_of_time():
            return False
        try:
            done = migration.apply(self._consul, steps, self._out_of_time)
        except Exception as err:
            self.report.failed += 1
            logs.error("migrating legacy records failed", error=f"{type(err).__name__}: {err}")
            return False
        for step in done:
            if step.moves_task:
                owned.records[step.item_id] = (step.record, 0)
        self.report.migrated += len(done)
        logs.info("legacy state records migrated to the cluster ARN layout", records=len(done))
        return False

    # -- phase: registrations ----------------------------------------------------------------

    def _in_sync(self, wanted: Wanted, owned: Owned) -> bool:
        registration = wanted.registration
        record, _ = owned.records.get(wanted.event.task_id, (None, 0))
        node = owned.nodes.get(registration.node)
        return (
            record is not None
            and record.status == RUNNING
            and record.digest == registration.digest()
            and node is not None
            and node.get("Address") == registration.address
        )

    def _repair(self, wanted: list[Wanted], owned: Owned) -> None:
        drift = [w for w in wanted if not self._in_sync(w, owned)]
        self.report.in_sync = len(wanted) - len(drift)
        for n, item in enumerate(drift):
            if self._out_of_time():
                self.report.deferred += len(drift) - n
                logs.warning("time budget spent; the next pass continues", left=len(drift) - n)
                return
            present = item.registration.node in owned.nodes
            record, _ = owned.records.get(item.event.task_id, (None, 0))
            result = self._apply(item.event.task_arn, item.registration, item.event.version)
            if result is None:
                continue
            if record is not None and record.inferred_from_missing and result.kind == "registered":
                self._resurrected(item.event)
            elif result.kind in ("registered", "repaired"):
                if present:
                    self.report.changed += 1
                else:
                    self.report.missing += 1

    def _resurrected(self, event: TaskEvent) -> None:
        """A task tombstoned on MISSING is listed and described RUNNING again: it was registered
        over that tombstone (decide.decide). MISSING was wrong for it (the age rule's one blind
        spot, an ECS fault): counted and alarmed (DriftResurrected)."""
        self.report.resurrected += 1
        with logs.task_context(event.task_arn):
            logs.warning(
                "a task removed on MISSING is running: registered again",
                version=event.version,
                container_instance_arn=event.container_instance_arn,
            )

    def _apply(
        self,
        task_arn: str,
        desired: Registration | None,
        version: int,
        reason: str | None = None,
    ) -> apply.Result | None:
        """The event path's write, in repair mode; None when it failed (logged, counted)."""
        with logs.task_context(task_arn):
            try:
                result = apply.apply(
                    self._consul,
                    key=kv_layout.task_key(self._cluster_arn, identity.task_id(task_arn)),
                    node=identity.node_name(task_arn),
                    desired=desired,
                    version=version,
                    event_time=self._now().isoformat(),
                    repair=True,
                    reason=reason,
                )
            except Exception as err:
                self.report.failed += 1
                logs.error(
                    "reconcile could not repair the task", error=f"{type(err).__name__}: {err}"
                )
                return None
            logs.info(f"reconcile {result.kind}", reason=result.reason, version=version)
            return result

    # -- phase: deletions --------------------------------------------------------------------

    def _delete_gone(self, owned: Owned, listed: set[str], stopping: list[TaskEvent]) -> None:
        """Remove what belongs to tasks DescribeTasks confirms stopped or MISSING, up to the cap."""
        suspects = {
            node[len(identity.NODE_PREFIX) :]
            for node in owned.nodes
            if node.startswith(identity.NODE_PREFIX)
        }
        suspects |= {
            tid
            for tid, (record, _) in owned.records.items()
            if record is None or record.status == RUNNING
        }
        suspects -= listed
        gone: dict[str, Gone] = {}
        for event in stopping:
            node = identity.node_name(event.task_arn)
            record, _ = owned.records.get(event.task_id, (None, 0))
            if node in owned.nodes or (record is not None and record.status == RUNNING):
                gone[event.task_id] = Gone(event.version)
        gone.update(self._confirm_gone(owned, suspects))
        cap = self._settings.max_deletions
        ordered = sorted(gone)
        if len(ordered) > cap:
            self.report.held_back = len(ordered) - cap
            logs.warning(
                "deletion cap reached: the rest waits for the next pass",
                confirmed_gone=len(ordered),
                cap=cap,
                held_back=self.report.held_back,
            )
        for n, tid in enumerate(ordered[:cap]):
            if self._out_of_time():
                self.report.deferred += min(len(ordered), cap) - n
                return
            task_arn = task_arn_for(self._cluster_arn, tid)
            present = identity.node_name(task_arn) in owned.nodes
            result = self._apply(task_arn, None, gone[tid].version, gone[tid].reason)
            if result is not None and present and result.kind in ("deregistered", "repaired"):
                self.report.stale += 1

    def _confirm_gone(self, owned: Owned, suspects: set[str]) -> dict[str, Gone]:
        """The suspects DescribeTasks proves gone -> the tombstone to write."""
        gone: dict[str, Gone] = {}
        unlisted: dict[str, TaskEvent] = {}  # described RUNNING, yet not listed
        described = self._ecs.describe_tasks(suspects) if suspects else listing.Described()
        for tid in sorted(suspects):
            if tid in described.tasks:
                seen = self._event(described.tasks[tid], tid)
                phase = None if seen is None else decide.triage(seen, self._cluster_arn)
                if seen is not None and phase == "stop":
                    gone[tid] = Gone(seen.version)
                elif seen is not None and phase == "run" and seen.container_instance_arn:
                    unlisted[tid] = seen
                else:
                    logs.info("the listing missed a running task; kept", task_id=tid)
            elif described.failures.get(tid) == "MISSING":
                if self._may_be_forgotten(owned, tid):
                    gone[tid] = Gone(host_state.GONE_VERSION, MISSING_REASON)
                else:
                    logs.info("MISSING for a task registered within the hour; kept", task_id=tid)
            else:
                reason = described.failures.get(tid) or described.unknown.get(tid)
                logs.warning("cannot confirm the task is gone; kept", task_id=tid, reason=reason)
        gone.update(self._orphans(owned, unlisted))
        return gone

    def _orphans(self, owned: Owned, unlisted: Mapping[str, TaskEvent]) -> dict[str, Gone]:
        """Unlisted tasks DescribeTasks still answers RUNNING, whose host ECS reports gone.

        DeregisterContainerInstance with `force`: tasks "remain running until you terminate the
        instance or the tasks stop through some other means, but they're orphaned (no longer
        monitored or accounted for by Amazon ECS)" (ECS API reference). What ListTasks and
        DescribeTasks then answer for them is not documented; if they leave the listing while
        DescribeTasks keeps their last RUNNING state, and the host's deregistration event was
        lost, nothing else would ever remove them. So their container instances are described
        (one call per 100): DEREGISTERING or INACTIVE is ECS's own word that the host is gone
        (a tombstone like host_state's, which no event can pass); a MISSING instance is taken as
        proof under the MISSING rule (record an hour old), and tagged like a MISSING task. A
        task on a host that is still ACTIVE is one the listing missed: kept.
        """
        if not unlisted:
            return {}
        arns = {str(event.container_instance_arn) for event in unlisted.values()}
        instances, failures = self._ecs.container_instances(arns)
        gone: dict[str, Gone] = {}
        for tid, event in sorted(unlisted.items()):
            arn = str(event.container_instance_arn)
            status = instances.get(arn, {}).get("status")
            if status in host_state.DEREGISTERED_STATUSES:
                gone[tid] = Gone(host_state.GONE_VERSION)
            elif failures.get(arn) == "MISSING" and self._may_be_forgotten(owned, tid):
                gone[tid] = Gone(host_state.GONE_VERSION, MISSING_REASON)
            else:
                logs.info("the listing missed a running task; kept", task_id=tid)
                continue
            logs.warning(
                "task orphaned by a deregistered container instance; removing it",
                task_id=tid,
                container_instance_arn=arn,
                status=status or failures.get(arn),
            )
        return gone

    def _may_be_forgotten(self, owned: Owned, task_id: str) -> bool:
        """Is MISSING proof that ECS forgot the task, rather than eventual consistency?

        "Currently, stopped tasks appear in the returned results for at least one hour"
        (DescribeTasks, ECS API reference), so a task ECS has forgotten stopped at least an hour
        ago, and its record (written at its RUNNING event, or by a pass that saw it RUNNING) is
        older still. A younger record answered MISSING is the API's eventual consistency (the
        RunTask reference recommends retrying DescribeTasks for up to five minutes): the task
        is kept, and decided again by the passes after its record turns an hour old. A record
        without a time predates them, and a node without a record was not written by the event
        path: both are judged on MISSING alone, as before.
        """
        record, _ = owned.records.get(task_id, (None, 0))
        if record is None or record.event_time is None:
            return True
        try:
            written = parse_time(record.event_time, "event_time")
        except MalformedEvent:
            return True
        return written <= self._now() - MISSING_PROOF_AGE

    # -- phase: tombstones -------------------------------------------------------------------

    def _collect_tombstones(self, owned: Owned, listed: set[str]) -> None:
        """Old tombstones of tasks ECS forgot, in this cluster's prefix only: a legacy one is
        either provably this cluster's (migration.py moves or drops it) or left alone."""
        cutoff = self._now() - self._settings.tombstone_grace
        candidates = [
            (kv_layout.task_key(self._cluster_arn, tid), tid, r) for tid, r in owned.records.items()
        ]
        old: dict[str, tuple[str, int]] = {}  # key -> (task ID, ModifyIndex)
        for key, tid, (record, index) in sorted(candidates):
            if (
                record is None
                or record.status != STOPPED
                or tid in listed
                or record.event_time is None
            ):
                continue
            try:
                stopped_at = parse_time(record.event_time, "event_time")
            except MalformedEvent:
                continue
            if stopped_at < cutoff:
                old[key] = (tid, index)
            if len(old) >= GC_PER_PASS:
                break
        if not old or self._out_of_time():
            return
        described = self._ecs.describe_tasks({tid for tid, _ in old.values()})
        ops = [
            {"KV": {"Verb": "delete-cas", "Key": key, "Index": index}}
            for key, (tid, index) in sorted(old.items())
            if described.failures.get(tid) == "MISSING"
        ]
        try:
            landed = inventory.txn_groups(
                self._consul, [(op,) for op in ops], stop=self._out_of_time
            )
        except Exception as err:
            logs.warning("tombstone collection failed; the next pass retries", error=str(err))
            return
        self.report.tombstones_collected += len(landed)

    # -- phase: hosts ------------------------------------------------------------------------

    def _repair_hosts(self, owned: Owned, hosts: listing.Hosts | None) -> None:
        """Hosts whose agent state or markers disagree with their record (lost events), then
        the disconnections that outlasted the grace, confirmed by a fresh describe."""
        if hosts is None:
            return
        due: list[str] = []
        now = self._now()
        for arn, nodes in sorted(self._on_instance.items()):
            instance = hosts.instances.get(arn)
            state = None if instance is None else self._instance_state(arn, instance)
            if state is None or self._out_of_time():
                continue
            record = self._host_record(owned, arn)
            if not self._host_in_sync(state, record, nodes, owned):
                self._host_outcome(arn, state)
            if record is None or state.version > record.version:
                record = host_state.next_record(record, state, now)
            if host_state.due_for_marking(record, now, self._settings.host_disconnect_grace):
                due.append(arn)
        if due and not self._out_of_time():
            self._mark_after_grace(due)

    def _mark_after_grace(self, due: list[str]) -> None:
        """Mark the hosts still disconnected now (DescribeContainerInstances read here, at the
        time of marking: a reconnect since the pass began leaves its host alone)."""
        fresh, failures = self._ecs.container_instances(due)
        for arn in due:
            state = self._instance_state(arn, fresh[arn]) if arn in fresh else None
            if state is None:
                logs.warning(
                    "disconnection not confirmed; not marked",
                    container_instance_arn=arn,
                    reason=failures.get(arn),
                )
            elif state.agent_connected or state.deregistered:
                self._host_outcome(arn, state)  # it reconnected or left: its event may lag
            else:
                self._host_outcome(arn, state, mark=True)

    def _instance_state(
        self, arn: str, instance: Mapping[str, Any]
    ) -> host_state.InstanceState | None:
        try:
            return host_state.instance_state({**instance, "clusterArn": self._cluster_arn})
        except MalformedEvent as err:
            logs.warning("container instance unusable", container_instance_arn=arn, error=str(err))
            return None

    @staticmethod
    def _host_record(owned: Owned, arn: str) -> host_state.HostRecord | None:
        pair = owned.kv.hosts.get(host_state.instance_id(arn))
        return None if pair is None else host_state.HostRecord.decode(pair.value)

    @staticmethod
    def _host_in_sync(
        state: host_state.InstanceState,
        record: host_state.HostRecord | None,
        nodes: set[str],
        owned: Owned,
    ) -> bool:
        """Nothing to write: the record is as new as ECS's answer and the markers match it."""
        if state.deregistered:
            return not nodes & set(owned.nodes)
        if record is None:
            return state.agent_connected and not owned.markers & nodes
        if state.version > record.version:
            return False
        if state.version < record.version and host_state.interruption(record, state):
            return False  # a lagging answer that still proves a reconnect hid in a gap
        return owned.markers & nodes == (nodes if record.drained else set())

    def _host_outcome(
        self, arn: str, state: host_state.InstanceState, *, mark: bool = False
    ) -> None:
        """Apply ECS's `state` to the host (or, with `mark`, its disconnection verdict)."""
        try:
            if mark:
                grace = self._settings.host_disconnect_grace
                outcome = host_state.mark_after_grace(self._consul, state, self._now(), grace)
            else:
                outcome = host_state.apply_instance_state(self._consul, state, self._now())
        except Exception as err:
            self.report.failed += 1
            logs.error("host state repair failed", container_instance_arn=arn, error=str(err))
            return
        logs.info(
            f"reconcile host {outcome.kind}", container_instance_arn=arn, reason=outcome.reason
        )
        if mark and outcome.kind == "marked":
            self.report.marked += 1
        elif outcome.kind in ("marked", "unmarked", "deregistered") and outcome.tasks:
            self.report.hosts += 1


# --------------------------------------------------------------------------------------------
# Entry point


def run_pass(
    rt: registrar.Runtime,
    settings: ReconcileSettings,
    budget: retry.Budget,
    *,
    clients: Callable[[str], Any] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> PassReport:
    """One pass with the container's runtime (Consul token, TLS, task definition cache)."""
    client = clients or aws_client
    cluster_arn = rt.settings.cluster_arn
    reader = listing.EcsReader(
        cluster_arn=cluster_arn,
        ecs=lambda: client("ecs"),
        ssm=lambda: client("ssm"),
        policy=rt.settings.retry_policy,
        budget=budget,
    )
    with aws.within(budget):
        return Reconciler(
            consul=inventory.connect(rt, budget),
            ecs=reader,
            task_definitions=rt.task_definitions,
            cluster_arn=cluster_arn,
            settings=settings,
            budget=budget,
            policy=rt.settings.retry_policy,
            now=now,
        ).run()


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Scheduled entry point. Raises when the pass could not run, so the Errors alarm sees it."""
    rt = registrar.runtime()
    settings = ReconcileSettings.from_env(os.environ)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        # Keep enough to finish the repair in progress (one apply, with its retries) and log.
        budget = retry.Budget(remaining, max(rt.settings.reserve_ms, RESERVE_MS))
    else:  # a local run without a Lambda context
        budget = retry.Budget.fixed(600.0)
    metrics = Metrics({"ClusterName": identity.cluster_name(rt.settings.cluster_arn)})
    try:
        report = run_pass(rt, settings, budget)
    except Exception as err:
        logs.error("reconcile pass failed", error=f"{type(err).__name__}: {err}")
        metrics.count("ReconcileIncomplete")
        metrics.flush()
        raise
    for name, value in report.metrics().items():
        metrics.count(name, value)
    metrics.flush()
    logs.info("reconcile pass done", **report.summary())
    return report.summary()
