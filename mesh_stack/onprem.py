"""The routed path between the VPC's private subnets and the on-prem networks.

Envoy on an on-prem host dials the internal NLB (8503, 8501) and consul-esm on the Consul
servers dials the hosts' Envoy listeners (`ports.ENVOY_INBOUND_PORTS`): both need a route in
each direction. `onprem_connectivity` chooses who provides it:

- `none`: nothing is created here (an existing `vpc_id` is assumed routed; a created VPC
  has no route to on-prem until the operator adds one, `make preflight` says so);
- `vpn`: `OnPremVpn`, an AWS Site-to-Site VPN from a virtual private gateway to one device;
- `transit_gateway`: `OnPremTransitGateway`, the private subnets attached to an existing
  transit gateway whose route tables the network team owns.

Either way, every private route table (servers, NLB, Lambdas) gets one route per on-prem
CIDR to the gateway: explicit `AWS::EC2::Route`s rather than VGW route propagation, so the
template itself shows where each on-prem CIDR goes, for static and BGP VPNs alike (with BGP
the gateway still picks the live tunnel), and nothing wider than `onprem_cidrs` is learned.
Public subnets (NAT gateways only) get no route to on-prem. The routes live under one
path-independent scope (`OnPremRoutes`), so switching `vpn` <-> `transit_gateway` updates each
route in place (ReplaceRoute) instead of creating a second route for the same destination.

Sources (CloudFormation template reference, docs.aws.amazon.com/AWSCloudFormation/latest/
TemplateReference/): aws-resource-ec2-customergateway (BgpAsn up to 2,147,483,647, larger ASNs
in BgpAsnExtended; one of them required), aws-resource-ec2-vpnconnection (StaticRoutesOnly for
devices without BGP) and its VpnTunnelOptionsSpecification / CloudwatchLogOptionsSpecification,
aws-resource-ec2-transitgatewayattachment (one subnet per AZ), aws-resource-ec2-route (routes to
a gateway depend on its attachment; its schema's createOnlyProperties are only RouteTableId and
the destination, so GatewayId/TransitGatewayId change in place); the EC2 API's
CreateVpnGateway (AmazonSideAsn default 64512) and CreateCustomerGateway ("To create more than
one customer gateway with the same VPN type, IP address, and BGP ASN, specify a unique device
name"). Every property is also validated by cfn-lint against the resource schemas
(tests/infra/test_onprem.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import ArnFormat, Aws, CfnResource, Fn, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from mesh_stack.config import AMAZON_SIDE_ASN, BGP_ASN_EXTENDED_MIN, MeshConfig
from mesh_stack.onprem_contract import (
    DH_GROUPS,
    ENCRYPTION,
    IKE_VERSIONS,
    INTEGRITY,
    OUTPUT_TGW_ATTACHMENT,
    OUTPUT_VPN_CONNECTION,
    OUTPUT_VPN_DEVICE_CONFIGURATION,
    device_config_hint,
)

# The customer gateway needs an ASN even for static routing (AWS::EC2::CustomerGateway: one of
# BgpAsn/BgpAsnExtended must be set); 65000 is the API default and is never used without BGP.
STATIC_CUSTOMER_ASN = 65000


def routed_cidrs(config: MeshConfig) -> tuple[str, ...]:
    """The networks the stack routes to on-prem: `onprem_cidrs`, then every `operator_cidrs`
    network the VPC cannot otherwise answer. An operator network inside `vpc_cidr` (a bastion
    subnet) is reached by the VPC's local route; one inside an on-prem CIDR is already routed
    with it. Without the rest, the load balancer's replies to an operator outside both would
    have no route back (the servers' security group lets them in; `MeshStack`)."""
    # IPv4 only: config refuses anything else for all three keys.
    onprem = [ipaddress.IPv4Network(cidr) for cidr in config.onprem_cidrs]
    vpc = ipaddress.IPv4Network(config.vpc_cidr)
    extra: list[str] = []
    for cidr in config.operator_cidrs:
        network = ipaddress.IPv4Network(cidr)
        if network.subnet_of(vpc) or any(network.subnet_of(o) for o in onprem):
            continue
        if cidr not in extra:
            extra.append(cidr)
    return (*config.onprem_cidrs, *extra)


def private_route_tables(vpc: ec2.IVpc) -> list[tuple[str, str]]:
    """(subnet construct id, route table id) of every private subnet with egress."""
    subnets = vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnets
    return [(subnet.node.id, subnet.route_table.route_table_id) for subnet in subnets]


ROUTES_ID = "OnPremRoutes"


def route_onprem(
    scope: Construct,
    *,
    vpc: ec2.IVpc,
    onprem_cidrs: Sequence[str],
    path: OnPremVpn | OnPremTransitGateway,
) -> list[ec2.CfnRoute]:
    """One route per on-prem CIDR in every private route table, to `path`'s gateway.

    The routes are created under `scope`/OnPremRoutes whatever the path, so a route's logical
    ID depends only on its table and CIDR. Switching paths then changes each route's target in
    place (AWS::EC2::Route schema: only RouteTableId and the destination are create-only), after
    the new attachment exists; with a per-path scope CloudFormation would create the new route
    first and EC2 would refuse a second route for the same destination in the same table.

    A route to a VPN gateway or a transit gateway fails until the gateway is attached to the
    VPC (AWS::EC2::Route: "declare a dependency on the transit gateway attachment"), so each
    route depends on the path's attachment resource.
    """
    if not onprem_cidrs:
        raise ValueError("route_onprem needs at least one on-prem CIDR to route")
    routes_scope = Construct(scope, ROUTES_ID)
    routes = []
    for subnet_id, route_table_id in private_route_tables(vpc):
        for cidr in onprem_cidrs:
            route = ec2.CfnRoute(
                routes_scope,
                f"{subnet_id}To{cidr.replace('/', '-')}",
                route_table_id=route_table_id,
                destination_cidr_block=cidr,
                gateway_id=path.gateway_id,
                transit_gateway_id=path.transit_gateway_id,
            )
            route.node.add_dependency(path.attachment)
            routes.append(route)
    return routes


def tunnel_log_group_name(stack_name: str) -> str:
    """`/aws/vendedlogs/<stack name>/vpn-tunnels/<stack UUID>`.

    The VPN service adds the group to the account's CloudWatch Logs resource policy, which is
    capped at 5,120 characters; groups under `/aws/vendedlogs/` do not grow it (Site-to-Site VPN
    User Guide, monitoring-logs.md, "Amazon CloudWatch Logs resource policy size
    restrictions"). The stack's UUID (the last part of AWS::StackId) keeps the name unique per
    stack creation: the group is retained when the stack is deleted (the CDK default), and a
    fixed name would make the next deploy of the same stack fail on the retained group.
    """
    return Fn.join(
        "",
        [
            f"/aws/vendedlogs/{stack_name}/vpn-tunnels/",
            Fn.select(2, Fn.split("/", Aws.STACK_ID)),
        ],
    )


def _tunnel_options(
    log_group_arn: str, *, bgp: bool
) -> ec2.CfnVPNConnection.VpnTunnelOptionsSpecificationProperty:
    """Both tunnels' options: the algorithms of onprem_contract, IKE/IPsec (and BGP) logs."""

    def values(items: Sequence[str | int]) -> list[dict[str, str | int]]:
        # Every *RequestListValue of the resource is a struct with a single `Value`.
        return [{"value": item} for item in items]

    cls = ec2.CfnVPNConnection
    return cls.VpnTunnelOptionsSpecificationProperty(
        ike_versions=values(IKE_VERSIONS),
        phase1_encryption_algorithms=values(ENCRYPTION),
        phase2_encryption_algorithms=values(ENCRYPTION),
        phase1_integrity_algorithms=values(INTEGRITY),
        phase2_integrity_algorithms=values(INTEGRITY),
        phase1_dh_group_numbers=values(DH_GROUPS),
        phase2_dh_group_numbers=values(DH_GROUPS),
        log_options=cls.VpnTunnelLogOptionsSpecificationProperty(
            cloudwatch_log_options=cls.CloudwatchLogOptionsSpecificationProperty(
                log_enabled=True,
                log_group_arn=log_group_arn,
                log_output_format="json",
                bgp_log_enabled=True if bgp else None,
                bgp_log_group_arn=log_group_arn if bgp else None,
                bgp_log_output_format="json" if bgp else None,
            )
        ),
    )


class OnPremVpn(Construct):
    """A Site-to-Site VPN between the VPC and one on-prem VPN device.

    vpc: the created VPC, attached to the VPN gateway (`attachment`); `route_onprem` points
        its private route tables at the gateway (`gateway_id`).
    onprem_cidrs: on-prem networks of the ECS Anywhere hosts (static VPN routes).
    customer_gateway_ip: public IPv4 of the on-prem device's outside interface (or its NAT).
    bgp_asn: the device's BGP ASN for dynamic routing; None = static routes, one VPN
        connection route per on-prem CIDR.
    log_key: KMS key of the tunnel log group (IKE/IPsec negotiation, DPD; both tunnels).

    The pre-shared keys are generated by AWS and never appear in the template; they are in
    the device configuration the operator downloads after the deploy (`device_config_hint`).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        onprem_cidrs: Sequence[str],
        customer_gateway_ip: str,
        bgp_asn: int | None = None,
        log_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        if not onprem_cidrs:
            raise ValueError("OnPremVpn needs at least one on-prem CIDR to route")
        if bgp_asn == AMAZON_SIDE_ASN:
            raise ValueError(f"bgp_asn must differ from the Amazon side ASN {AMAZON_SIDE_ASN}")
        self.gateway = ec2.CfnVPNGateway(
            self, "Gateway", type="ipsec.1", amazon_side_asn=AMAZON_SIDE_ASN
        )
        self.attachment: CfnResource = ec2.CfnVPCGatewayAttachment(
            self, "Attachment", vpc_id=vpc.vpc_id, vpn_gateway_id=self.gateway.ref
        )
        # Where the VPC's on-prem routes point (route_onprem).
        self.gateway_id: str | None = self.gateway.ref
        self.transit_gateway_id: str | None = None
        asn = STATIC_CUSTOMER_ASN if bgp_asn is None else bgp_asn
        self.customer_gateway = ec2.CfnCustomerGateway(
            self,
            "CustomerGateway",
            type="ipsec.1",
            ip_address=customer_gateway_ip,
            bgp_asn=asn if asn < BGP_ASN_EXTENDED_MIN else None,
            bgp_asn_extended=asn if asn >= BGP_ASN_EXTENDED_MIN else None,
            # CreateCustomerGateway returns the existing gateway for an identical request (type,
            # IP, ASN); static routing always uses ASN 65000, so a second stack in the account
            # for the same device (dev and prod, or the network team's own gateway) would
            # collide. A unique device name makes each stack's gateway its own (EC2 API
            # reference, CreateCustomerGateway; DeviceName: up to 255 characters, create-only).
            device_name=Stack.of(self).stack_name,
        )
        self.tunnel_logs = logs.LogGroup(
            self,
            "TunnelLogs",
            log_group_name=tunnel_log_group_name(Stack.of(self).stack_name),
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=log_key,
        )
        # The log group's own ARN, `arn:<partition>:logs:<region>:<account>:log-group:<name>`,
        # not CloudFormation's `Arn` attribute, which appends `:*` (for IAM resource patterns).
        tunnel_log_arn = Stack.of(self).format_arn(
            service="logs",
            resource="log-group",
            resource_name=self.tunnel_logs.log_group_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        static = bgp_asn is None
        self.connection = ec2.CfnVPNConnection(
            self,
            "Connection",
            type="ipsec.1",
            customer_gateway_id=self.customer_gateway.ref,
            vpn_gateway_id=self.gateway.ref,
            static_routes_only=static,
            vpn_tunnel_options_specifications=[_tunnel_options(tunnel_log_arn, bgp=not static)] * 2,
        )
        if static:
            for cidr in onprem_cidrs:
                ec2.CfnVPNConnectionRoute(
                    self,
                    f"StaticRouteTo{cidr.replace('/', '-')}",
                    destination_cidr_block=cidr,
                    vpn_connection_id=self.connection.ref,
                )
        Tags.of(self).add("Name", self.node.path)
        self.vpn_connection_id = self.connection.ref

    def outputs(self) -> dict[str, tuple[str, str]]:
        """Stack outputs: name -> (value, description)."""
        return {
            OUTPUT_VPN_CONNECTION: (
                self.vpn_connection_id,
                "Site-to-Site VPN connection to the on-prem device",
            ),
            OUTPUT_VPN_DEVICE_CONFIGURATION: (
                device_config_hint(self.vpn_connection_id),
                "Where to download the on-prem device's configuration (tunnel addresses, "
                "pre-shared keys: treat it as a secret)",
            ),
        }


class OnPremTransitGateway(Construct):
    """The VPC's private subnets attached to an existing transit gateway, routed to on-prem.

    vpc: the created VPC; one attachment subnet per AZ (its private subnets, which the
        transit gateway takes one address from). `route_onprem` points its private route
        tables at the transit gateway (`transit_gateway_id`).
    transit_gateway_id: the existing gateway (same account, or shared through AWS RAM).

    The transit gateway's route tables stay the network team's: docs/services.md lists what
    they add (association, the VPC CIDR towards this attachment, on-prem CIDRs towards their
    VPN or Direct Connect attachment), and acceptance when the gateway is in another account.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        transit_gateway_id: str,
    ) -> None:
        super().__init__(scope, construct_id)
        subnets = vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.attachment: CfnResource = ec2.CfnTransitGatewayAttachment(
            self,
            "Attachment",
            transit_gateway_id=transit_gateway_id,
            vpc_id=vpc.vpc_id,
            subnet_ids=subnets.subnet_ids,
        )
        # Where the VPC's on-prem routes point (route_onprem).
        self.gateway_id: str | None = None
        self.transit_gateway_id: str | None = transit_gateway_id
        Tags.of(self).add("Name", self.node.path)
        self.attachment_id = self.attachment.ref

    def outputs(self) -> dict[str, tuple[str, str]]:
        """Stack outputs: name -> (value, description)."""
        return {
            OUTPUT_TGW_ATTACHMENT: (
                self.attachment_id,
                "Transit gateway attachment of the private subnets; the network team routes "
                "the VPC CIDR to it",
            ),
        }


@dataclass(frozen=True)
class OnPremConnection:
    """The path to on-prem and the routes to it: `path` is `OnPremVpn` or `OnPremTransitGateway`,
    `routes` are one per (private route table, on-prem CIDR), under `OnPremRoutes`."""

    path: OnPremVpn | OnPremTransitGateway
    routes: list[ec2.CfnRoute]

    def outputs(self) -> dict[str, tuple[str, str]]:
        """Stack outputs of the path: name -> (value, description)."""
        return self.path.outputs()


def connect_onprem(
    scope: Construct, *, config: MeshConfig, vpc: ec2.IVpc, log_key: kms.IKey
) -> OnPremConnection | None:
    """The path `config.onprem_connectivity` asks for and its routes, or None for `none`.

    Each path has its own construct ID, so its gateway, attachment and VPN resources share no
    logical ID with the other path's: switching from one to the other creates the new path and
    deletes the old one instead of asking CloudFormation to change a resource's type (which it
    refuses). The routes are the opposite: one scope for both paths, so that the same switch
    re-targets each route in place (`route_onprem`).
    """
    path: OnPremVpn | OnPremTransitGateway
    if config.onprem_connectivity == "vpn":
        path = OnPremVpn(
            scope,
            "OnPremVpn",
            vpc=vpc,
            onprem_cidrs=routed_cidrs(config),
            customer_gateway_ip=config.vpn_customer_gateway_ip,
            bgp_asn=config.vpn_bgp_asn,
            log_key=log_key,
        )
    elif config.onprem_connectivity == "transit_gateway":
        path = OnPremTransitGateway(
            scope,
            "OnPremTransitGateway",
            vpc=vpc,
            transit_gateway_id=config.transit_gateway_id,
        )
    else:
        return None
    routes = route_onprem(scope, vpc=vpc, onprem_cidrs=routed_cidrs(config), path=path)
    return OnPremConnection(path, routes)
