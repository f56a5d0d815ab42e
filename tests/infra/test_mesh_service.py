"""MeshService and the demo: what ECS Anywhere will run, and what it never exposes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import identity  # the registrar's own module (lambda/registrar is on pytest's path)
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Annotations, Match, Template

from mesh_stack import init_program
from mesh_stack.config import MeshConfig
from mesh_stack.configured_services import ConfiguredServices
from mesh_stack.mesh_service import NO_HEALTH_PATH_WARNING, MeshService
from mesh_stack.ports import BRIDGE_DYNAMIC_HOST_PORTS, ENVOY_INBOUND_PORTS
from tests.infra.nag_util import open_findings


def scaffold(outdir: Path) -> tuple[cdk.App, cdk.Stack, dict[str, Any]]:
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    common = {
        "cluster": ecs.Cluster(stack, "Cluster", vpc=vpc),
        "ca_secret": secretsmanager.Secret(stack, "Ca", encryption_key=key),
        "consul_grpc_host": "consul.internal.example",
        "consul_tls_server_name": "server.dc1.consul",
        "envoy_version": "1.34.14",
        "log_key": key,
    }
    return app, stack, common


def token(stack: cdk.Stack, name: str, key: kms.IKey) -> secretsmanager.ISecret:
    return secretsmanager.Secret(stack, f"{name}Token", encryption_key=key)


class RecordingConsul:
    """Stands in for ConsulObjects: a token secret per service, intentions recorded."""

    def __init__(self, stack: cdk.Stack, key: kms.IKey) -> None:
        self.stack, self.key = stack, key
        self.intentions: list[tuple[str, str]] = []

    def service_token(self, service_name: str) -> secretsmanager.ISecret:
        return token(self.stack, service_name.capitalize(), self.key)

    def intention(self, source: str, destination: str, action: str = "allow") -> None:
        self.intentions.append((source, destination))


def build(outdir: Path) -> tuple[cdk.App, cdk.Stack, RecordingConsul]:
    app, stack, common = scaffold(outdir)
    key = common["log_key"]
    MeshService(
        stack,
        "Web",
        service_name="web",
        image=ecs.ContainerImage.from_registry("nginx:1.27"),
        port=8080,
        token_secret=token(stack, "Web", key),
        upstreams={"api": 9001, "db": 9002},
        tags=["v1", "canary"],
        health_check_path="/healthz",
        network_mode="bridge",
        insecure_published_app_port=True,
        **common,
    )
    MeshService(
        stack,
        "Metrics",
        service_name="metrics",
        image=ecs.ContainerImage.from_registry("nginx:1.27"),
        port=8081,
        token_secret=token(stack, "Metrics", key),
        app_user="1000",
        proxy_port=20100,
        prometheus_port=9202,
        upstreams={"api": 9101},
        **common,
    )
    # The demo: two `services` entries of the default configuration.
    demo = MeshConfig.from_context({})
    consul = RecordingConsul(stack, key)
    ConfiguredServices(
        stack,
        "Demo",
        services=demo.demo_services,
        ports=demo.service_ports,
        consul=consul,
        config_key="demo",
        **common,
    )
    return app, stack, consul


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[cdk.Stack, RecordingConsul]:
    _, stack, consul = build(tmp_path_factory.mktemp("mesh-service"))
    return stack, consul


@pytest.fixture(scope="module")
def template(built: tuple[cdk.Stack, RecordingConsul]) -> Template:
    stack, _ = built
    return Template.from_stack(stack)


def task_definitions(template: Template) -> dict[str, dict[str, Any]]:
    found = template.find_resources("AWS::ECS::TaskDefinition")
    return {logical: resource["Properties"] for logical, resource in found.items()}


def containers(template: Template, service: str) -> dict[str, dict[str, Any]]:
    """The containers of the task definition whose app container is named `service`."""
    for props in task_definitions(template).values():
        by_name = {c["Name"]: c for c in props["ContainerDefinitions"]}
        if service in by_name:
            return by_name
    raise AssertionError(f"no task definition runs {service}")


def task_definition_of(template: Template, service: str) -> dict[str, Any]:
    for props in task_definitions(template).values():
        if any(c["Name"] == service for c in props["ContainerDefinitions"]):
            return props
    raise AssertionError(f"no task definition runs {service}")


def test_every_task_definition_is_external_and_never_awsvpc(template: Template) -> None:
    defs = task_definitions(template)
    assert len(defs) == 4
    for props in defs.values():
        assert props["RequiresCompatibilities"] == ["EXTERNAL"]
        assert props["NetworkMode"] in ("bridge", "host")


def test_every_service_uses_the_external_launch_type(template: Template) -> None:
    services = template.find_resources("AWS::ECS::Service")
    assert len(services) == 4
    assert {s["Properties"]["LaunchType"] for s in services.values()} == {"EXTERNAL"}


def test_app_container_carries_the_registrar_labels(template: Template) -> None:
    labels = containers(template, "web")["web"]["DockerLabels"]
    assert labels == {
        identity.LABEL_ENABLED: "true",
        identity.LABEL_SERVICE: "web",
        identity.LABEL_PORTS: "8080",
        identity.LABEL_TAGS: "v1,canary",
        identity.LABEL_UPSTREAMS: "api:9001,db:9002",
        identity.LABEL_HEALTH_PATH: "/healthz",
        identity.LABEL_PROXY_CONTAINER: "envoy",
        identity.LABEL_PROXY_PORT: "20000",
    }
    # the init container renders the bootstrap for the service the labels register
    init_env = {
        e["Name"]: e["Value"] for e in containers(template, "web")["envoy-init"]["Environment"]
    }
    assert init_env["CONSUL_MESH_SERVICE"] == labels[identity.LABEL_SERVICE]


def test_token_and_ca_reach_only_the_init_container_through_ecs_secrets(template: Template) -> None:
    for service in ("web", "metrics", "frontend", "backend"):
        by_name = containers(template, service)
        secrets = {s["Name"]: s["ValueFrom"] for s in by_name["envoy-init"]["Secrets"]}
        assert set(secrets) == {"CONSUL_HTTP_TOKEN", "CONSUL_CACERT_PEM"}
        assert all("Ref" in value for value in secrets.values()), secrets
        for container in by_name.values():
            names = {e["Name"] for e in container.get("Environment", [])}
            assert not names & {"CONSUL_HTTP_TOKEN", "CONSUL_CACERT_PEM"}, container["Name"]
            if container["Name"] != "envoy-init":
                assert "Secrets" not in container, container["Name"]


def test_admin_interface_is_a_socket_in_a_volume_only_envoy_and_its_init_mount(
    template: Template,
) -> None:
    for props in task_definitions(template).values():
        by_name = {c["Name"]: c for c in props["ContainerDefinitions"]}
        init_env = {e["Name"]: e["Value"] for e in by_name["envoy-init"]["Environment"]}
        # GIVEN the init container renders admin on a unix socket (never a TCP port) ...
        assert init_env["ENVOY_ADMIN_SOCKET"] == "/consul-mesh-admin/admin.sock"
        assert "ENVOY_ADMIN_PORT" not in init_env
        # ... in a task volume that Envoy may write (to create the socket) and that the init
        # container hands to Envoy's user; the app container never mounts it
        mounts = {
            name: {(m["SourceVolume"], m["ReadOnly"]) for m in c.get("MountPoints", [])}
            for name, c in by_name.items()
        }
        assert ("consul-mesh-admin", False) in mounts["envoy"]
        assert ("consul-mesh-admin", False) in mounts["envoy-init"]
        users = [n for n, m in mounts.items() if any(v == "consul-mesh-admin" for v, _ in m)]
        assert sorted(users) == ["envoy", "envoy-init"]


def test_envoy_starts_only_after_the_init_container_succeeds(template: Template) -> None:
    by_name = containers(template, "web")
    init, proxy = by_name["envoy-init"], by_name["envoy"]
    assert init["Essential"] is False
    assert init["Command"] == init_program.command()
    # whatever ENTRYPOINT and USER the init image declares (a hardened mirror of python often
    # sets both): python3 runs the program, as root, to hand the volumes to Envoy's uid
    assert init["EntryPoint"] == ["python3"]
    assert init["User"] == "0"
    assert proxy["DependsOn"] == [{"ContainerName": "envoy-init", "Condition": "SUCCESS"}]
    assert proxy["EntryPoint"] == ["/usr/local/bin/envoy"]
    assert proxy["Command"][:2] == ["-c", "/consul-mesh/envoy-bootstrap.json"]
    assert proxy["Image"] == "envoyproxy/envoy:v1.34.14"
    # the bootstrap volume: written by the init container, read-only for Envoy, which is not
    # root; the admin socket's volume, writable by both
    bootstrap = {"ContainerPath": "/consul-mesh", "SourceVolume": "consul-mesh-bootstrap"}
    admin = {"ContainerPath": "/consul-mesh-admin", "SourceVolume": "consul-mesh-admin"}
    assert init["MountPoints"] == [{**bootstrap, "ReadOnly": False}, {**admin, "ReadOnly": False}]
    assert proxy["MountPoints"] == [{**bootstrap, "ReadOnly": True}, {**admin, "ReadOnly": False}]
    assert proxy["User"] == "1337:1337"
    env = {e["Name"]: e["Value"] for e in init["Environment"]}
    assert (env["ENVOY_UID"], env["ENVOY_GID"]) == ("1337", "1337")


def test_bridge_opt_in_publishes_the_app_port_dynamically_and_links_it_to_envoy(
    template: Template,
) -> None:
    # GIVEN network_mode="bridge" with insecure_published_app_port=True: the exposure shows in
    # the template as the app container's port mapping in a bridge task definition
    assert task_definition_of(template, "web")["NetworkMode"] == "bridge"
    by_name = containers(template, "web")
    env = {e["Name"]: e["Value"] for e in by_name["web"]["Environment"]}
    assert env["CONSUL_MESH_LISTEN_ADDR"] == "0.0.0.0:8080"
    assert by_name["web"]["Links"] == ["envoy:envoy"]
    assert by_name["web"]["PortMappings"] == [
        {"ContainerPort": 8080, "HostPort": 0, "Protocol": "tcp"}
    ]
    assert {(m["ContainerPort"], m["HostPort"]) for m in by_name["envoy"]["PortMappings"]} == {
        (20000, 0),
        (9102, 0),
    }


def test_host_mode_is_the_default_and_publishes_no_app_port(template: Template) -> None:
    # GIVEN a MeshService built without a network_mode
    assert task_definition_of(template, "metrics")["NetworkMode"] == "host"
    by_name = containers(template, "metrics")
    app = by_name["metrics"]
    # THEN the app container maps no port (the review keys on the app's PortMappings) and is
    # told to listen on loopback only
    assert "PortMappings" not in app
    assert "Links" not in app
    env = {e["Name"]: e["Value"] for e in app["Environment"]}
    assert (
        env["CONSUL_MESH_LISTEN_ADDR"],
        env["CONSUL_MESH_LISTEN_HOST"],
        env["CONSUL_MESH_LISTEN_PORT"],
    ) == ("127.0.0.1:8081", "127.0.0.1", "8081")
    assert app["User"] == "1000"
    # AND Envoy's listeners hold their ports on the host (ECS then never places two of these
    # tasks on one host)
    mappings = {(m["ContainerPort"], m["HostPort"]) for m in by_name["envoy"]["PortMappings"]}
    assert mappings == {(20100, 20100), (9202, 9202)}
    # AND the metrics listener stays on the host's loopback unless scraping off-host is
    # opted into
    init_env = {e["Name"]: e["Value"] for e in by_name["envoy-init"]["Environment"]}
    assert init_env["ENVOY_PROMETHEUS_BIND"] == "127.0.0.1:9202"
    assert app["DockerLabels"][identity.LABEL_PROXY_PORT] == "20100"
    assert app["DockerLabels"][identity.LABEL_PORTS] == "8081"


def _policy_statements_of_role(template: Template, role_logical_id: str) -> list[dict[str, Any]]:
    statements = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        roles = policy["Properties"].get("Roles", [])
        if {"Ref": role_logical_id} in roles:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def test_execution_role_reads_only_the_secrets_its_task_needs(template: Template) -> None:
    props = task_definition_of(template, "web")
    role = props["ExecutionRoleArn"]["Fn::GetAtt"][0]
    statements = _policy_statements_of_role(template, role)
    secret_resources = [
        s["Resource"]
        for s in statements
        if any(a.startswith("secretsmanager:") for a in _actions(s))
    ]
    refs = sorted(r["Ref"] for r in secret_resources)
    assert len(refs) == 2
    assert refs[0].startswith("Ca"), refs
    assert refs[1].startswith("WebToken"), refs
    assert all(
        a in ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret")
        for s in statements
        for a in _actions(s)
        if a.startswith("secretsmanager:")
    )
    assert not any(s["Resource"] == "*" for s in statements), statements
    # and it may decrypt them only through Secrets Manager, in its own policy: no key policy
    # names it (a role created in the same deployment can make the key policy invalid)
    decrypts = [s for s in statements if "kms:Decrypt" in _actions(s)]
    assert decrypts, "execution role cannot decrypt the secrets"
    for grant in decrypts:
        assert _actions(grant) == ["kms:Decrypt"]
        via = grant["Condition"]["StringEquals"]["kms:ViaService"]
        assert "secretsmanager." in json.dumps(via)
    for key in template.find_resources("AWS::KMS::Key").values():
        assert role not in json.dumps(key["Properties"]["KeyPolicy"])


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_demo_frontend_calls_backend_through_its_envoy(
    template: Template, built: tuple[cdk.Stack, RecordingConsul]
) -> None:
    frontend = containers(template, "frontend")["frontend"]
    env = {e["Name"]: e["Value"] for e in frontend["Environment"]}
    # host mode: the upstream listener and the app are on loopback, nothing is published
    assert env["UPSTREAM_URIS"] == "http://127.0.0.1:9091"
    assert env["LISTEN_ADDR"] == "127.0.0.1:9080"
    assert frontend["DockerLabels"][identity.LABEL_UPSTREAMS] == "backend:9091"
    assert "Links" not in frontend
    assert "PortMappings" not in frontend
    backend = containers(template, "backend")["backend"]
    assert identity.LABEL_UPSTREAMS not in backend["DockerLabels"]
    assert {e["Name"]: e["Value"] for e in backend["Environment"]}["LISTEN_ADDR"] == (
        "127.0.0.1:9090"
    )
    # the health path is served by each Envoy on its expose listener (proxy port + 500)
    assert backend["DockerLabels"][identity.LABEL_EXPOSE_PORT] == "20500"
    assert frontend["DockerLabels"][identity.LABEL_EXPOSE_PORT] == "20501"
    assert built[1].intentions == [("frontend", "backend")]


def test_constructs_are_nag_clean(tmp_path: Path) -> None:
    app, _, _ = build(tmp_path)
    mine = [
        f
        for f in open_findings(app)
        if f.path.startswith(("Test/Web/", "Test/Metrics/", "Test/Demo/"))
    ]
    assert mine == [], "\n".join(f"{f.rule} at {f.path}" for f in mine)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"network_mode": "awsvpc"}, r"network_mode must be 'host' or 'bridge' .* 'awsvpc'"),
        ({"network_mode": "bridge"}, r"pass insecure_published_app_port=True to accept"),
        ({"insecure_published_app_port": True}, r"applies to network_mode='bridge' only"),
        ({"app_user": None}, r"app_user must name a non-root user .* got None"),
        ({"app_user": "0:1000"}, r"app_user must name a non-root user .* got '0:1000'"),
        # uid/gid are numbers to Docker (runc's user lookup uses strconv.Atoi): 00 is root
        ({"app_user": "00"}, r"app_user must name a non-root user .* got '00'"),
        ({"app_user": "0000:1000"}, r"app_user must name a non-root user .* got '0000:1000'"),
        ({"app_user": "+0"}, r"app_user must name a non-root user .* got '\+0'"),
        ({"app_user": "1000:00"}, r"app_user must name a non-root user .* got '1000:00'"),
        ({"app_user": " 0"}, r"app_user must name a non-root user .* got ' 0'"),
        ({"app_user": "root "}, r"app_user must name a non-root user .* got 'root '"),
        ({"app_user": "root"}, r"app_user must name a non-root user .* got 'root'"),
        ({"app_user": "Root:1000"}, r"app_user must name a non-root user .* got 'Root:1000'"),
        # no user part: Docker falls back to the image's user, which may be root
        ({"app_user": ""}, r"app_user must name a non-root user .* got ''"),
        ({"app_user": ":1000"}, r"app_user must name a non-root user .* got ':1000'"),
        ({"port": 80}, r"port 80 is below 1024: in host mode it is a port of the host"),
        ({"upstreams": {"api": 443}}, r"upstreams\[api\] 443 is below 1024"),
        ({"proxy_port": 21000}, r"proxy_port 21000 must lie in 20000\.\.20999 in host mode"),
        # ECS reserves 22, 2375, 2376 and 51678-51680 on every instance, and hands out the
        # ephemeral range to bridge tasks: a host-mode task asking for them is never placed,
        # or loses its loopback port to an outgoing connection
        ({"upstreams": {"api": 2375}}, r"upstreams\[api\] 2375 is reserved by ECS on every"),
        ({"prometheus_port": 2376}, r"prometheus_port 2376 is reserved by ECS on every"),
        ({"prometheus_port": 51678}, r"prometheus_port 51678 is reserved by ECS on every"),
        ({"port": 40000}, r"port 40000 lies in the ephemeral range 32768\.\.60999"),
        ({"upstreams": {"api": 32768}}, r"upstreams\[api\] 32768 lies in the ephemeral range"),
        ({"prometheus_port": 60999}, r"prometheus_port 60999 lies in the ephemeral range"),
        (
            {"health_check_path": "/h", "proxy_port": 20600},
            r"expose_port 21100 must lie in 20000\.\.20999",
        ),
        ({"expose_port": 20900}, r"expose_port 20900 is used only in host mode with a health"),
        (
            {"environment": {"CONSUL_MESH_LISTEN_ADDR": "0.0.0.0:8080"}},
            r"environment must not set \['CONSUL_MESH_LISTEN_ADDR'\]: MeshService sets them",
        ),
        ({"service_name": "Web_1"}, r"service_name must be a DNS label .* 'Web_1'"),
        ({"port": 70000}, r"port must be a port in 1\.\.65535, got 70000"),
        ({"upstreams": {"web": 9001}}, r"web cannot be its own upstream"),
        ({"upstreams": {"api": 20000}}, r"upstreams\[api\] 20000 collides with proxy_port"),
        (
            {"network_mode": "host", "port": 20000},
            r"proxy_port 20000 collides with port \(host mode\)",
        ),
        ({"prometheus_port": 20000}, r"prometheus_port 20000 collides with proxy_port"),
        ({"health_check_path": "healthz"}, r"health_check_path must be an HTTP path starting"),
        (
            {"health_check_path": "/health?full=1"},
            r"health_check_path must be a path without '\?' or '#'.*got '/health\?full=1'",
        ),
        ({"service_name": "envoy"}, r"service_name 'envoy' is reserved \(the Envoy sidecar's"),
        ({"service_name": "envoy-init"}, r"service_name 'envoy-init' is reserved"),
        ({"tags": ["a,b"]}, r"tags must be .* got 'a,b'"),
        ({"envoy_version": "latest"}, r"envoy_version must look like 1\.34\.14, got 'latest'"),
        ({"ca_secret": None}, r"ca_secret \(the Consul CA\) is required unless plaintext"),
        ({"consul_grpc_host": "not a host"}, r"xds_host must be a DNS name or IP address"),
    ],
)
def test_fails_when_mesh_service_input_is_invalid(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    _, stack, common = scaffold(tmp_path)
    args: dict[str, Any] = {
        **common,
        "service_name": "web",
        "image": ecs.ContainerImage.from_registry("nginx:1.27"),
        "port": 8080,
        "token_secret": token(stack, "Web", common["log_key"]),
        "app_user": "1000",
        **overrides,
    }
    with pytest.raises(ValueError, match=message):
        MeshService(stack, "Web", **args)


def test_plaintext_opt_in_needs_no_ca_and_tells_the_init_container(tmp_path: Path) -> None:
    _, stack, common = scaffold(tmp_path)
    common["ca_secret"] = None
    MeshService(
        stack,
        "Web",
        service_name="web",
        image=ecs.ContainerImage.from_registry("nginx:1.27"),
        port=8080,
        token_secret=token(stack, "Web", common["log_key"]),
        plaintext=True,
        app_user="1000",
        **common,
    )
    init = containers(Template.from_stack(stack), "web")["envoy-init"]
    assert [s["Name"] for s in init["Secrets"]] == ["CONSUL_HTTP_TOKEN"]
    assert {"Name": "CONSUL_GRPC_PLAINTEXT", "Value": "true"} in init["Environment"]


def test_upstream_address_names_only_declared_upstreams(tmp_path: Path) -> None:
    _, stack, common = scaffold(tmp_path)
    web = MeshService(
        stack,
        "Web",
        service_name="web",
        image=ecs.ContainerImage.from_registry("nginx:1.27"),
        port=8080,
        token_secret=token(stack, "Web", common["log_key"]),
        upstreams={"api": 9001},
        app_user="1000",
        **common,
    )
    assert web.upstream_address("api") == "127.0.0.1:9001"
    with pytest.raises(ValueError, match=r"'db' is not an upstream of web"):
        web.upstream_address("db")


def _service(stack: cdk.Stack, common: dict[str, Any], name: str, **kw: Any) -> MeshService:
    args: dict[str, Any] = {
        **common,
        "service_name": name,
        "image": ecs.ContainerImage.from_registry("nginx:1.27"),
        "token_secret": token(stack, name.capitalize(), common["log_key"]),
        "app_user": "1000",
        **kw,
    }
    return MeshService(stack, name.capitalize(), **args)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            {"port": 8080, "proxy_port": 20001},
            r"port 8080 of mesh service 'api' collides with port",
        ),
        ({"port": 8081}, r"proxy_port 20000 of mesh service 'api' collides with proxy_port"),
        (
            {"port": 8081, "proxy_port": 20001, "prometheus_port": 9102},
            r"prometheus_port 9102 of mesh service 'api' collides with prometheus_port of mesh "
            r"service 'web'",
        ),
        (
            {"port": 9001, "proxy_port": 20001, "prometheus_port": 9103},
            r"port 9001 of mesh service 'api' collides with upstreams\[db\] of mesh service 'web'",
        ),
        (
            {"port": 8081, "proxy_port": 20002, "prometheus_port": 9103, "health_check_path": "/h"},
            r"expose_port 20502 .* collides with proxy_port of mesh service 'other'",
        ),
    ],
)
def test_fails_when_two_host_mode_services_of_a_cluster_share_a_host_port(
    tmp_path: Path, second: dict[str, Any], message: str
) -> None:
    # GIVEN a host-mode service on the cluster
    _, stack, common = scaffold(tmp_path)
    _service(stack, common, "web", port=8080, upstreams={"db": 9001}, proxy_port=20000)
    _service(stack, common, "other", port=8090, proxy_port=20502, prometheus_port=9104)
    # WHEN a second one would take any of the same host ports
    # THEN synth stops with one error naming both services and the ports
    with pytest.raises(ValueError, match=message):
        _service(stack, common, "api", **second)


def test_services_on_different_clusters_or_in_bridge_mode_may_reuse_ports(tmp_path: Path) -> None:
    _, stack, common = scaffold(tmp_path)
    _service(stack, common, "web", port=8080)
    # a bridge-mode task has its own network namespace and dynamic host ports
    _service(
        stack, common, "api", port=8080, network_mode="bridge", insecure_published_app_port=True
    )
    # another cluster's hosts are other hosts
    other = {**common, "cluster": ecs.Cluster(stack, "OtherCluster", vpc=common["cluster"].vpc)}
    _service(stack, other, "db", port=8080)


def test_non_root_users_and_bridge_container_ports_are_accepted(tmp_path: Path) -> None:
    _, stack, common = scaffold(tmp_path)
    for i, user in enumerate(("1000", "65534:65534", "nobody", "app:1000", "10:20")):
        _service(
            stack,
            common,
            f"web{i}",
            port=8080 + i,
            proxy_port=20000 + i,
            app_user=user,
            prometheus_port=9102 + i,
        )
    # bridge mode: these are container ports; ECS picks the host ports itself
    _service(
        stack,
        common,
        "api",
        port=40000,
        upstreams={"db": 2375},
        network_mode="bridge",
        insecure_published_app_port=True,
    )


@pytest.mark.parametrize(
    ("kw", "bind"),
    [
        ({}, "127.0.0.1:9102"),
        ({"prometheus_bind_address": "0.0.0.0"}, "0.0.0.0:9102"),
        ({"network_mode": "bridge", "insecure_published_app_port": True}, "0.0.0.0:9102"),
    ],
)
def test_metrics_listener_is_on_loopback_unless_off_host_scraping_is_chosen(
    tmp_path: Path, kw: dict[str, Any], bind: str
) -> None:
    _, stack, common = scaffold(tmp_path)
    _service(stack, common, "web", port=8080, **kw)
    init = containers(Template.from_stack(stack), "web")["envoy-init"]
    assert {e["Name"]: e["Value"] for e in init["Environment"]}["ENVOY_PROMETHEUS_BIND"] == bind


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"prometheus_bind_address": "10.0.0.5"},
            r"prometheus_bind_address must be '127\.0\.0\.1' or '0\.0\.0\.0', got '10\.0\.0\.5'",
        ),
        (
            {
                "prometheus_bind_address": "127.0.0.1",
                "network_mode": "bridge",
                "insecure_published_app_port": True,
            },
            r"prometheus_bind_address '127\.0\.0\.1' in bridge mode is the Envoy container's",
        ),
        (
            {"prometheus_bind_address": "0.0.0.0", "prometheus_port": None},
            r"prometheus_bind_address applies only with a prometheus_port",
        ),
    ],
)
def test_fails_when_the_metrics_bind_address_is_invalid(
    tmp_path: Path, kw: dict[str, Any], message: str
) -> None:
    _, stack, common = scaffold(tmp_path)
    with pytest.raises(ValueError, match=message):
        _service(stack, common, "web", port=8080, **kw)


def _imported(stack: cdk.Stack, construct_id: str, name: str) -> ecs.ICluster:
    vpc = ec2.Vpc.from_vpc_attributes(
        stack, f"{construct_id}Vpc", vpc_id="vpc-0123456789abcdef0", availability_zones=["a"]
    )
    return ecs.Cluster.from_cluster_attributes(stack, construct_id, cluster_name=name, vpc=vpc)


@pytest.mark.parametrize("second_import", ["by_name", "by_arn"])
def test_fails_when_one_cluster_imported_twice_gets_two_services_on_one_port(
    tmp_path: Path, second_import: str
) -> None:
    # GIVEN one ECS cluster `mesh` referenced from two stacks of one app (two imports, two
    # construct paths)
    app, _, common = scaffold(tmp_path)
    env = cdk.Environment(account="111111111111", region="us-east-1")
    first, other = cdk.Stack(app, "First", env=env), cdk.Stack(app, "Other", env=env)
    _service(first, {**common, "cluster": _imported(first, "Mesh", "mesh")}, "web", port=8080)
    if second_import == "by_name":
        cluster = _imported(other, "Mesh", "mesh")
    else:
        cluster = ecs.Cluster.from_cluster_arn(
            other, "Mesh", "arn:aws:ecs:us-east-1:111111111111:cluster/mesh"
        )
    # WHEN a service in the other stack takes the same proxy port
    # THEN synth stops: both land on the same hosts
    with pytest.raises(ValueError, match=r"proxy_port 20000 of mesh service 'api' collides"):
        _service(other, {**common, "cluster": cluster}, "api", port=8081)


def test_imported_clusters_of_other_names_or_accounts_do_not_collide(tmp_path: Path) -> None:
    app, _, common = scaffold(tmp_path)
    first = cdk.Stack(app, "First", env=cdk.Environment(account="111111111111", region="us-east-1"))
    _service(first, {**common, "cluster": _imported(first, "Mesh", "mesh")}, "web", port=8080)
    _service(first, {**common, "cluster": _imported(first, "Edge", "edge")}, "api", port=8080)
    elsewhere = cdk.Stack(
        app, "Elsewhere", env=cdk.Environment(account="222222222222", region="us-east-1")
    )
    _service(
        elsewhere, {**common, "cluster": _imported(elsewhere, "Mesh", "mesh")}, "db", port=8080
    )


def _warnings(stack: cdk.Stack) -> dict[str, list[str]]:
    """Synth-time warnings by construct path."""
    found = Annotations.from_stack(stack).find_warning("*", Match.any_value())
    by_path: dict[str, list[str]] = {}
    for message in found:
        by_path.setdefault(message.id, []).append(str(message.entry.data))
    return by_path


def test_host_mode_without_health_path_warns_that_only_the_sidecar_is_checked(
    tmp_path: Path,
) -> None:
    # GIVEN host-mode services with and without a health path, and a bridge one without
    _, stack, common = scaffold(tmp_path)
    _service(stack, common, "web", port=8080)
    _service(
        stack,
        common,
        "api",
        port=8081,
        proxy_port=20001,
        prometheus_port=9103,
        health_check_path="/ready",
    )
    _service(
        stack, common, "db", port=8082, network_mode="bridge", insecure_published_app_port=True
    )
    # WHEN the stack is synthesized
    warnings = _warnings(stack)
    # THEN exactly the host-mode service without a path is flagged, by name, with what its
    # only check proves
    assert list(warnings) == ["/Test/Web"]
    (message,) = warnings["/Test/Web"]
    assert "mesh service 'web' has no health_check_path" in message
    assert "only proves that its Envoy sidecar is up" in message
    assert "consul-mesh:MeshService.noHealthCheckPath" in message


def test_an_accepted_tcp_check_is_acknowledged_with_its_reason(tmp_path: Path) -> None:
    # GIVEN a host-mode service without a path whose TCP-only check is accepted for a reason
    _, stack, common = scaffold(tmp_path)
    web = _service(stack, common, "web", port=8080)
    web.accept_tcp_check("speaks gRPC only; a crash stops the task")
    # THEN the warning is acknowledged where the synth gate and the review read it: the
    # construct's acknowledged rules, with the reason
    metadata = {
        entry.type: entry.data for entry in web.node.metadata if entry.type.startswith("aws:cdk:")
    }
    assert metadata["aws:cdk:acknowledged-rules"] == {
        f"Annotation::{NO_HEALTH_PATH_WARNING}": "speaks gRPC only; a crash stops the task"
    }
    assert _warnings(stack) == {}
    # AND there is nothing to accept on a service that has a path
    api = _service(
        stack,
        common,
        "api",
        port=8081,
        proxy_port=20001,
        prometheus_port=9103,
        health_check_path="/ready",
    )
    with pytest.raises(ValueError, match=r"no TCP-only check to accept"):
        api.accept_tcp_check("why not")


def test_inbound_host_ports_name_what_the_consul_servers_must_reach(tmp_path: Path) -> None:
    _, stack, common = scaffold(tmp_path)
    host = _service(stack, common, "web", port=8080, health_check_path="/health")
    bridge = _service(
        stack, common, "api", port=8080, network_mode="bridge", insecure_published_app_port=True
    )
    # host mode: the Envoy listeners (public, expose) lie in the range issue 13 opens
    assert host.inbound_host_ports == ENVOY_INBOUND_PORTS
    assert host.ports.inbound() == {"proxy_port": 20000, "expose_port": 20500}
    # bridge mode: whatever the ECS agent picks from its dynamic host port range
    assert bridge.inbound_host_ports == BRIDGE_DYNAMIC_HOST_PORTS == (32768, 60999)
    assert bridge.ports.inbound() == {}


def test_demo_services_run_one_task_per_host_so_a_deploy_needs_no_host(
    tmp_path: Path,
) -> None:
    # GIVEN the default app (demo on) and no ECS Anywhere host registered yet
    # WHEN it is synthesized
    # THEN the demo services are DAEMON services: stable at zero tasks, so CloudFormation
    #      does not wait for tasks it cannot place, and each host that joins gets one of each
    from app import build_app
    from tests.conftest import cdk_json_context

    app = build_app(cdk_json_context(), outdir=str(tmp_path))
    (stack,) = [s for s in app.node.children if isinstance(s, cdk.Stack)]
    services = Template.from_stack(stack).find_resources("AWS::ECS::Service")
    assert len(services) == 2
    for service in services.values():
        props = service["Properties"]
        assert props["SchedulingStrategy"] == "DAEMON"
        assert props["LaunchType"] == "EXTERNAL"
        assert "DesiredCount" not in props


def test_demo_stays_on_grpc_tls_when_plaintext_listeners_are_opened(tmp_path: Path) -> None:
    # GIVEN the default app with the fleet's plaintext 8500/8502 opt-in
    from app import build_app
    from tests.conftest import cdk_json_context

    context = {**cdk_json_context(), "plaintext_listeners": "true"}
    app = build_app(context, outdir=str(tmp_path))
    (stack,) = [s for s in app.node.children if isinstance(s, cdk.Stack)]
    template = Template.from_stack(stack)
    # THEN the demo's sidecars still take xDS over gRPC-TLS 8503 with the Consul CA: the
    # option opens ports for other clients and never downgrades the project's own sidecars
    for service in ("frontend", "backend"):
        init = containers(template, service)["envoy-init"]
        env = {e["Name"]: e["Value"] for e in init["Environment"]}
        assert "CONSUL_GRPC_PLAINTEXT" not in env, service
        assert env.get("CONSUL_GRPC_PORT", "8503") == "8503", service
        assert {s["Name"] for s in init["Secrets"]} == {"CONSUL_HTTP_TOKEN", "CONSUL_CACERT_PEM"}
