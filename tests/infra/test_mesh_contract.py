"""End to end: the Envoy a MeshService task starts presents the IDs the registrar registers.

GIVEN the task definition MeshService synthesizes, WHEN the registrar handles that task's
RUNNING event against the Consul double AND the init container's exact command (taken from
the template) runs against a fake ECS metadata endpoint for the same task, THEN Envoy's
`node.id` is the connect-proxy the catalog holds and `node_name` the node it is on. In both
network modes; and for the default app, that no mesh app can be reached around its sidecar.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aws_cdk as cdk
import handler as registrar_handler  # the registrar's Lambda entry point
import identity
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
from tests.infra.conftest import Synthesized

# tests/lambda is not a package ("lambda" is a keyword): import its fixtures by module path.
fixtures: Any = importlib.import_module("tests.lambda.registrar_fixtures")

TASK_ID = "4c1d2e3f5a6b7c8d9e0f1a2b3c4d5e6f"
TASK_DEF_ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/web:7"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
TOKEN = "5a6c3b1e-7d2f-4c8a-9e0b-1f2d3c4b5a69"
# Bridge mode: the host ports ECS picked for the task's published ports.
BRIDGE_PORTS = {"web": {8080: 32768}, "envoy": {20000: 32769, 9102: 32770}}
MODE_ARGS: dict[str, dict[str, Any]] = {
    "host": {"app_user": "1000"},
    "bridge": {"network_mode": "bridge", "insecure_published_app_port": True},
}


def synthesized_task_definition(mode: str) -> dict[str, Any]:
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
        health_check_path="/healthz",
        **MODE_ARGS[mode],
    )
    (props,) = [
        r["Properties"]
        for r in Template.from_stack(stack).find_resources("AWS::ECS::TaskDefinition").values()
    ]
    return props


def as_registrar_sees_it(props: dict[str, Any], arn: str = TASK_DEF_ARN) -> TaskDefinition:
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
            "taskDefinitionArn": arn,
            "networkMode": props["NetworkMode"],
            "containerDefinitions": containers,
        }
    )


def host_ports(props: dict[str, Any]) -> dict[str, dict[int, int]]:
    """The network bindings ECS reports for a task: host mode binds each mapped port as is."""
    if props["NetworkMode"] == "bridge":
        return BRIDGE_PORTS
    return {
        c["Name"]: {m["ContainerPort"]: m["ContainerPort"] for m in c["PortMappings"]}
        for c in props["ContainerDefinitions"]
        if c.get("PortMappings")
    }


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


@dataclass(frozen=True)
class Registered:
    """What the registrar put in the catalog for one task."""

    proxy: dict[str, Any]
    checks: list[dict[str, Any]]


def register(consul: ConsulDouble, props: dict[str, Any], task_id: str = TASK_ID) -> Registered:
    """The registrar, wired to the Consul double, handles this task's RUNNING event."""
    arn = f"arn:aws:ecs:us-east-1:123456789012:task-definition/td-{task_id[:6]}:1"
    task_definition = as_registrar_sees_it(props, arn)

    class TaskDefinitions:
        def get(self, requested: str) -> TaskDefinition:
            assert requested == arn
            return task_definition

    registrar.set_runtime(fixtures.fake_runtime(consul.url, task_definitions=TaskDefinitions()))
    try:
        event = fixtures.task_event(
            task_id=task_id, version=3, task_definition_arn=arn, host_ports=host_ports(props)
        )
        result = registrar_handler.handler(fixtures.sqs_event([event]), fixtures.LambdaContext())
    finally:
        registrar.set_runtime(None)
    assert result == {"batchItemFailures": []}
    node = identity.node_name(fixtures.task_arn(task_id))
    (proxy,) = [s for s in consul.services(node) if s.get("ServiceKind") == "connect-proxy"]
    return Registered(proxy=proxy, checks=consul.checks(node))


def _concrete(value: Any) -> str:
    """A template value as the container sees it (intrinsics resolve to a DNS name)."""
    return value if isinstance(value, str) else "consul.internal.example"


def run_init_command(props: dict[str, Any], metadata_endpoint: str, out: Path) -> dict[str, Any]:
    """The init container's command and environment from the template, run for this task."""
    (init,) = [c for c in props["ContainerDefinitions"] if c["Name"] == "envoy-init"]
    admin = Path(tempfile.mkdtemp(prefix="adm", dir="/tmp"))  # short: a socket path <= 107 B
    env = {e["Name"]: _concrete(e["Value"]) for e in init["Environment"]}
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
            "CONSUL_HTTP_TOKEN": TOKEN,
            "CONSUL_CACERT_PEM": CA_PEM,
        }
    )
    assert {s["Name"] for s in init["Secrets"]} == {"CONSUL_HTTP_TOKEN", "CONSUL_CACERT_PEM"}
    entry_and_command = init["EntryPoint"] + init["Command"]
    command = [sys.executable if part == "python3" else part for part in entry_and_command]
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    admin.rmdir()
    assert run.returncode == 0, run.stderr
    bootstrap: dict[str, Any] = json.loads(out.read_text())
    return bootstrap


def check_ports(checks: list[dict[str, Any]]) -> set[int]:
    """The ports consul-esm dials for these checks."""
    ports = set()
    for check in checks:
        target = check["Definition"].get("TCP") or check["Definition"]["HTTP"]
        ports.add(int(target.split("://")[-1].split("/")[0].rsplit(":", 1)[1]))
    return ports


@pytest.mark.parametrize("mode", ["host", "bridge"])
def test_envoy_presents_exactly_the_proxy_the_registrar_registers(
    mode: str, consul: ConsulDouble, metadata_endpoint: str, tmp_path: Path
) -> None:
    props = synthesized_task_definition(mode)
    # GIVEN the registrar registered this task
    registered = register(consul, props).proxy

    # WHEN the init container's command from the template runs for the same task
    bootstrap = run_init_command(props, metadata_endpoint, tmp_path / "envoy-bootstrap.json")
    node = bootstrap["node"]

    # THEN Envoy asks for exactly the registered sidecar, on exactly its catalog node
    assert node["id"] == registered["ServiceID"]
    assert node["metadata"]["node_name"] == registered["Node"]
    assert node["cluster"] == registered["ServiceProxy"]["DestinationServiceName"] == "web"
    # AND its admin API is a unix socket, never a TCP port
    assert set(bootstrap["admin"]["address"]) == {"pipe"}
    proxy = registered["ServiceProxy"]
    assert proxy["Config"]["bind_port"] == 20000
    upstreams = [(u["DestinationName"], u["LocalBindAddress"]) for u in proxy["Upstreams"]]
    if mode == "host":
        # AND Envoy reaches the loopback-only app on 127.0.0.1, and the app reaches Envoy's
        # upstream listener on 127.0.0.1 (neither is reachable from off the host)
        assert (proxy["LocalServiceAddress"], proxy["LocalServicePort"]) == ("127.0.0.1", 8080)
        assert upstreams == [("backend", "127.0.0.1")]
        # AND other hosts dial the sidecar at the host's IP and the public listener's port
        assert (registered["ServiceAddress"], registered["ServicePort"]) == (
            fixtures.HOST_IP,
            20000,
        )
        assert proxy["Expose"]["Paths"] == [
            {"ListenerPort": 20500, "Path": "/healthz", "LocalPathPort": 8080, "Protocol": "http"}
        ]
    else:
        # AND in bridge mode Envoy reaches the app at its published port, and the app reaches
        # the upstream listener over its link to Envoy
        assert (proxy["LocalServiceAddress"], proxy["LocalServicePort"]) == (
            fixtures.HOST_IP,
            32768,
        )
        assert upstreams == [("backend", "0.0.0.0")]
        assert (registered["ServiceAddress"], registered["ServicePort"]) == (
            fixtures.HOST_IP,
            32769,
        )


# --- the default app -------------------------------------------------------------------------


def mesh_task_definitions(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    """Task definitions with a container that opts into the mesh (the registrar's view)."""
    found = {}
    for template in synthesized.templates().values():
        for logical, resource in template["Resources"].items():
            if resource["Type"] != "AWS::ECS::TaskDefinition":
                continue
            props = resource["Properties"]
            labels = [c.get("DockerLabels", {}) for c in props["ContainerDefinitions"]]
            if any(label.get(identity.LABEL_ENABLED) == "true" for label in labels):
                found[logical] = props
    return found


def test_default_app_lets_no_client_reach_a_mesh_app_around_its_sidecar(
    synthesized: Synthesized, consul: ConsulDouble, metadata_endpoint: str, tmp_path: Path
) -> None:
    # GIVEN the default app, synthesized as `cdk synth` does (the demo is on)
    definitions = mesh_task_definitions(synthesized)
    assert len(definitions) == 2
    for n, props in enumerate(definitions.values()):
        by_name = {c["Name"]: c for c in props["ContainerDefinitions"]}
        (app,) = [
            c for c in by_name.values() if identity.LABEL_ENABLED in c.get("DockerLabels", {})
        ]
        envoy_ports = {m["ContainerPort"] for m in by_name["envoy"]["PortMappings"]}
        # THEN no mesh app publishes a port: host mode, and no port mapping on the app
        assert props["NetworkMode"] == "host", app["Name"]
        assert "PortMappings" not in app, app["Name"]
        # AND the registrar points each sidecar at 127.0.0.1 and every check at an Envoy
        # listener of the task, never at the app's own port
        registered = register(consul, props, task_id=f"{n:032x}")
        assert registered.proxy["ServiceProxy"]["LocalServiceAddress"] == "127.0.0.1", app["Name"]
        app_port = registered.proxy["ServiceProxy"]["LocalServicePort"]
        assert check_ports(registered.checks) <= envoy_ports - {app_port}, app["Name"]
        assert registered.proxy["ServiceProxy"]["Expose"]["Paths"], app["Name"]
        # AND the bootstrap the init container renders puts the admin API on a unix socket
        bootstrap = run_init_command(props, metadata_endpoint, tmp_path / f"bootstrap-{n}.json")
        assert set(bootstrap["admin"]["address"]) == {"pipe"}, app["Name"]
        assert bootstrap["admin"]["address"]["pipe"]["mode"] == 0o600
