"""Network paths into the VPC: routes, VPN connections, transit gateway and peering attachments.

"Inside the VPC" and an internal load balancer are only as private as the networks routed to
the VPC (review M3): a VPN connection, a transit gateway attachment (which connects the VPC to
whatever the transit gateway's route table propagates, not only on-prem) or a peering brings
more clients. Each is listed with what it connects; route propagation from a virtual private
gateway means routes learnt over BGP, which are not in the templates at all.

Targets of AWS::EC2::Route as in the CloudFormation resource reference (AWS::EC2::Route):
exactly one of the target properties below is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.review.load import Assembly, Json
from tools.review.model import Res
from tools.review.refs import flatten

_ROUTE_TARGETS = {
    "GatewayId": "gateway",  # internet gateway or virtual private gateway
    "TransitGatewayId": "transit gateway",
    "VpcPeeringConnectionId": "VPC peering",
    "NatGatewayId": "NAT gateway",
    "NetworkInterfaceId": "network interface",
    "InstanceId": "instance",
    "VpcEndpointId": "VPC endpoint",
    "CarrierGatewayId": "carrier gateway",
    "EgressOnlyInternetGatewayId": "egress-only internet gateway",
    "LocalGatewayId": "local gateway",
    "CoreNetworkArn": "Cloud WAN core network",
}
# Routes whose target only sends traffic out: no new client reaches the VPC through them.
OUTBOUND_ONLY = ("NAT gateway", "egress-only internet gateway", "VPC endpoint")

_ATTACHMENTS = {
    "AWS::EC2::VPNConnection": "VPN connection",
    "AWS::EC2::TransitGatewayAttachment": "transit gateway attachment",
    "AWS::EC2::TransitGatewayVpcAttachment": "transit gateway attachment",
    "AWS::EC2::VPCPeeringConnection": "VPC peering connection",
    "AWS::EC2::VPCGatewayAttachment": "gateway attachment",
    "AWS::EC2::VPNGatewayRoutePropagation": "route propagation (routes learnt over BGP, "
    "not in the templates)",
    "AWS::EC2::VPNConnectionRoute": "VPN static route",
}


@dataclass(frozen=True)
class NetworkPath:
    res: Res
    kind: str  # "route", or one of the attachment kinds above
    what: str  # "10.50.0.0/16 → transit gateway <Tgw>"
    inbound: bool  # may bring clients into the VPC


def _value(props: dict[str, Json], *keys: str) -> str:
    return next((flatten(props[key]) for key in keys if props.get(key) is not None), "?")


def _route(props: dict[str, Json]) -> tuple[str, bool]:
    destination = _value(
        props, "DestinationCidrBlock", "DestinationIpv6CidrBlock", "DestinationPrefixListId"
    )
    for key, name in _ROUTE_TARGETS.items():
        if props.get(key) is not None:
            return f"{destination} → {name} {flatten(props[key])}", name not in OUTBOUND_ONLY
    return f"{destination} → ?", True


def _attachment(kind: str, props: dict[str, Json]) -> str:
    if kind == "VPN connection":
        gateway = _value(props, "VpnGatewayId", "TransitGatewayId")
        return f"customer gateway {_value(props, 'CustomerGatewayId')} ↔ {gateway}"
    if kind == "VPN static route":
        return f"{_value(props, 'DestinationCidrBlock')} over {_value(props, 'VpnConnectionId')}"
    if kind == "transit gateway attachment":
        gateway = _value(props, "TransitGatewayId")
        return f"VPC {_value(props, 'VpcId')} ↔ transit gateway {gateway}"
    if kind == "VPC peering connection":
        peer = _value(props, "PeerVpcId")
        owner = props.get("PeerOwnerId")
        return f"VPC {_value(props, 'VpcId')} ↔ {peer}" + (
            f" of account {flatten(owner)}" if owner is not None else ""
        )
    if kind == "gateway attachment":
        gateway = _value(props, "InternetGatewayId", "VpnGatewayId")
        return f"VPC {_value(props, 'VpcId')} ↔ {gateway}"
    return f"{_value(props, 'VpnGatewayId')} into route tables"


def network_paths(assembly: Assembly) -> list[NetworkPath]:
    found: list[NetworkPath] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources.items():
            kind = str(resource.get("Type"))
            props = resource.get("Properties") or {}
            if kind == "AWS::EC2::Route":
                what, inbound = _route(props)
                found.append(NetworkPath(stack.res(logical_id), "route", what, inbound))
            elif kind in _ATTACHMENTS:
                name = _ATTACHMENTS[kind]
                found.append(
                    NetworkPath(stack.res(logical_id), name, _attachment(name, props), True)
                )
    return found
