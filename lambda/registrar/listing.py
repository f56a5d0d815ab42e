"""ECS's view of the cluster for one reconcile pass, read in batches the APIs allow.

- Running tasks: ListTasks (desiredStatus RUNNING, launchType EXTERNAL, 100 per page), then
  DescribeTasks (100 per call) of the listed tasks the pass cannot vouch for from Consul alone
  (reconcile_ecs.py). The listing is complete only when every page was read and every task the
  pass described was described: the pass deletes nothing otherwise.
- Confirmation: DescribeTasks of the task IDs the catalog has and the listing lacks, to tell a
  task that is really gone (stopped, or MISSING: ECS forgot it) from one the listing missed.
- Hosts: DescribeContainerInstances (100 per call) and SSM DescribeInstanceInformation (50 per
  call) for every container instance that runs a task. The answers are served to the registrar's
  own `aws.EcsSsmHosts`, so the address rules (attribute override, SSM IP, their validation) are
  exactly the event path's, at 1/100th of the calls, and fresh on every pass (a moved host is
  seen at the next pass, not when a cache expires).

Every call goes through `aws.aws_call` (error mapping, and no request started that could
outlast the invocation) and `retry.call` (backoff within the invocation's budget); a call that
still fails marks what it covered as unknown. DescribeInstanceInformation fails whole for one ID
SSM will not describe: the batch is halved until that ID stands alone (`_describe_managed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aws
import logs
import retry

T = TypeVar("T")

LIST_PAGE = 100  # ListTasks maxResults
DESCRIBE_BATCH = 100  # DescribeTasks / DescribeContainerInstances: at most 100 per call
SSM_BATCH = 50  # DescribeInstanceInformation MaxResults is 5..50

Json = Mapping[str, Any]


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Described:
    """DescribeTasks answers: tasks by ID, `failures` (ID -> reason), `unknown` (call failed)."""

    tasks: dict[str, Json] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Listed:
    """ListTasks' answer: task IDs in listing order; `problems` say why it is incomplete."""

    ids: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class RunningTasks:
    """The cluster's running EXTERNAL tasks; `problems` say why the listing is incomplete."""

    tasks: dict[str, Json]  # task ID -> DescribeTasks task
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Hosts:
    """Addresses of the container instances (the registrar's HostSource) and their states."""

    source: aws.HostSource
    instances: dict[str, Json]  # container instance ARN -> DescribeContainerInstances item


def task_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


class _PrefetchedEcs:
    """`describe_container_instances` for one ARN, answered from a batch read beforehand."""

    def __init__(self, instances: Mapping[str, Json], failures: Mapping[str, str]) -> None:
        self._instances = instances
        self._failures = failures

    def describe_container_instances(
        self, *, cluster: str, containerInstances: Sequence[str]
    ) -> Json:
        found = [self._instances[a] for a in containerInstances if a in self._instances]
        failures = [
            {"arn": a, "reason": self._failures.get(a, "not described in this pass")}
            for a in containerInstances
            if a not in self._instances
        ]
        return {"containerInstances": found, "failures": failures}


class _PrefetchedSsm:
    """`describe_instance_information` by instance IDs, answered from a batch read beforehand:
    an ID the batch could not read fails with the error that batch read got for it."""

    def __init__(self, information: Mapping[str, Json], errors: Mapping[str, Exception]) -> None:
        self._information = information
        self._errors = errors

    def describe_instance_information(self, *, Filters: Sequence[Json], **_: Any) -> Json:
        ids: list[str] = next((f["Values"] for f in Filters if f.get("Key") == "InstanceIds"), [])
        for i in ids:
            if i in self._errors:
                raise self._errors[i]
        return {
            "InstanceInformationList": [self._information[i] for i in ids if i in self._information]
        }


class EcsReader:
    """Batched, budgeted reads of one cluster."""

    def __init__(
        self,
        *,
        cluster_arn: str,
        ecs: Callable[[], Any],
        ssm: Callable[[], Any],
        policy: retry.RetryPolicy,
        budget: retry.Budget,
    ) -> None:
        self.cluster_arn = cluster_arn
        self._ecs = ecs
        self._ssm = ssm
        self._policy = policy
        self._budget = budget

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return retry.call(
            lambda: aws.aws_call(what, fn), what=what, policy=self._policy, budget=self._budget
        )

    def _list_page(self, kwargs: Mapping[str, Any]) -> Json:
        return self._call("ListTasks", lambda: self._ecs().list_tasks(**kwargs))

    def _describe_tasks(self, task_ids: Sequence[str]) -> Json:
        return self._call(
            "DescribeTasks",
            lambda: self._ecs().describe_tasks(cluster=self.cluster_arn, tasks=list(task_ids)),
        )

    def _describe_instances(self, arns: Sequence[str]) -> Json:
        return self._call(
            "DescribeContainerInstances",
            lambda: self._ecs().describe_container_instances(
                cluster=self.cluster_arn, containerInstances=list(arns)
            ),
        )

    def _instance_page(self, kwargs: Mapping[str, Any]) -> Json:
        return self._call(
            "DescribeInstanceInformation",
            lambda: self._ssm().describe_instance_information(**kwargs),
        )

    # -- tasks -------------------------------------------------------------------------------

    def list_tasks(self) -> Listed:
        """The IDs of every RUNNING-desired EXTERNAL task (ListTasks only, 100 per page); stops
        at the first page it cannot read."""
        ids: list[str] = []
        problems: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "cluster": self.cluster_arn,
                "desiredStatus": "RUNNING",
                "launchType": "EXTERNAL",
                "maxResults": LIST_PAGE,
            }
            if token:
                kwargs["nextToken"] = token
            try:
                page = self._list_page(kwargs)
            except (retry.RetryableError, aws.AwsLookupError) as err:
                problems.append(f"ListTasks failed after {len(ids)} tasks: {err}")
                break
            ids.extend(task_id_of(str(a)) for a in page.get("taskArns") or [])
            token = page.get("nextToken")
            if not token:
                break
        return Listed(ids=tuple(dict.fromkeys(ids)), problems=tuple(problems))

    def running_tasks(self, task_ids: Iterable[str]) -> RunningTasks:
        """DescribeTasks of listed tasks; every task not described is a problem."""
        described = self.describe_tasks(task_ids)
        problems = tuple(
            f"DescribeTasks {tid}: {reason}"
            for tid, reason in {**described.failures, **described.unknown}.items()
        )
        return RunningTasks(tasks=described.tasks, problems=problems)

    def describe_tasks(self, task_ids: Iterable[str]) -> Described:
        """DescribeTasks in batches; a batch whose call fails is `unknown`, never `failures`."""
        result = Described()
        ids = sorted(set(task_ids))
        for batch in chunks(ids, DESCRIBE_BATCH):
            try:
                response = self._describe_tasks(batch)
            except (retry.RetryableError, aws.AwsLookupError) as err:
                result.unknown.update({tid: str(err) for tid in batch})
                continue
            for task in response.get("tasks") or []:
                result.tasks[task_id_of(str(task["taskArn"]))] = task
            for failure in response.get("failures") or []:
                tid = task_id_of(str(failure.get("arn", "")))
                result.failures[tid] = str(failure.get("reason", "unknown"))
        return result

    # -- hosts -------------------------------------------------------------------------------

    def hosts(self, container_instance_arns: Iterable[str], ttl_s: float = 3600.0) -> Hosts:
        """Every container instance in 1/100th of the calls, served as a HostSource."""
        instances, failures = self.container_instances(container_instance_arns)
        information, errors = self._instance_information(
            str(i["ec2InstanceId"])
            for i in instances.values()
            if i.get("ec2InstanceId") and not _has_override(i)
        )
        ecs = _PrefetchedEcs(instances, failures)
        ssm = _PrefetchedSsm(information, errors)
        return Hosts(
            source=aws.EcsSsmHosts(lambda: ecs, lambda: ssm, ttl_s),
            instances=instances,
        )

    def container_instances(
        self, container_instance_arns: Iterable[str]
    ) -> tuple[dict[str, Json], dict[str, str]]:
        """DescribeContainerInstances, 100 per call: instances by ARN, and why others are not."""
        instances: dict[str, Json] = {}
        failures: dict[str, str] = {}
        for batch in chunks(sorted(set(container_instance_arns)), DESCRIBE_BATCH):
            try:
                response = self._describe_instances(batch)
            except (retry.RetryableError, aws.AwsLookupError) as err:
                failures.update({a: str(err) for a in batch})
                continue
            for instance in response.get("containerInstances") or []:
                instances[str(instance["containerInstanceArn"])] = instance
            for failure in response.get("failures") or []:
                failures[str(failure.get("arn", ""))] = str(failure.get("reason", "unknown"))
        return instances, failures

    def _instance_information(
        self, instance_ids: Iterable[str]
    ) -> tuple[dict[str, Json], dict[str, Exception]]:
        """InstanceInformation by managed instance ID, and the error of each ID not read."""
        found: dict[str, Json] = {}
        errors: dict[str, Exception] = {}
        for batch in chunks(sorted(set(instance_ids)), SSM_BATCH):
            self._describe_managed(list(batch), found, errors)
        return found, errors

    def _describe_managed(
        self, ids: list[str], found: dict[str, Json], errors: dict[str, Exception]
    ) -> None:
        """One filtered listing of `ids`. SSM fails the whole call for one ID it will not
        describe (aws.SSM_BAD_ID_CODES): the batch is halved until that ID stands alone, so one
        deregistered host costs ~2 log2(50) calls and never the addresses of the others."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Filters": [{"Key": "InstanceIds", "Values": ids}],
                "MaxResults": SSM_BATCH,
            }
            if token:
                kwargs["NextToken"] = token
            try:
                response = self._instance_page(kwargs)
            except aws.AwsLookupError as err:
                if err.code in aws.SSM_BAD_ID_CODES and len(ids) > 1:
                    half = len(ids) // 2
                    self._describe_managed(ids[:half], found, errors)
                    self._describe_managed(ids[half:], found, errors)
                    return
                if err.code in aws.SSM_BAD_ID_CODES:
                    logs.warning("SSM will not describe this managed instance", instance_id=ids[0])
                errors.update({i: err for i in ids if i not in found})
                return
            except retry.RetryableError as err:
                errors.update({i: err for i in ids if i not in found})
                return
            for info in response.get("InstanceInformationList") or []:
                found[str(info.get("InstanceId"))] = info
            token = response.get("NextToken")
            if not token:
                return


def _has_override(instance: Json) -> bool:
    return any(a.get("name") == aws.ADDRESS_ATTRIBUTE for a in instance.get("attributes") or [])
