"""End to end: the Envoy a MeshService task starts presents the IDs the registrar registers.

GIVEN the task definition MeshService synthesizes, WHEN the registrar handles that task's
RUNNING event against the Consul double AND the init container's exact command (taken from
the template) runs against a fake ECS metadata endpoint for the same task, THEN Envoy's
`node.id` is the connect-proxy the catalog holds and `node_name` the node it is on.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import aws_cdk as cdk
import handler as registrar_handler  # the registrar's Lambda entry point
import pytest
import registrar
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Template
from model import TaskDefinition, task_definition_from_api

from mesh_stack.mesh_service import MeshService
from tests.consul_double import ConsulDouble

# tests/lambda is not a package ("lambda" is a keyword): import its fixtures by module path.
fixtures: Any = importlib.import_module("tests.lambda.registrar_fixtures")

TASK_ID = "4c1d2e3f5a6b7c8d9e0f1a2b3c4d5e6f"
TASK_DEF_ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/web:7"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def synthesized_task_definition() -> dict[str, Any]:
    """The task definition MeshService writes, as CloudFormation properties."""
    app = cdk.App()
    stack = cdk.Stack(app, "Contract", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    MeshService(
        stack,
        "Web",
        cluster=ecs.Cluster(stack, "Cluster", vpc=vpc),
        service_name="web",
        image=ecs.ContainerImage.from_registry("nginx:1.27"),
        port=8080,
        token_secret=secretsmanager.Secret(stack, "Token", encryption_key=key),
        ca_secret=secretsmanager.Secret(stack, "Ca", encryption_key=key),
        consul_grpc_host="consul.internal.example",
        consul_tls_server_name="server.dc1.consul",
        envoy_version="1.34.14",
        log_key=key,
        upstreams={"backend": 9001},
    )
    (props,) = [
        r["Properties"]
        for r in Template.from_stack(stack).find_resources("AWS::ECS::TaskDefinition").values()
    ]
    return props


def as_registrar_sees_it(props: dict[str, Any]) -> TaskDefinition:
    """CloudFormation's TaskDefinition -> DescribeTaskDefinition's shape -> registrar model."""
    containers = [
        {
            "name": c["Name"],
            "dockerLabels": c.get("DockerLabels", {}),
            "portMappings": [
                {
                    "containerPort": m["ContainerPort"],
                    "hostPort": m.get("HostPort", 0),
                    "protocol": m.get("Protocol", "tcp"),
                }
                for m in c.get("PortMappings", [])
            ],
        }
        for c in props["ContainerDefinitions"]
    ]
    return task_definition_from_api(
        {
            "taskDefinitionArn": TASK_DEF_ARN,
            "networkMode": props["NetworkMode"],
            "containerDefinitions": containers,
        }
    )


class _Metadata(http.server.BaseHTTPRequestHandler):
    task: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.task).encode()
        self.send_response(200 if self.path.endswith("/task") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def metadata_endpoint() -> Iterator[str]:
    _Metadata.task = {"TaskARN": fixtures.task_arn(TASK_ID), "Cluster": fixtures.CLUSTER_ARN}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v4/contract"
    server.shutdown()
    server.server_close()


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble() as double:
        yield double
    assert not double.internal_errors, double.internal_errors


def test_envoy_presents_exactly_the_proxy_the_registrar_registers(
    consul: ConsulDouble, metadata_endpoint: str, tmp_path: Path
) -> None:
    props = synthesized_task_definition()
    task_definition = as_registrar_sees_it(props)

    # GIVEN the registrar, wired to the Consul double, sees this task RUNNING
    class TaskDefinitions:
        def get(self, arn: str) -> TaskDefinition:
            assert arn == TASK_DEF_ARN
            return task_definition

    registrar.set_runtime(fixtures.fake_runtime(consul.url, task_definitions=TaskDefinitions()))
    try:
        event = fixtures.task_event(
            task_id=TASK_ID,
            version=3,
            task_definition_arn=TASK_DEF_ARN,
            host_ports={"web": {8080: 32768}, "envoy": {20000: 32769, 9102: 32770}},
        )
        result = registrar_handler.handler(fixtures.sqs_event([event]), fixtures.LambdaContext())
    finally:
        registrar.set_runtime(None)
    assert result == {"batchItemFailures": []}
    proxies = [s for s in consul.services() if s.get("ServiceKind") == "connect-proxy"]
    assert len(proxies) == 1, consul.services()
    registered = proxies[0]

    # WHEN the init container's command from the template runs for the same task
    (init,) = [c for c in props["ContainerDefinitions"] if c["Name"] == "envoy-init"]
    out = tmp_path / "envoy-bootstrap.json"
    admin = Path(tempfile.mkdtemp(prefix="adm", dir="/tmp"))  # short: a socket path <= 107 B
    env = {e["Name"]: e["Value"] for e in init["Environment"]}
    env.update(
        {
            "PATH": os.environ.get("PATH", ""),
            "ECS_CONTAINER_METADATA_URI_V4": metadata_endpoint,
            # the two task volumes, here temp dirs
            "ENVOY_BOOTSTRAP_PATH": str(out),
            "ENVOY_ADMIN_SOCKET": str(admin / "admin.sock"),
            "ENVOY_UID": str(os.getuid()),
            "ENVOY_GID": str(os.getgid()),
            # what ECS injects from Secrets Manager (`secrets`)
            "CONSUL_HTTP_TOKEN": "5a6c3b1e-7d2f-4c8a-9e0b-1f2d3c4b5a69",
            "CONSUL_CACERT_PEM": CA_PEM,
        }
    )
    assert {s["Name"] for s in init["Secrets"]} == {"CONSUL_HTTP_TOKEN", "CONSUL_CACERT_PEM"}
    command = [sys.executable if part == "python3" else part for part in init["Command"]]
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    admin.rmdir()
    assert run.returncode == 0, run.stderr
    node = json.loads(out.read_text())["node"]

    # THEN Envoy asks for exactly the registered sidecar, on exactly its catalog node
    assert node["id"] == registered["ServiceID"]
    assert node["metadata"]["node_name"] == registered["Node"]
    assert node["cluster"] == registered["ServiceProxy"]["DestinationServiceName"] == "web"
    # AND in bridge mode the app can reach the upstream listener over its link to Envoy
    upstreams = registered["ServiceProxy"]["Upstreams"]
    assert [
        (u["DestinationName"], u["LocalBindAddress"], u["LocalBindPort"]) for u in upstreams
    ] == [("backend", "0.0.0.0", 9001)]
    assert registered["ServiceProxy"]["Config"]["bind_port"] == 20000
