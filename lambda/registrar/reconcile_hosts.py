"""Phase "hosts" of the reconcile pass: container instance state the events may have missed.

Hosts whose agent state (DescribeContainerInstances) disagrees with their record or markers go
through `host_state.apply_instance_state`, the path of the container instance events. Hosts
whose agent has been disconnected longer than HOST_DISCONNECT_GRACE_MINUTES are described once
more, at the time of marking, and marked only if still disconnected
(`host_state.mark_after_grace`): the event path never marks, so a routine reconnect within the
grace is never visible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import host_state
import listing
import logs
from model import MalformedEvent
from reconcile_consul import Owned
from reconcile_context import PassContext


class HostRepair:
    def __init__(self, ctx: PassContext, owned: Owned) -> None:
        self._ctx = ctx
        self._owned = owned

    def run(self, hosts: listing.Hosts | None, on_instance: Mapping[str, set[str]]) -> None:
        """Hosts whose agent state or markers disagree with their record (lost events), then
        the disconnections that outlasted the grace, confirmed by a fresh describe."""
        if hosts is None:
            return
        ctx = self._ctx
        due: list[str] = []
        now = ctx.now()
        for arn, nodes in sorted(on_instance.items()):
            instance = hosts.instances.get(arn)
            state = None if instance is None else self._instance_state(arn, instance)
            if state is None or ctx.out_of_time():
                continue
            record = self._host_record(arn)
            if not self._host_in_sync(state, record, nodes):
                self._outcome(arn, state)
            if record is None or state.version > record.version:
                record = host_state.next_record(record, state, now)
            if host_state.due_for_marking(record, now, ctx.settings.host_disconnect_grace):
                due.append(arn)
        if due and not ctx.out_of_time():
            self._mark_after_grace(due)

    def _mark_after_grace(self, due: list[str]) -> None:
        """Mark the hosts still disconnected now (DescribeContainerInstances read here, at the
        time of marking: a reconnect since the pass began leaves its host alone)."""
        fresh, failures = self._ctx.ecs.container_instances(due)
        for arn in due:
            state = self._instance_state(arn, fresh[arn]) if arn in fresh else None
            if state is None:
                logs.warning(
                    "disconnection not confirmed; not marked",
                    container_instance_arn=arn,
                    reason=failures.get(arn),
                )
            elif state.agent_connected or state.deregistered:
                self._outcome(arn, state)  # it reconnected or left: its event may lag
            else:
                self._outcome(arn, state, mark=True)

    def _instance_state(
        self, arn: str, instance: Mapping[str, Any]
    ) -> host_state.InstanceState | None:
        try:
            return host_state.instance_state({**instance, "clusterArn": self._ctx.cluster_arn})
        except MalformedEvent as err:
            logs.warning("container instance unusable", container_instance_arn=arn, error=str(err))
            return None

    def _host_record(self, arn: str) -> host_state.HostRecord | None:
        pair = self._owned.kv.hosts.get(host_state.instance_id(arn))
        return None if pair is None else host_state.HostRecord.decode(pair.value)

    def _host_in_sync(
        self,
        state: host_state.InstanceState,
        record: host_state.HostRecord | None,
        nodes: set[str],
    ) -> bool:
        """Nothing to write: the record is as new as ECS's answer and the markers match it."""
        owned = self._owned
        if state.deregistered:
            return not nodes & set(owned.nodes)
        if record is None:
            return state.agent_connected and not owned.markers & nodes
        if state.version > record.version:
            return False
        if state.version < record.version and host_state.interruption(record, state):
            return False  # a lagging answer that still proves a reconnect hid in a gap
        return owned.markers & nodes == (nodes if record.drained else set())

    def _outcome(self, arn: str, state: host_state.InstanceState, *, mark: bool = False) -> None:
        """Apply ECS's `state` to the host (or, with `mark`, its disconnection verdict)."""
        ctx = self._ctx
        try:
            if mark:
                grace = ctx.settings.host_disconnect_grace
                outcome = host_state.mark_after_grace(ctx.consul, state, ctx.now(), grace)
            else:
                outcome = host_state.apply_instance_state(ctx.consul, state, ctx.now())
        except Exception as err:
            ctx.report.failed += 1
            logs.error("host state repair failed", container_instance_arn=arn, error=str(err))
            return
        logs.info(
            f"reconcile host {outcome.kind}", container_instance_arn=arn, reason=outcome.reason
        )
        if mark and outcome.kind == "marked":
            ctx.report.marked += 1
        elif outcome.kind in ("marked", "unmarked", "deregistered") and outcome.tasks:
            ctx.report.hosts += 1
