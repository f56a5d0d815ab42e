"""`make preflight`: which network path to on-prem is configured, and what is left to do.

Reads the context of cdk.json and the same `-c key=value` overrides `make synth ARGS=...`
takes, validates them like `app.py` (one-line error naming key, value and what is allowed;
exit 1), and prints what the stack will create for the path, what the operator and the
network team still have to do, and the on-prem firewall rules in both directions. Needs no
AWS credentials, no synthesis and no CDK: it reads only `mesh_stack.config` and the port and
tunnel contracts the stack itself is built from.

    python -m tools.preflight [-c key=value ...] [--cdk-json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh_stack import image_ref
from mesh_stack.config import AMAZON_SIDE_ASN, MeshConfig
from mesh_stack.config_errors import ConfigError
from mesh_stack.onprem_contract import (
    DH_GROUPS,
    ENCRYPTION,
    IKE_VERSIONS,
    INSTALL_SCRIPT,
    INTEGRITY,
    OUTPUT_TGW_ATTACHMENT,
    OUTPUT_VPN_DEVICE_CONFIGURATION,
)
from mesh_stack.ports import (
    CONSUL_GRPC,
    CONSUL_GRPC_TLS,
    CONSUL_HTTP,
    CONSUL_HTTPS,
    ENVOY_INBOUND_PORTS,
)

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"

PATHS = {
    "none": "none (the stack creates no route to on-prem)",
    "vpn": "vpn (AWS Site-to-Site VPN from a virtual private gateway)",
    "transit_gateway": "transit_gateway (attachment to an existing transit gateway)",
}


@dataclass(frozen=True)
class Preflight:
    """What one configuration means for the network path between the VPC and on-prem."""

    path: str
    ready: bool  # False when no route to on-prem exists or is assumed
    creates: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)  # must be done before `make deploy`
    todo: list[str] = field(default_factory=list)
    firewall: list[str] = field(default_factory=list)


def _cidrs(config: MeshConfig) -> str:
    return ", ".join(config.onprem_cidrs)


# Docker Hub's pull hosts: its firewall allowlist (docker/docs
# content/manuals/desktop/setup/allow-list.md, "Docker Pull/Push" and "Authentication" rows, as
# of docker/docs#25122, read 2026-12); the R2 bucket serves anonymous and Personal-plan pulls,
# which the default envoy_image makes.
DOCKER_HUB_HOSTS = (
    "auth.docker.io",
    "registry-1.docker.io",
    "production.cloudflare.docker.com",
    "production.cloudfront.docker.com",
    "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
)
# public.ecr.aws serves image layers from CloudFront (EKS Anywhere prerequisites' firewall list:
# https://anywhere.eks.amazonaws.com/docs/getting-started/prerequisite-checklist/).
ECR_PUBLIC_HOSTS = ("public.ecr.aws", "d2glxqk2uabbnd.cloudfront.net")


# The ECS Anywhere installer (aws/amazon-ecs-agent scripts/ecs-anywhere-install.sh, which the
# ECS developer guide's "Registering an external instance to a cluster" runs): the script from
# amazon-ecs-agent.s3.amazonaws.com, the agents from the Region's bucket by path
# (s3.<region>.amazonaws.com/amazon-ecs-agent-<region>/...), their GPG keys from GitHub; and,
# when Docker is not installed yet, Docker's packages and the OS's package mirrors.
def installer_hosts(region: str) -> list[str]:
    return [
        urllib.parse.urlsplit(INSTALL_SCRIPT).netloc,
        f"s3.{region}.amazonaws.com",
        "raw.githubusercontent.com",
    ]


def image_registries(config: MeshConfig) -> list[str]:
    """The registries the hosts pull this configuration's images from, Docker Hub as its hosts."""
    images = [f"{config.envoy_image}:v{config.envoy_version}", config.init_image]
    images += [spec.image for spec in (*config.demo_services, *config.services)]
    hosts = sorted({image_ref.registry_host(image) for image in images})
    named = {
        image_ref.DOCKER_HUB: "Docker Hub (" + ", ".join(DOCKER_HUB_HOSTS) + ")",
        image_ref.ECR_PUBLIC: "ECR Public (" + ", ".join(ECR_PUBLIC_HOSTS) + ")",
    }
    return [named.get(host, host) for host in hosts]


def firewall_rules(config: MeshConfig) -> list[str]:
    """On-prem firewall rules the mesh needs, in both directions (docs/services.md)."""
    low, high = ENVOY_INBOUND_PORTS
    vpc = f"the VPC {config.vpc_cidr}" if not config.vpc_id else f"the VPC {config.vpc_id}"
    consul = [f"TCP {CONSUL_GRPC_TLS} (Envoy xDS, gRPC-TLS)", f"TCP {CONSUL_HTTPS} (HTTPS API)"]
    if config.plaintext_listeners:
        consul += [f"TCP {CONSUL_GRPC} (gRPC, plaintext opt-in)", f"TCP {CONSUL_HTTP} (HTTP)"]
    region = config.region
    endpoints = ", ".join(
        [
            f"ecs-a-*.{region}.amazonaws.com",
            f"ecs-t-*.{region}.amazonaws.com",
            f"ecs.{region}.amazonaws.com",
            f"ssm.{region}.amazonaws.com",
            f"ec2messages.{region}.amazonaws.com",
            f"ssmmessages.{region}.amazonaws.com",
            f"api.ecr.{region}.amazonaws.com",
            f"*.dkr.ecr.{region}.amazonaws.com",
            f"*.s3.{region}.amazonaws.com",
            f"logs.{region}.amazonaws.com",
            f"secretsmanager.{region}.amazonaws.com",
        ]
    )
    return [
        f"hosts ({_cidrs(config)}) -> Consul NLB in {vpc}: " + ", ".join(consul),
        f"Consul servers (private subnets of {vpc}) -> hosts: TCP {low}-{high} "
        "(consul-esm health checks of the Envoy public and expose listeners)",
        f"hosts <-> hosts: TCP {low}-{high} (mesh traffic between sidecars)",
        f"hosts -> AWS over the internet, TCP 443: {endpoints}",
        "hosts -> the ECS Anywhere installer's downloads, TCP 443, while a host joins: "
        + ", ".join(installer_hosts(region))
        + " (and download.docker.com and the OS package mirrors when Docker is not installed)",
        "hosts -> the registries of this configuration's images, TCP 443: "
        + "; ".join(image_registries(config)),
    ] + [
        f"operators ({cidr}) -> Consul NLB in {vpc}: TCP {CONSUL_HTTPS} (UI and HTTPS API only)"
        for cidr in config.operator_cidrs
    ]


# Site-to-Site VPN User Guide, monitoring-logs.md, "IAM requirements to publish to CloudWatch
# Logs": what the principal creating a VPN connection with tunnel logs needs.
VPN_LOG_ACTIONS = (
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
)
RESTRICTED_BOOTSTRAP = (
    "only if your CDK bootstrap uses a restricted --cloudformation-execution-policies (the "
    "default is AdministratorAccess): "
)


def plan(config: MeshConfig) -> Preflight:
    """The network path `config` asks for: what the stack creates and what remains to do."""
    cidrs = _cidrs(config)
    tables = len(config.zones)
    firewall = firewall_rules(config)
    deploy_note = "run `make deploy`; the stack outputs name what the steps below need"
    if config.vpc_id:
        return Preflight(
            path=f"none, with the existing VPC {config.vpc_id} (assumed routed to on-prem)",
            ready=True,
            creates=["no gateway and no route: the existing VPC's routing is yours"],
            todo=[
                f"check that the route table of every private subnet of {config.vpc_id} "
                f"sends {cidrs} to your VPN gateway, transit gateway or Direct Connect",
                f"check that on-prem routes the VPC's CIDR back towards it ({cidrs})",
                "open the on-prem firewall as listed below",
            ],
            firewall=firewall,
        )
    if config.onprem_connectivity == "vpn":
        routing = (
            f"BGP: your device (ASN {config.vpn_bgp_asn}) peers with the VPN gateway "
            f"(ASN {AMAZON_SIDE_ASN}) over both tunnels"
            if config.vpn_bgp_asn is not None
            else f"static routing: VPN connection routes for {cidrs}"
        )
        route_back = (
            f"advertise {cidrs} over BGP on both tunnels; you learn {config.vpc_cidr}"
            if config.vpn_bgp_asn is not None
            else f"route {config.vpc_cidr} into both tunnels on the device"
        )
        return Preflight(
            path=PATHS["vpn"],
            ready=True,
            creates=[
                f"virtual private gateway (Amazon side ASN {AMAZON_SIDE_ASN}) attached to the VPC",
                f"customer gateway for your device at {config.vpn_customer_gateway_ip}, device "
                f"name {config.stack_name} (other stacks may use the same device)",
                "one VPN connection, two tunnels; they accept only "
                f"{'/'.join(IKE_VERSIONS)}, {'/'.join(ENCRYPTION)}, {'/'.join(INTEGRITY)}, "
                f"DH groups {DH_GROUPS[0]}-{DH_GROUPS[-1]}; tunnel logs in CloudWatch Logs "
                f"(/aws/vendedlogs/{config.stack_name}/vpn-tunnels/...)",
                routing,
                f"a route to the VPN gateway for {cidrs} in each of the {tables} private "
                "route tables (Consul servers, NLB, Lambdas)",
            ],
            before=[
                RESTRICTED_BOOTSTRAP
                + "its execution role needs "
                + ", ".join(VPN_LOG_ACTIONS)
                + " on * for the tunnel logs (Site-to-Site VPN User Guide, VPN logs)",
            ],
            todo=[
                deploy_note,
                f"download the device configuration (output {OUTPUT_VPN_DEVICE_CONFIGURATION}:"
                " console or aws ec2 get-vpn-connection-device-sample-configuration); it holds"
                " the pre-shared keys, keep it secret",
                "configure both tunnels on the device with the parameters above; allow UDP "
                "500, UDP 4500 and ESP (IP protocol 50) between the device and both tunnel "
                "outside addresses",
                route_back,
                "check: both tunnels UP in the console (VPC > Site-to-Site VPN connections)",
                "open the on-prem firewall as listed below",
            ],
            firewall=firewall,
        )
    if config.onprem_connectivity == "transit_gateway":
        tgw = config.transit_gateway_id
        return Preflight(
            path=PATHS["transit_gateway"],
            ready=True,
            creates=[
                f"attachment of the {tables} private subnets to {config.transit_gateway_id}",
                f"a route to {config.transit_gateway_id} for {cidrs} in each of the {tables} "
                "private route tables (Consul servers, NLB, Lambdas)",
            ],
            before=[
                "if the transit gateway belongs to another account (shared through AWS RAM): "
                "accept the resource share in this account (automatic within an AWS "
                "Organization with RAM sharing enabled), then check that this account sees "
                f"it: aws ec2 describe-transit-gateways --transit-gateway-ids {tgw} "
                '--query "TransitGateways[0].[State,Options.AutoAcceptSharedAttachments]"; '
                "otherwise the attachment fails with InvalidTransitGatewayID.NotFound",
                "if it belongs to another account and AutoAcceptSharedAttachments is not "
                "enable (the default is disable): the owner must accept this VPC attachment "
                "WHILE `make deploy` runs; it waits in pendingAcceptance and the routes to the "
                "gateway cannot be used before (the stack output does not exist yet). The "
                "owner finds it with: aws ec2 describe-transit-gateway-attachments --filters "
                f"Name=transit-gateway-id,Values={tgw} Name=state,Values=pendingAcceptance "
                "and accepts it with: aws ec2 accept-transit-gateway-vpc-attachment "
                "--transit-gateway-attachment-id <tgw-attach-...>",
                RESTRICTED_BOOTSTRAP + "its execution role needs iam:CreateServiceLinkedRole for "
                "AWSServiceRoleForVPCTransitGateway (the first attachment in an account "
                "creates it)",
            ],
            todo=[
                deploy_note,
                "network team, in the transit gateway route table associated with the "
                f"attachment (output {OUTPUT_TGW_ATTACHMENT}): a route (or propagation) for "
                f"{cidrs} towards the on-prem VPN or Direct Connect attachment",
                "network team, in the route table of the on-prem attachment: "
                f"{config.vpc_cidr} towards this attachment (or propagate it)",
                f"on-prem: route {config.vpc_cidr} towards the transit gateway",
                "open the on-prem firewall as listed below",
            ],
            firewall=firewall,
        )
    return Preflight(
        path=PATHS["none"],
        ready=False,
        creates=[f"nothing: the created VPC ({config.vpc_cidr}) has no route to {cidrs}"],
        todo=[
            "choose a path (README, Prerequisites): -c onprem_connectivity=vpn "
            "-c vpn_customer_gateway_ip=<device public IPv4> [-c vpn_bgp_asn=<asn>], or "
            "-c onprem_connectivity=transit_gateway -c transit_gateway_id=<tgw-...>, or "
            "deploy into a VPC that is already routed (-c vpc_id=... -c account=...)",
            f"or add routes for {cidrs} to the {tables} private route tables yourself after "
            "the deploy: until then hosts cannot reach Consul and no check passes",
            "open the on-prem firewall as listed below",
        ],
        firewall=firewall,
    )


def render(result: Preflight) -> str:
    lines = [f"On-prem network path: {result.path}"]
    if not result.ready:
        lines.append("ACTION REQUIRED: no network path to on-prem is configured.")
    lines += ["", "The stack creates:"]
    lines += [f"  - {item}" for item in result.creates]
    if result.before:
        lines += ["", "BEFORE `make deploy`:"]
        lines += [f"  {n}. {item}" for n, item in enumerate(result.before, start=1)]
    lines += ["", "What remains for you:"]
    lines += [f"  {n}. {item}" for n, item in enumerate(result.todo, start=1)]
    lines += ["", "On-prem firewall (both directions):"]
    lines += [f"  - {item}" for item in result.firewall]
    return "\n".join(lines)


def context_from(overrides: Sequence[str], cdk_json: Path) -> dict[str, object]:
    """cdk.json's context, then `key=value` overrides (strings, as the CDK CLI passes them)."""
    context: dict[str, object] = dict(json.loads(cdk_json.read_text()).get("context", {}))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid context argument {item!r}: expected key=value")
        context[key] = value
    return context


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make preflight",
        description="Which network path to on-prem is configured, and what is left to do.",
    )
    parser.add_argument(
        "-c", "--context", action="append", default=[], metavar="KEY=VALUE", dest="context"
    )
    parser.add_argument("--cdk-json", type=Path, default=CDK_JSON)
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"preflight: ignoring non-context arguments: {' '.join(ignored)}", file=sys.stderr)
    try:
        config = MeshConfig.from_context(context_from(args.context, args.cdk_json))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render(plan(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
