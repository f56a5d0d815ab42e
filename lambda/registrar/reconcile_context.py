"""What every phase of one reconcile pass shares: its clients, clock, budget and report, and
the two writes every phase makes the same way (a task through `apply`, a failure counted)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import apply
import identity
import kv_layout
import listing
import logs
import retry
from inventory import Inventory
from model import MalformedEvent, Registration, TaskEvent, task_event_from_detail
from reconcile_settings import PassReport, ReconcileSettings


@dataclass
class PassContext:
    """One pass over one cluster, within `budget`."""

    consul: Inventory
    ecs: listing.EcsReader
    cluster_arn: str
    settings: ReconcileSettings
    budget: retry.Budget
    policy: retry.RetryPolicy
    now: Callable[[], datetime]
    report: PassReport

    def out_of_time(self) -> bool:
        return self.budget.exhausted

    def fail(self, task_arn: str, what: str, err: Exception) -> None:
        self.report.failed += 1
        with logs.task_context(task_arn):
            logs.error(what, error=f"{type(err).__name__}: {err}")

    def event(self, task: Mapping[str, Any], task_id: str) -> TaskEvent | None:
        """A DescribeTasks task as the event path's TaskEvent; None (logged) when unusable."""
        try:
            return task_event_from_detail(
                task, event_id=f"reconcile:{task_id}", event_time=self.now(), path=task_id
            )
        except MalformedEvent as err:
            logs.warning(
                "DescribeTasks answer unusable; task skipped", task_id=task_id, error=str(err)
            )
            return None

    def apply(
        self,
        task_arn: str,
        desired: Registration | None,
        version: int,
        reason: str | None = None,
    ) -> apply.Result | None:
        """The event path's write, in repair mode; None when it failed (logged, counted)."""
        with logs.task_context(task_arn):
            before = self._unanswered()
            try:
                result = apply.apply(
                    self.consul,
                    key=kv_layout.task_key(self.cluster_arn, identity.task_id(task_arn)),
                    node=identity.node_name(task_arn),
                    desired=desired,
                    version=version,
                    event_time=self.now().isoformat(),
                    repair=True,
                    reason=reason,
                )
            except Exception as err:
                self.fail(task_arn, "reconcile could not repair the task", err)
                return None
            logs.info(f"reconcile {result.kind}", reason=result.reason, version=version)
            sent = self._unanswered() - before
            if sent:
                # Its write may land after this pass, e.g. over a stop: the next pass checks.
                self.report.unanswered += sent
                logs.warning(
                    "a repair's sidecar write got no answer and may still land; the next pass "
                    "checks the task",
                    unanswered=sent,
                )
            return result

    def _unanswered(self) -> int:
        """consul.RetryingConsul.unanswered_registers of this pass's client (0 for others)."""
        return int(getattr(self.consul, "unanswered_registers", 0))


def task_arn_for(cluster_arn: str, task_id: str) -> str:
    """The task ARN of `task_id` in `cluster_arn` (what identity.node_name needs)."""
    prefix, name = cluster_arn.rsplit(":cluster/", 1)
    return f"{prefix}:task/{name}/{task_id}"
