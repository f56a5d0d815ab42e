"""The world the registrar figures run in: the Consul double, a fast ECS/SSM and the handler.

AWS is tests/lambda/ecs_fake.FakeEcs (in memory, counts every call) behind the registrar's
*real* caches (aws.EcsTaskDefinitions, aws.EcsSsmHosts), so a figure measures the production
code path and can say how many AWS calls it made. Consul is tests/consul_double.ConsulDouble
over real HTTP on 127.0.0.1, which counts every request.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aws
import catalog
import consul
import decide
import handler
import kv_layout
import registrar
from ecs_fake import FakeEcs
from model import RUNNING, Host, StateRecord, task_event_from_detail
from registrar_fixtures import CLUSTER_ARN, LambdaContext, seed_settled_markers, sqs_event

from tests.consul_double import ConsulDouble

BATCH = 10  # the SQS event source's batch size (mesh_stack/registrar.py)
HOSTS = 50  # tasks are spread over this many ECS Anywhere hosts


# The deployment mode of the reconcile worlds (figures 6 and 9): ecs_fake's "api" family is a
# host-mode task definition, the default deployment mode, whose in-sync tasks the pass does not
# describe once verified (verification.py); "web" is bridge mode, described every pass.
HOST_MODE = "api"
BRIDGE_MODE = "web"


def task_id(n: int) -> str:
    """Task n's ID. ECS task IDs are random hex, so their first digit (the KV shard,
    migration.read) is uniform; `n` in hex, reversed, spreads sequential numbers the same way."""
    return f"{n:032x}"[::-1]


def host_ports(n: int, family: str) -> dict[str, dict[int, int]] | None:
    """Task n's dynamic host ports in bridge mode; host mode binds the container ports."""
    if family != BRIDGE_MODE:
        return None
    return {"web": {8080: 32768 + n % 20000}, "envoy": {20000: 52768 + n % 10000}}


@dataclass
class Mesh:
    """One cluster: ECS (fake), Consul (double) and the registrar's runtime wired to both."""

    consul: ConsulDouble
    ecs: FakeEcs
    rt: registrar.Runtime
    instances: list[str]

    def running(self, n: int, *, version: int = 3, family: str = BRIDGE_MODE) -> dict[str, Any]:
        """ECS runs task `n` (by default a bridge-mode web task on host n % HOSTS): its RUNNING
        event."""
        return self.ecs.put_task(
            task_id(n),
            version=version,
            family=family,
            container_instance_arn=self.instances[n % len(self.instances)],
            host_ports=host_ports(n, family),
        )

    def stopped(self, n: int, *, version: int = 5, family: str = BRIDGE_MODE) -> dict[str, Any]:
        return self.ecs.put_task(
            task_id(n),
            version=version,
            family=family,
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


def seed_registered(double: ConsulDouble, ecs: FakeEcs, *, verified: bool) -> None:
    """What the event path writes for every running task of `ecs`, applied to the double
    directly (the same txn ops from catalog.py, the same sidecar body, the same record), not
    through one handler invocation per task: at 10,000 tasks and more that is the setup's whole
    cost. `verified`: also the marker two clean passes at least verification.SETTLE apart write
    (verification.after_full_pass); otherwise only the migration marker, and the next pass is
    the first after a deploy, describing every task."""
    definitions = aws.EcsTaskDefinitions(lambda: ecs)
    now = datetime.now(UTC)
    with double.bulk_seeding():
        _seed_tasks(double, ecs, definitions, now)
    seed_settled_markers(double, verified=verified)


def _seed_tasks(
    double: ConsulDouble, ecs: FakeEcs, definitions: aws.EcsTaskDefinitions, now: datetime
) -> None:
    for tid, detail in ecs.tasks.items():
        event = task_event_from_detail(detail, event_id=tid, event_time=now)
        definition = definitions.get(event.task_definition_arn)
        app = decide.mesh_target(definition)
        assert not isinstance(app, decide.Skip)
        instance = ecs.instances[str(event.container_instance_arn)]
        host = Host(address=instance.address, instance_id=instance.instance_id, source="ssm")
        registration = decide.desired_registration(event, definition, app, host)
        body = catalog.sidecar_body(registration)
        record = StateRecord(event.version, RUNNING, registration.digest(), body, now.isoformat())
        key = kv_layout.task_key(CLUSTER_ARN, tid)
        double.seed_txn([catalog.kv_cas_op(key, record, 0), *catalog.register_ops(registration)])
        double.seed_register(dict(body))


def runtime(
    consul_url: str, ecs: FakeEcs, *, consul_timeout_s: float | None = None
) -> registrar.Runtime:
    """The registrar's runtime (production settings) on `consul_url`, AWS answered by `ecs`.
    `consul_timeout_s` replaces both the per-request timeout (CONSUL_TIMEOUT_SECONDS, 5 s) and
    the listings' (CONSUL_LIST_TIMEOUT_SECONDS, 30 s)."""
    settings = registrar.Settings(consul_addr=consul_url, cluster_arn=CLUSTER_ARN)
    if consul_timeout_s is not None:
        settings = dataclasses.replace(
            settings, consul_timeout_s=consul_timeout_s, consul_list_timeout_s=consul_timeout_s
        )
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
