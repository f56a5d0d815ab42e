"""Phase "read ECS" of the reconcile pass: the running mesh tasks and the registration each
should have, computed by the event path's own functions (decide.py) from ECS's answers.

ListTasks + DescribeTasks (listing.py, 100 tasks per call); task definitions through the
registrar's cache (immutable per ARN); container instances and SSM addresses in batches, fresh
every pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aws
import decide
import host_state
import identity
import listing
import logs
import retry
from model import (
    RUNNING,
    ContainerDefinition,
    Host,
    InvalidTaskDefinition,
    MalformedEvent,
    TaskDefinition,
    TaskEvent,
)
from reconcile_consul import Owned
from reconcile_context import PassContext, task_arn_for
from reconcile_diff import Wanted

Candidate = tuple[TaskEvent, TaskDefinition, ContainerDefinition]


@dataclass
class EcsView:
    """What ECS says of the cluster, as this pass reads it."""

    listed: set[str]  # task IDs of every listed task
    wanted: list[Wanted] = field(default_factory=list)  # running mesh tasks, registrable
    stopping: list[TaskEvent] = field(default_factory=list)  # listed, but ECS is stopping them
    hosts: listing.Hosts | None = None  # None when no mesh task runs
    # container instance ARN -> task nodes of the running mesh tasks ECS places on it
    on_instance: dict[str, set[str]] = field(default_factory=dict)
    in_sync_unread: int = 0  # tasks found in sync without DescribeTasks (verification.py)


@dataclass(frozen=True)
class Vouched:
    """What Consul says of a listed task: its host, its node and the node's address."""

    instance: str
    node: str
    address: str


def vouched_for(listed: Sequence[str], owned: Owned, cluster_arn: str) -> dict[str, Vouched]:
    """Listed host-mode tasks whose running record and node say they are registered, with
    the host their record names (the sidecar's service meta). Bridge-mode tasks are always
    described: a container restarted in place gets a new host port (verification.py)."""
    vouched: dict[str, Vouched] = {}
    for tid in listed:
        record, _ = owned.records.get(tid, (None, 0))
        if record is None or record.status != RUNNING or not record.digest:
            continue
        if tid not in owned.kv.host_mode:
            continue
        instance = owned.kv.instances.get(tid)
        node_name = identity.node_name(task_arn_for(cluster_arn, tid))
        node = owned.nodes.get(node_name)
        if isinstance(instance, str) and node is not None:
            vouched[tid] = Vouched(instance, node_name, str(node.get("Address")))
    return vouched


class EcsRead:
    """Reads ECS for one pass; counts what it cannot register in the pass's report."""

    def __init__(self, ctx: PassContext, task_definitions: aws.TaskDefinitionSource) -> None:
        self._ctx = ctx
        self._task_definitions = task_definitions
        self._refused_hosts: set[str] = set()
        self._doubted_hosts: set[str] = set()

    def read(self, listed: listing.Listed, owned: Owned, trust: bool) -> EcsView:
        """`listed`: ListTasks' answer. `trust` (verification.py): skip DescribeTasks for tasks
        Consul vouches for."""
        ctx = self._ctx
        vouched = vouched_for(listed.ids, owned, ctx.cluster_arn) if trust else {}
        running = ctx.ecs.running_tasks(t for t in listed.ids if t not in vouched)
        problems = [*listed.problems, *running.problems]
        view = EcsView(listed=set(listed.ids))
        candidates = self._candidates(running.tasks, view)
        instances = {e.container_instance_arn for e, _, _ in candidates} | {
            v.instance for v in vouched.values()
        }
        if instances:
            view.hosts = ctx.ecs.hosts(sorted(a for a in instances if a))
            unconfirmed = self._confirm(vouched, view.hosts, view)
            if unconfirmed:
                more = ctx.ecs.running_tasks(unconfirmed)
                problems.extend(more.problems)
                extra = self._candidates(more.tasks, view)
                if any(e.container_instance_arn not in instances for e, _, _ in extra):
                    instances |= {e.container_instance_arn for e, _, _ in extra}
                    view.hosts = ctx.ecs.hosts(sorted(a for a in instances if a))
                candidates += extra
            view.wanted = self._registrations(candidates, view)
        ctx.report.running = len(view.wanted) + view.in_sync_unread
        if problems:
            ctx.report.complete = False
            ctx.report.problems.extend(problems)
            logs.warning(
                "the ECS listing is incomplete: this pass deletes nothing",
                problems=problems[:10],
            )
        return view

    def _confirm(
        self, vouched: Mapping[str, Vouched], hosts: listing.Hosts, view: EcsView
    ) -> list[str]:
        """Count the vouched tasks whose host is still where their node says; the others
        (host moved, refused, deregistered or unreadable) are returned to be described."""
        unconfirmed: list[str] = []
        for tid, v in sorted(vouched.items()):
            status = hosts.instances.get(v.instance, {}).get("status")
            try:
                host = hosts.source.get(self._ctx.cluster_arn, v.instance)
            except (retry.RetryableError, aws.AwsLookupError):
                host = None
            if (
                host is None
                or status in host_state.DEREGISTERED_STATUSES
                or host.address != v.address
            ):
                unconfirmed.append(tid)
                continue
            self._doubt(host, v.instance)
            view.on_instance.setdefault(v.instance, set()).add(v.node)
            view.in_sync_unread += 1
        return unconfirmed

    def _candidates(self, tasks: Mapping[str, Mapping[str, Any]], view: EcsView) -> list[Candidate]:
        """The running tasks of opted-in, valid task definitions; `view.stopping` the others
        ECS is stopping."""
        candidates: list[Candidate] = []
        for task_id in sorted(tasks):
            event = self._ctx.event(tasks[task_id], task_id)
            if event is None:
                continue
            phase = decide.triage(event, self._ctx.cluster_arn)
            if phase == "stop":
                view.stopping.append(event)
            if phase != "run":
                continue
            try:
                definition = self._definition(event.task_definition_arn)
            except (retry.RetryableError, aws.AwsLookupError) as err:
                self._ctx.fail(event.task_arn, "task definition lookup failed", err)
                continue
            app = decide.mesh_target(definition)
            if isinstance(app, decide.Skip):
                self._ctx.report.invalid += app.kind == "invalid"
                continue
            candidates.append((event, definition, app))
        return candidates

    def _registrations(self, candidates: list[Candidate], view: EcsView) -> list[Wanted]:
        assert view.hosts is not None
        hosts = view.hosts
        wanted = []
        for event, definition, app in candidates:
            instance = event.container_instance_arn
            if instance is not None:
                view.on_instance.setdefault(instance, set()).add(identity.node_name(event.task_arn))
                status = hosts.instances.get(instance, {}).get("status")
                if status in host_state.DEREGISTERED_STATUSES:
                    continue  # its tasks go with it (reconcile_hosts.py), never registered again
            try:
                if instance is None:
                    raise MalformedEvent("containerInstanceArn is missing for a RUNNING task")
                host = hosts.source.get(self._ctx.cluster_arn, instance)
                self._doubt(host, instance)
                registration = decide.desired_registration(event, definition, app, host)
            except (InvalidTaskDefinition, MalformedEvent) as err:
                self._ctx.report.invalid += 1
                logs.warning("task cannot be registered", task_arn=event.task_arn, error=str(err))
                continue
            except aws.UnusableHostAddress as err:
                self._refuse(err)
                continue
            except (retry.RetryableError, aws.AwsLookupError) as err:
                self._ctx.fail(event.task_arn, "host address lookup failed", err)
                continue
            wanted.append(Wanted(event, registration))
        return wanted

    def _doubt(self, host: Host, instance: str) -> None:
        if host.doubt and instance not in self._doubted_hosts:
            self._doubted_hosts.add(instance)
            self._ctx.report.doubtful += 1

    def _refuse(self, err: aws.UnusableHostAddress) -> None:
        """A task kept out of the catalog by its host's address; one log line per host."""
        self._ctx.report.refused += 1
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
            policy=self._ctx.policy,
            budget=self._ctx.budget,
        )
