"""The reconcile pass: converge the catalog to ECS's truth after lost events, safely.

Entry point `handler(event, context)` (EventBridge schedule). It runs locally too, with the
registrar's environment (CONSUL_HTTP_ADDR, ECS_CLUSTER_ARN, ...):
`cd lambda/registrar && python -c "import reconcile; print(reconcile.handler({}, None))"`.

One pass, one module per phase (the Reconciler below only runs them in order):
reconcile_consul.py (read Consul), reconcile_ecs.py (read ECS), reconcile_diff.py (the pure
diff), reconcile_repair.py, reconcile_delete.py, reconcile_tombstones.py, reconcile_hosts.py;
reconcile_context.py holds what they share, reconcile_settings.py the settings and the report.
1. What the registrar owns, in 3 Consul requests (21 or 22 for large clusters: the records in
   shards, reconcile_consul.py): this cluster's
   task nodes (`/v1/catalog/nodes?filter=Meta["source"] == ... and Meta["cluster-arn"] == ...`),
   its state records (`/v1/kv/ecs-registrar/<name>/<region>/<account>/?recurse`, kv_layout.py)
   and the disconnection markers
   (`/v1/health/state/any?filter=CheckID == "ecs-agent-connectivity"`).
   Until the legacy name-keyed layout is migrated (and MIGRATION_SETTLE after), 2 more: its
   `tasks/` and `hosts/` prefixes, read apart so that no same-named cluster's records come along.
2. ECS's truth (listing.py): ListTasks, then DescribeTasks (100 tasks per call) of every listed
   task except those Consul vouches for (a running record, its node, and the node on its
   host's address as read this pass) once verification.py's marker says this code has described
   them all; task definitions
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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aws
import host_state
import identity
import inventory
import listing
import logs
import migration
import registrar
import retry
import verification
from inventory import Inventory
from metrics import Metrics
from reconcile_consul import Owned, read_owned
from reconcile_context import PassContext
from reconcile_delete import MISSING_PROOF_AGE, Deletions
from reconcile_diff import drift
from reconcile_ecs import EcsRead, EcsView
from reconcile_hosts import HostRepair
from reconcile_repair import repair
from reconcile_settings import ConfigError, PassReport, ReconcileSettings
from reconcile_tombstones import collect_tombstones

__all__ = [
    "MISSING_PROOF_AGE",
    "ConfigError",
    "PassReport",
    "ReconcileSettings",
    "Reconciler",
    "handler",
    "run_pass",
]

RESERVE_MS = 15_000

# AWS clients: replaced in tests (moto or fakes) with a function of the same shape.
aws_client: Callable[[str], Any] = aws.client


class Reconciler:
    """One pass over one cluster, within `budget`: the phases in order of harm."""

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
        self._ctx = PassContext(
            consul=consul,
            ecs=ecs,
            cluster_arn=cluster_arn,
            settings=settings,
            budget=budget,
            policy=policy,
            now=now,
            report=PassReport(),
        )
        self._task_definitions = task_definitions

    @property
    def report(self) -> PassReport:
        return self._ctx.report

    def run(self) -> PassReport:
        """Raises when Consul cannot be read at all (nothing to compare against)."""
        ctx = self._ctx
        listed = ctx.ecs.list_tasks()
        owned = read_owned(
            ctx.consul,
            ctx.cluster_arn,
            ctx.now(),
            tasks=len(listed.ids),
            listed_all=not listed.problems,
        )
        trust = verification.trusted(owned.kv.verified)
        ecs = EcsRead(ctx, self._task_definitions).read(listed, owned, trust)
        settled = self._migrate(owned, ecs)
        if settled and ctx.report.complete and owned.kv.migrated_at is None:
            migration.mark_done(ctx.consul, ctx.cluster_arn, ctx.now())
        drifted = drift(ecs.wanted, owned.records, owned.nodes)
        ctx.report.in_sync = len(ecs.wanted) - len(drifted) + ecs.in_sync_unread
        repair(ctx, drifted, owned)
        if ctx.report.complete:
            Deletions(ctx, owned).run(ecs.listed, ecs.stopping)
            collect_tombstones(ctx, owned, ecs.listed)
        HostRepair(ctx, owned).run(ecs.hosts, ecs.on_instance)
        report = ctx.report
        clean = report.complete and not (report.failed or report.deferred or ctx.out_of_time())
        if not trust and clean:
            verification.after_full_pass(ctx.consul, ctx.cluster_arn, owned.kv.verified, ctx.now())
        return report

    def _migrate(self, owned: Owned, ecs: EcsView) -> bool:
        """Move what the legacy layout holds of this cluster (kv_layout.py, migration.py);
        True when nothing was left."""
        ctx, kv = self._ctx, owned.kv
        if not kv.legacy_read:
            return False
        if not kv.legacy_tasks and not kv.legacy_hosts:
            return True
        our_tasks = ecs.listed | {node.removeprefix(identity.NODE_PREFIX) for node in owned.nodes}
        described = ecs.hosts.instances if ecs.hosts is not None else {}
        steps = migration.plan(
            kv,
            ctx.cluster_arn,
            our_tasks=our_tasks,
            our_hosts={host_state.instance_id(arn) for arn in described},
            now=ctx.now(),
            tombstone_grace=ctx.settings.tombstone_grace,
        )
        if not steps:
            return True
        if ctx.out_of_time():
            return False
        try:
            done = migration.apply(ctx.consul, steps, ctx.out_of_time)
        except Exception as err:
            ctx.report.failed += 1
            logs.error("migrating legacy records failed", error=f"{type(err).__name__}: {err}")
            return False
        for step in done:
            if step.moves_task:
                owned.records[step.item_id] = (step.record, 0)
        ctx.report.migrated += len(done)
        logs.info("legacy state records migrated to the cluster ARN layout", records=len(done))
        return False


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
