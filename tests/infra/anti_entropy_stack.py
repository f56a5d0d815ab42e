"""A small stack with the registrar, the reconciler and the monitoring, for template tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager

from mesh_stack.monitoring import Monitoring
from mesh_stack.reconcile import Reconciler
from mesh_stack.registrar import Registrar


@dataclass
class Parts:
    app: cdk.App
    stack: cdk.Stack
    registrar: Registrar
    reconciler: Reconciler
    monitoring: Monitoring | None


def build(
    outdir: Path,
    *,
    reconciler: dict[str, Any] | None = None,
    monitoring: dict[str, Any] | None = None,
    with_monitoring: bool = True,
) -> Parts:
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    cluster = ecs.Cluster(stack, "Cluster", vpc=vpc)
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    token = secretsmanager.Secret(stack, "Token", encryption_key=key)
    ca = secretsmanager.Secret(stack, "Ca", encryption_key=key)
    common: dict[str, Any] = {
        "vpc": vpc,
        "cluster": cluster,
        "consul_http_addr": "https://consul.internal:8501",
        "token_secret": token,
        "ca_secret": ca,
        "key": key,
    }
    registrar = Registrar(stack, "Registrar", **common)
    rec = Reconciler(stack, "Reconciler", registrar=registrar, **(reconciler or {}))
    mon = None
    if with_monitoring:
        balancer = elbv2.NetworkLoadBalancer(stack, "ConsulLoadBalancer", vpc=vpc)
        groups = []
        for port in (8501, 8503):
            group = elbv2.NetworkTargetGroup(
                stack, f"Targets{port}", vpc=vpc, port=port, protocol=elbv2.Protocol.TCP
            )
            balancer.add_listener(
                f"Listener{port}",
                port=port,
                protocol=elbv2.Protocol.TCP,
                default_target_groups=[group],
            )
            groups.append(group)
        options: dict[str, Any] = {"consul_server_count": 3, **(monitoring or {})}
        mon = Monitoring(
            stack,
            "Monitoring",
            registrar=registrar,
            reconciler=rec,
            cluster=cluster,
            consul_target_groups=groups,
            key=key,
            **options,
        )
    return Parts(app, stack, registrar, rec, mon)
