"""Phase "delete" of the reconcile pass: remove what belongs to tasks that are gone.

Run only when the ECS listing is complete (every page read, every task described). The tasks
the catalog or a running record has and the listing lacks are confirmed with DescribeTasks:
stopped, or MISSING with a record at least MISSING_PROOF_AGE old (one MISSING for a younger
record is eventual consistency, not proof). A task DescribeTasks still answers RUNNING is
kept, unless its container instance is deregistered (`_orphans`). At most
`max_deletions` are removed (through `apply`: tombstone + node delete); the rest is reported
(DeletionsHeldBack) and left to the next pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import decide
import host_state
import identity
import listing
import logs
from model import MISSING_REASON, TaskEvent
from reconcile_consul import Owned
from reconcile_context import PassContext, task_arn_for
from reconcile_diff import Gone, deletion_suspects, record_older_than, stopping_gone

# Age a task's record must have before DescribeTasks' MISSING is taken as proof the task is gone
# (Deletions._may_be_forgotten): ECS keeps stopped tasks describable for at least this long.
MISSING_PROOF_AGE = timedelta(hours=1)


class Deletions:
    def __init__(self, ctx: PassContext, owned: Owned) -> None:
        self._ctx = ctx
        self._owned = owned

    def run(self, listed: set[str], stopping: list[TaskEvent]) -> None:
        """Remove what belongs to tasks DescribeTasks confirms stopped or MISSING, up to the cap."""
        owned, ctx = self._owned, self._ctx
        suspects = deletion_suspects(owned.records, owned.nodes, listed)
        gone = stopping_gone(stopping, owned.records, owned.nodes)
        gone.update(self._confirm_gone(suspects))
        cap = ctx.settings.max_deletions
        ordered = sorted(gone)
        if len(ordered) > cap:
            ctx.report.held_back = len(ordered) - cap
            logs.warning(
                "deletion cap reached: the rest waits for the next pass",
                confirmed_gone=len(ordered),
                cap=cap,
                held_back=ctx.report.held_back,
            )
        for n, tid in enumerate(ordered[:cap]):
            if ctx.out_of_time():
                ctx.report.deferred += min(len(ordered), cap) - n
                return
            task_arn = task_arn_for(ctx.cluster_arn, tid)
            present = identity.node_name(task_arn) in owned.nodes
            result = ctx.apply(task_arn, None, gone[tid].version, gone[tid].reason)
            if result is not None and present and result.kind in ("deregistered", "repaired"):
                ctx.report.stale += 1

    def _confirm_gone(self, suspects: set[str]) -> dict[str, Gone]:
        """The suspects DescribeTasks proves gone -> the tombstone to write."""
        ctx = self._ctx
        gone: dict[str, Gone] = {}
        unlisted: dict[str, TaskEvent] = {}  # described RUNNING, yet not listed
        described = ctx.ecs.describe_tasks(suspects) if suspects else listing.Described()
        for tid in sorted(suspects):
            if tid in described.tasks:
                seen = ctx.event(described.tasks[tid], tid)
                phase = None if seen is None else decide.triage(seen, ctx.cluster_arn)
                if seen is not None and phase == "stop":
                    gone[tid] = Gone(seen.version)
                elif seen is not None and phase == "run" and seen.container_instance_arn:
                    unlisted[tid] = seen
                else:
                    logs.info("the listing missed a running task; kept", task_id=tid)
            elif described.failures.get(tid) == "MISSING":
                if self._may_be_forgotten(tid):
                    gone[tid] = Gone(host_state.GONE_VERSION, MISSING_REASON)
                else:
                    logs.info("MISSING for a task registered within the hour; kept", task_id=tid)
            else:
                reason = described.failures.get(tid) or described.unknown.get(tid)
                logs.warning("cannot confirm the task is gone; kept", task_id=tid, reason=reason)
        gone.update(self._orphans(unlisted))
        return gone

    def _orphans(self, unlisted: Mapping[str, TaskEvent]) -> dict[str, Gone]:
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
        instances, failures = self._ctx.ecs.container_instances(arns)
        gone: dict[str, Gone] = {}
        for tid, event in sorted(unlisted.items()):
            arn = str(event.container_instance_arn)
            status = instances.get(arn, {}).get("status")
            if status in host_state.DEREGISTERED_STATUSES:
                gone[tid] = Gone(host_state.GONE_VERSION)
            elif failures.get(arn) == "MISSING" and self._may_be_forgotten(tid):
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

    def _may_be_forgotten(self, task_id: str) -> bool:
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
        record, _ = self._owned.records.get(task_id, (None, 0))
        return record_older_than(record, self._ctx.now() - MISSING_PROOF_AGE)
