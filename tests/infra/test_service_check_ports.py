"""The Consul servers may reach every MeshService of the stack where it listens, not only host mode.

consul-esm on the servers checks each service through its host ports; the servers' egress to
on-prem is closed except for what the stack opens. A service whose ports lie outside
`ENVOY_INBOUND_PORTS` (bridge mode: ECS's dynamic host ports) must get its range opened too, or
its checks stay critical and Consul routes nothing to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Template

from mesh_stack.config import MeshConfig
from mesh_stack.mesh_service import MeshService
from mesh_stack.ports import BRIDGE_DYNAMIC_HOST_PORTS, ENVOY_INBOUND_PORTS
from mesh_stack.stack import MeshStack
from tests.conftest import cdk_json_context

ONPREM = ["192.168.0.0/16", "172.20.0.0/16"]


def server_egress_to_onprem(template: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    (servers,) = (
        v
        for v in template["Resources"].values()
        if v["Type"] == "AWS::EC2::SecurityGroup"
        and v["Properties"]["GroupDescription"].startswith("Consul servers")
    )
    return sorted(
        (r["IpProtocol"], r["FromPort"], r["ToPort"], r["CidrIp"])
        for r in servers["Properties"].get("SecurityGroupEgress", [])
        if r["CidrIp"] in ONPREM
    )


def bridge_service(stack: MeshStack, name: str, key: kms.IKey) -> MeshService:
    return MeshService(
        stack,
        name.capitalize(),
        cluster=stack.cluster,
        service_name=name,
        image=ecs.ContainerImage.from_registry("registry.example/app:1.0"),
        port=8080,
        token_secret=secretsmanager.Secret(stack, f"{name}Token", encryption_key=key),
        ca_secret=secretsmanager.Secret(stack, f"{name}Ca", encryption_key=key),
        consul_grpc_host=stack.fleet.grpc_host,
        envoy_version="1.34.14",
        log_key=key,
        network_mode="bridge",
        insecure_published_app_port=True,
        desired_count=0,
    )


def test_bridge_services_get_the_dynamic_host_port_range_opened_once_per_onprem_cidr(
    tmp_path: Path,
) -> None:
    # GIVEN the stack without the (host-mode) demo, and two bridge-mode services added to it
    # after its constructor ran, the way an app adds its own services
    context = {**cdk_json_context(), "demo_enabled": False, "onprem_cidrs": ONPREM}
    app = cdk.App(context=context, outdir=str(tmp_path))
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        app, config.stack_name, config=config, env=cdk.Environment(region=config.region)
    )
    key = kms.Key(stack, "ServicesKey", enable_key_rotation=True)
    for name in ("orders", "billing"):
        assert bridge_service(stack, name, key).inbound_host_ports == BRIDGE_DYNAMIC_HOST_PORTS
    template = Template.from_stack(stack).to_json()
    # THEN the servers may reach each on-prem CIDR on the Envoy range and, once for both
    # services, on ECS's dynamic host port range, and nowhere else on-prem
    envoy, bridge = ENVOY_INBOUND_PORTS, BRIDGE_DYNAMIC_HOST_PORTS
    assert server_egress_to_onprem(template) == sorted(
        ("tcp", low, high, cidr) for cidr in ONPREM for low, high in (envoy, bridge)
    )
    # AND a retained resource the app added after the constructor (the services' KMS key) gets
    # the stack's deletion policy too: a failed first create deletes it (retention.py)
    (key_policy,) = (
        r.get("DeletionPolicy")
        for lid, r in template["Resources"].items()
        if lid.startswith("ServicesKey") and r["Type"] == "AWS::KMS::Key"
    )
    assert key_policy == "RetainExceptOnCreate"


def test_a_configured_bridge_service_gets_the_dynamic_range_opened_too(tmp_path: Path) -> None:
    # GIVEN a bridge-mode entry of `services` (the opt-in), beside the host-mode demo
    legacy = {
        "image": "registry.example/legacy:3.1",
        "port": 8080,
        "network_mode": "bridge",
        "insecure_published_app_port": True,
        "count": 0,
    }
    context = {**cdk_json_context(), "onprem_cidrs": ONPREM, "services": {"legacy": legacy}}
    app = cdk.App(context=context, outdir=str(tmp_path))
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        app, config.stack_name, config=config, env=cdk.Environment(region=config.region)
    )
    template = Template.from_stack(stack).to_json()
    # THEN the servers may reach its checks on ECS's dynamic host ports of each on-prem CIDR
    envoy, bridge = ENVOY_INBOUND_PORTS, BRIDGE_DYNAMIC_HOST_PORTS
    assert server_egress_to_onprem(template) == sorted(
        ("tcp", low, high, cidr) for cidr in ONPREM for low, high in (envoy, bridge)
    )
