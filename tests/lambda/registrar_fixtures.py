"""Builders shared by the registrar tests: events, SQS batches, task definitions, AWS worlds.

Events are built from the JSON fixtures in tests/events/ (real ECS Task State Change shapes)
with the few fields a test cares about overridden. Two AWS worlds:
- `fake_runtime`: in-memory task definitions and hosts behind the registrar's Protocols (fast;
  property tests run thousands of events through it);
- `moto_world`: moto's ECS and Secrets Manager, with SSM DescribeInstanceInformation answered
  by `FakeSsm` because moto 5.2.5 does not implement that call.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aws
import consul
import recheck
import registrar
import retry
from model import Host, TaskDefinition, task_definition_from_api

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"

REGION = "us-east-1"
ACCOUNT = "123456789012"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/mesh"
OTHER_CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/other"
INSTANCE_ARN = (
    f"arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/mesh/5d7e3c2a1b0f4e6d8c9a7b6e5d4c3b2a"
)
HOST_IP = "10.20.30.40"
WEB_TD = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/web:1"
API_TD = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/api:1"
PLAIN_TD = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/plain:1"
VPC_TD = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/vpc:1"


def task_arn(task_id: str, cluster: str = "mesh") -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{cluster}/{task_id}"


# --------------------------------------------------------------------------------------------
# Task definitions (DescribeTaskDefinition shapes)

WEB_LABELS = {
    "consul-mesh.enabled": "true",
    "consul-mesh.service": "web",
    "consul-mesh.tags": "v1,blue",
    "consul-mesh.upstreams": "backend:9001,db:9002",
    "consul-mesh.health-check-path": "/healthz",
}
API_LABELS = {
    "consul-mesh.enabled": "true",
    "consul-mesh.service": "api",
    "consul-mesh.ports": "9090,9091",
    "consul-mesh.upstreams": "web:9100",
    "consul-mesh.proxy-port": "21000",
}


def _container(
    name: str, ports: Iterable[int], labels: Mapping[str, str] | None = None, host: bool = False
) -> dict[str, Any]:
    mappings = [
        {"containerPort": p, "hostPort": p if host else 0, "protocol": "tcp"} for p in ports
    ]
    spec: dict[str, Any] = {
        "name": name,
        "image": f"registry.example/{name}:1",
        "essential": True,
        "memory": 128,
        "portMappings": mappings,
    }
    if labels:
        spec["dockerLabels"] = dict(labels)
    return spec


TASK_DEFINITIONS: dict[str, dict[str, Any]] = {
    "web": {
        "family": "web",
        "networkMode": "bridge",
        "requiresCompatibilities": ["EXTERNAL"],
        "containerDefinitions": [
            _container("web", [8080], WEB_LABELS),
            _container("envoy", [20000]),
            {**_container("envoy-init", []), "essential": False},
        ],
    },
    "api": {
        "family": "api",
        "networkMode": "host",
        "requiresCompatibilities": ["EXTERNAL"],
        "containerDefinitions": [
            _container("api", [9090, 9091, 9999], API_LABELS, host=True),
            _container("envoy", [21000], host=True),
        ],
    },
    "plain": {
        "family": "plain",
        "networkMode": "bridge",
        "requiresCompatibilities": ["EXTERNAL"],
        "containerDefinitions": [_container("plain", [80])],
    },
    "vpc": {
        "family": "vpc",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["EC2"],
        "containerDefinitions": [_container("vpc", [80], {"consul-mesh.enabled": "true"})],
    },
}


def task_definition(family: str, revision: int = 1) -> TaskDefinition:
    spec = TASK_DEFINITIONS[family]
    arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{family}:{revision}"
    return task_definition_from_api({**spec, "taskDefinitionArn": arn})


# --------------------------------------------------------------------------------------------
# Events and SQS batches


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def task_event(
    template: str = "task_running_bridge.json",
    *,
    task_id: str | None = None,
    version: int | None = None,
    last_status: str | None = None,
    desired_status: str | None = None,
    cluster_arn: str | None = None,
    container_instance_arn: str | None = None,
    task_definition_arn: str | None = None,
    launch_type: str | None = None,
    host_ports: Mapping[str, Mapping[int, int]] | None = None,
) -> dict[str, Any]:
    """A fixture event with some fields replaced.

    host_ports: {container name: {container port: host port}} replaces networkBindings.
    """
    doc = copy.deepcopy(load_event(template))
    detail = doc["detail"]
    if task_id is not None:
        arn = task_arn(task_id, (cluster_arn or detail["clusterArn"]).rsplit("/", 1)[-1])
        detail["taskArn"] = arn
        doc["resources"] = [arn]
        for container in detail["containers"]:
            container["taskArn"] = arn
    for key, value in (
        ("version", version),
        ("lastStatus", last_status),
        ("desiredStatus", desired_status),
        ("clusterArn", cluster_arn),
        ("containerInstanceArn", container_instance_arn),
        ("taskDefinitionArn", task_definition_arn),
        ("launchType", launch_type),
    ):
        if value is not None:
            detail[key] = value
    if host_ports is not None:
        for container in detail["containers"]:
            ports = host_ports.get(container["name"], {})
            container["networkBindings"] = [
                {"bindIP": "0.0.0.0", "containerPort": c, "hostPort": h, "protocol": "tcp"}
                for c, h in ports.items()
            ]
    return doc


def sqs_event(
    bodies: Iterable[str | Mapping[str, Any]],
    prefix: str = "msg",
    *,
    recheck_number: int | str | None = None,
) -> dict[str, Any]:
    """An SQS event source batch; message ids are `<prefix>-<n>`.

    `recheck_number`: every message is that re-check (message attribute recheck.ATTRIBUTE,
    in the Lambda SQS event's `messageAttributes` shape).
    """
    records = []
    attributes: dict[str, Any] = {}
    if recheck_number is not None:
        attributes[recheck.ATTRIBUTE] = {
            "stringValue": str(recheck_number),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number",
        }
    for n, body in enumerate(bodies):
        text = body if isinstance(body, str) else json.dumps(body)
        records.append(
            {
                "messageId": f"{prefix}-{n}",
                "receiptHandle": f"handle-{prefix}-{n}",
                "body": text,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": dict(attributes),
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:registrar",
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


def failed_ids(response: Mapping[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


@dataclass
class LambdaContext:
    """Enough of the Lambda context: a generous, constant remaining time."""

    remaining_ms: int = 60_000
    function_name: str = "registrar"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


# --------------------------------------------------------------------------------------------
# Fast in-memory AWS


@dataclass
class FakeTaskDefinitions:
    """TaskDefinitionSource over TASK_DEFINITIONS; counts lookups."""

    calls: int = 0

    def get(self, arn: str) -> TaskDefinition:
        self.calls += 1
        family, revision = arn.rsplit("/", 1)[-1].split(":")
        return task_definition(family, int(revision))


@dataclass
class FakeHosts:
    """HostSource: every container instance of the mesh cluster is on `addresses[arn]`."""

    addresses: dict[str, str] = field(default_factory=lambda: {INSTANCE_ARN: HOST_IP})

    def get(self, cluster_arn: str, container_instance_arn: str) -> Host:
        address = self.addresses.get(container_instance_arn)
        if address is None:
            raise aws.AwsLookupError(f"unknown container instance {container_instance_arn}")
        return Host(address=address, instance_id="mi-0a1b2c3d4e5f60718", source="ssm")


@dataclass
class FakeRechecks:
    """recheck.Scheduler that keeps what it was asked to send; `fail` makes SendMessage fail."""

    sent: list[tuple[str, int]] = field(default_factory=list)
    fail: bool = False

    def schedule(self, body: str, number: int) -> None:
        if self.fail:
            raise aws.AwsUnavailable("SendMessage: ServiceUnavailable: try again")
        self.sent.append((body, number))

    def take(self) -> list[tuple[str, int]]:
        """The re-checks sent so far, forgotten here (SQS delivers each once)."""
        sent, self.sent = self.sent, []
        return sent


FAST_RETRY = retry.RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.005)


def settings(consul_url: str, **overrides: Any) -> registrar.Settings:
    values: dict[str, Any] = {
        "consul_addr": consul_url,
        "cluster_arn": CLUSTER_ARN,
        "retry_policy": FAST_RETRY,
        "consul_timeout_s": 2.0,
        "reserve_ms": 0,
    }
    values.update(overrides)
    return registrar.Settings(**values)


def fake_runtime(
    consul_url: str,
    *,
    token: str | None = None,
    hosts: aws.HostSource | None = None,
    task_definitions: aws.TaskDefinitionSource | None = None,
    rechecks: recheck.Scheduler | None = None,
    **overrides: Any,
) -> registrar.Runtime:
    # `rechecks` only when given: a test that needs none runs against a registrar without them
    extra: dict[str, Any] = {} if rechecks is None else {"rechecks": rechecks}
    return registrar.Runtime(
        settings(consul_url, **overrides),
        task_definitions=task_definitions or FakeTaskDefinitions(),
        hosts=hosts or FakeHosts(),
        token=consul.StaticToken(token),
        **extra,
    )


# --------------------------------------------------------------------------------------------
# moto world


@dataclass
class FakeSsm:
    """SSM client stand-in for DescribeInstanceInformation (not implemented by moto 5.2.5)."""

    ip_by_instance: dict[str, str] = field(default_factory=dict)
    calls: int = 0

    def describe_instance_information(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        ids = next(f["Values"] for f in kwargs["Filters"] if f["Key"] == "InstanceIds")
        return {
            "InstanceInformationList": [
                {"InstanceId": i, "IPAddress": self.ip_by_instance[i], "PingStatus": "Online"}
                for i in ids
                if i in self.ip_by_instance
            ]
        }


@dataclass
class MotoWorld:
    cluster_arn: str
    container_instance_arn: str
    instance_id: str
    task_definition_arns: dict[str, str]
    token_secret_arn: str
    ssm: FakeSsm


def build_moto_world(*, token: str = "root-token", host_ip: str = HOST_IP) -> MotoWorld:
    """Inside mock_aws: a cluster, one container instance on `host_ip`, the task definitions
    above, and the Consul token secret. Set MOTO_EC2_LOAD_DEFAULT_AMIS=false first (speed)."""
    import boto3

    ecs = boto3.client("ecs", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    cluster_arn = ecs.create_cluster(clusterName="mesh")["cluster"]["clusterArn"]
    # ECS Anywhere hosts are SSM managed instances (mi-...); moto's RegisterContainerInstance
    # needs an EC2 instance, so one stands in (the registrar never looks at the id's prefix).
    instance_id = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    document = json.dumps({"instanceId": instance_id, "region": REGION})
    container_instance_arn = ecs.register_container_instance(
        cluster="mesh", instanceIdentityDocument=document
    )["containerInstance"]["containerInstanceArn"]
    arns = {}
    for family, spec in TASK_DEFINITIONS.items():
        # moto 5.2.5 turns any requiresCompatibilities other than [EC2] into FARGATE and forces
        # networkMode awsvpc: register without it (the registrar never reads it).
        moto_spec = {k: v for k, v in spec.items() if k != "requiresCompatibilities"}
        registered = ecs.register_task_definition(**moto_spec)["taskDefinition"]
        arns[family] = registered["taskDefinitionArn"]
    secret_arn = secrets.create_secret(Name="consul/registrar-token", SecretString=token)["ARN"]
    return MotoWorld(
        cluster_arn=cluster_arn,
        container_instance_arn=container_instance_arn,
        instance_id=instance_id,
        task_definition_arns=arns,
        token_secret_arn=secret_arn,
        ssm=FakeSsm({instance_id: host_ip}),
    )


def moto_runtime(world: MotoWorld, consul_url: str, **overrides: Any) -> registrar.Runtime:
    """The production wiring (boto3 ECS + Secrets Manager via moto), SSM answered by FakeSsm."""
    aws.reset_clients()
    config = settings(
        consul_url,
        cluster_arn=world.cluster_arn,
        token_secret_arn=world.token_secret_arn,
        **overrides,
    )
    hosts = aws.EcsSsmHosts(lambda: aws.client("ecs"), lambda: world.ssm, config.host_ttl_s)
    return registrar.Runtime(config, hosts=hosts)


def seed_settled_markers(
    double: Any, cluster_arn: str = CLUSTER_ARN, *, migrated: bool = True, verified: bool = True
) -> None:
    """A cluster long past its first passes after the deploy: the legacy layout migrated
    (migration.py) and, when `verified`, every running task described by this code
    (verification.py)."""
    import kv_layout
    import verification

    long_ago = datetime.now(UTC) - timedelta(days=30)
    if migrated:
        double.seed_kv(
            kv_layout.migration_key(cluster_arn),
            json.dumps({"migrated_at": long_ago.isoformat()}).encode(),
        )
    if not verified:
        return
    double.seed_kv(
        kv_layout.verified_key(cluster_arn),
        json.dumps(
            {"shape": verification.SHAPE, "since": long_ago.isoformat(), "verified": True}
        ).encode(),
    )
