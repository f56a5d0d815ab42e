"""The world the registrar figures run in: the Consul double, a fast ECS/SSM and the handler.

AWS is tests/lambda/ecs_fake.FakeEcs (in memory, counts every call) behind the registrar's
*real* caches (aws.EcsTaskDefinitions, aws.EcsSsmHosts), so a figure measures the production
code path and can say how many AWS calls it made. Consul is tests/consul_double.ConsulDouble
over real HTTP on 127.0.0.1, which counts every request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aws
import consul
import handler
import registrar
from ecs_fake import FakeEcs
from registrar_fixtures import CLUSTER_ARN, LambdaContext, sqs_event

from tests.consul_double import ConsulDouble

BATCH = 10  # the SQS event source's batch size (mesh_stack/registrar.py)
HOSTS = 50  # tasks are spread over this many ECS Anywhere hosts


def task_id(n: int) -> str:
    return f"{n:032x}"


@dataclass
class Mesh:
    """One cluster: ECS (fake), Consul (double) and the registrar's runtime wired to both."""

    consul: ConsulDouble
    ecs: FakeEcs
    rt: registrar.Runtime
    instances: list[str]

    def running(self, n: int, *, version: int = 3) -> dict[str, Any]:
        """ECS runs task `n` (a bridge-mode web task on host n % HOSTS): its RUNNING event."""
        return self.ecs.put_task(
            task_id(n),
            version=version,
            container_instance_arn=self.instances[n % len(self.instances)],
            host_ports={"web": {8080: 32768 + n % 20000}, "envoy": {20000: 52768 + n % 10000}},
        )

    def stopped(self, n: int, *, version: int = 5) -> dict[str, Any]:
        return self.ecs.put_task(
            task_id(n),
            version=version,
            last_status="STOPPED",
            desired_status="STOPPED",
            container_instance_arn=self.instances[n % len(self.instances)],
        )

    def warm(self) -> None:
        """Fill the host and task definition caches, as a container that has run for a while."""
        for instance in self.instances:
            self.rt.hosts.get(CLUSTER_ARN, instance)
        self.rt.task_definitions.get(self.running(0)["detail"]["taskDefinitionArn"])

    def aws_calls(self) -> int:
        return sum(self.ecs.calls.values())

    def task_nodes(self) -> int:
        """Task nodes in the catalog that carry a sidecar (a registration is complete)."""
        return sum(
            1
            for s in self.consul.services()
            if s["ServiceKind"] == "connect-proxy" and s["Node"].startswith("ecs-task-")
        )


def batches(events: Sequence[Mapping[str, Any]], size: int = BATCH) -> list[dict[str, Any]]:
    """SQS event source batches of `size` messages, with distinct message ids."""
    return [
        sqs_event([json.dumps(e) for e in events[i : i + size]], prefix=f"m{i}")
        for i in range(0, len(events), size)
    ]


def invoke(batch: Mapping[str, Any]) -> list[str]:
    """One handler invocation; the ids of the messages SQS would redeliver."""
    response = handler.handler(batch, LambdaContext())
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def deliver(events: Iterable[Mapping[str, Any]]) -> None:
    """Run events through the handler in SQS batches; a failed message is a bench bug."""
    for batch in batches(list(events)):
        failed = invoke(batch)
        if failed:
            raise RuntimeError(f"the handler failed messages {failed}: see its log")


def runtime(consul_url: str, ecs: FakeEcs) -> registrar.Runtime:
    """The registrar's runtime (production settings) on `consul_url`, AWS answered by `ecs`."""
    settings = registrar.Settings(consul_addr=consul_url, cluster_arn=CLUSTER_ARN)
    return registrar.Runtime(
        settings,
        task_definitions=aws.EcsTaskDefinitions(lambda: ecs),
        hosts=aws.EcsSsmHosts(lambda: ecs, lambda: ecs, settings.host_ttl_s),
        token=consul.StaticToken(None),
    )


@contextmanager
def mesh(*, hosts: int = HOSTS) -> Iterator[Mesh]:
    """A started double and the container's runtime pointed at it (production settings)."""
    ecs = FakeEcs()
    instances = ecs.add_instances(hosts)
    with ConsulDouble() as double:
        rt = runtime(double.url, ecs)
        registrar.set_runtime(rt)
        try:
            yield Mesh(double, ecs, rt, instances)
        finally:
            registrar.set_runtime(None)
        if double.internal_errors:
            raise RuntimeError(f"the Consul double failed: {double.internal_errors}")
