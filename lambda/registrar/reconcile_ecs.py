"""Phase "read ECS" of the reconcile pass: the running mesh tasks and the registration each
should have, computed by the event path's own functions (decide.py) from ECS's answers.

ListTasks + DescribeTasks (listing.py, 100 tasks per call); task definitions through the
registrar's cache (immutable per ARN); container instances and SSM addresses in batches, fresh
every pass.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    ContainerDefinition,
    InvalidTaskDefinition,
    MalformedEvent,
    TaskDefinition,
    TaskEvent,
)
from reconcile_context import PassContext
from reconcile_diff import Wanted

Candidate = tuple[TaskEvent, TaskDefinition, ContainerDefinition]


@dataclass
class EcsView:
    """What ECS says of the cluster, as this pass reads it."""

    listed: set[str]  # task IDs of every listed task
    complete: bool  # every page read and every task described
    wanted: list[Wanted] = field(default_factory=list)  # running mesh tasks, registrable
    stopping: list[TaskEvent] = field(default_factory=list)  # listed, but ECS is stopping them
    hosts: listing.Hosts | None = None  # None when no mesh task runs
    # container instance ARN -> task nodes of the running mesh tasks ECS places on it
    on_instance: dict[str, set[str]] = field(default_factory=dict)


class EcsRead:
    """Reads ECS for one pass; counts what it cannot register in the pass's report."""

    def __init__(self, ctx: PassContext, task_definitions: aws.TaskDefinitionSource) -> None:
        self._ctx = ctx
        self._task_definitions = task_definitions
        self._refused_hosts: set[str] = set()
        self._doubted_hosts: set[str] = set()

    def read(self) -> EcsView:
        running = self._ctx.ecs.running_tasks()
        if not running.complete:
            self._ctx.report.complete = False
            self._ctx.report.problems.extend(running.problems)
            logs.warning(
                "the ECS listing is incomplete: this pass deletes nothing",
                problems=list(running.problems[:10]),
            )
        view = EcsView(listed=set(running.tasks), complete=running.complete)
        candidates = self._candidates(running.tasks, view)
        if candidates:
            view.hosts = self._ctx.ecs.hosts(
                e.container_instance_arn for e, _, _ in candidates if e.container_instance_arn
            )
            view.wanted = self._registrations(candidates, view)
            self._ctx.report.running = len(view.wanted)
        return view

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
                if host.doubt and instance not in self._doubted_hosts:
                    self._doubted_hosts.add(instance)
                    self._ctx.report.doubtful += 1
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
