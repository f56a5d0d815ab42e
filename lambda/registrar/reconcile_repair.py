"""Phase "repair" of the reconcile pass: write what the diff found missing or different.

`apply.apply(repair=True)` with the version DescribeTasks reports: the event path's
cas-protected txn, so a tombstone or a newer record always wins and reconcile can never
resurrect a stopped task, except a tombstone a pass wrote on MISSING (`reason: missing`),
overwritten when the task is listed and described RUNNING again (DriftResurrected).
"""

from __future__ import annotations

import logs
from model import TaskEvent
from reconcile_consul import Owned
from reconcile_context import PassContext
from reconcile_diff import Wanted


def repair(ctx: PassContext, drift: list[Wanted], owned: Owned) -> None:
    """Missing and changed entries, in order, until the budget runs out (the rest: deferred)."""
    for n, item in enumerate(drift):
        if ctx.out_of_time():
            ctx.report.deferred += len(drift) - n
            logs.warning("time budget spent; the next pass continues", left=len(drift) - n)
            return
        present = item.registration.node in owned.nodes
        record, _ = owned.records.get(item.event.task_id, (None, 0))
        result = ctx.apply(item.event.task_arn, item.registration, item.event.version)
        if result is None:
            continue
        if record is not None and record.inferred_from_missing and result.kind == "registered":
            _resurrected(ctx, item.event)
        elif result.kind in ("registered", "repaired"):
            if present:
                ctx.report.changed += 1
            else:
                ctx.report.missing += 1


def _resurrected(ctx: PassContext, event: TaskEvent) -> None:
    """A task tombstoned on MISSING is listed and described RUNNING again: it was registered
    over that tombstone (decide.decide). MISSING was wrong for it (the age rule's one blind
    spot, an ECS fault): counted and alarmed (DriftResurrected)."""
    ctx.report.resurrected += 1
    with logs.task_context(event.task_arn):
        logs.warning(
            "a task removed on MISSING is running: registered again",
            version=event.version,
            container_instance_arn=event.container_instance_arn,
        )
