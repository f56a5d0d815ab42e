"""What security group rules are made of: protocols, port ranges, peers and the VPC's CIDRs.

Shared by ingress (`exposure`) and egress (`egress`): a peer is a CIDR, a security group or a
prefix list, judged against the CIDRs of the VPC its group lives in (or, when that VPC is not
in any template, every VPC of the assembly plus `--vpc-cidr`). Anything the review cannot
resolve counts as outside the VPC.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.refs import Resolver, Target, flatten

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SECURITY_GROUP = "AWS::EC2::SecurityGroup"
INGRESS = "AWS::EC2::SecurityGroupIngress"
EGRESS = "AWS::EC2::SecurityGroupEgress"
VPC = "AWS::EC2::VPC"
VPC_CIDR = "AWS::EC2::VPCCidrBlock"

_PROTOCOLS = {"-1": "all", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}
_VPC_ATTRIBUTES = ("CidrBlock", "Ipv6CidrBlocks", "Ipv6CidrBlock", "CidrBlockAssociations")


class Reach(enum.Enum):
    ANYWHERE = "CRITICAL: any address"
    OUTSIDE_VPC = "outside the VPC"
    UNRESOLVED = "unresolved source (counted as outside the VPC)"
    GROUP = "security group"
    INSIDE_VPC = "inside the VPC"
    # An ELBv2 network load balancer without security groups admits every client routed to
    # its subnets: the VPC, and whatever VPN, transit gateway or peering routes lead there
    # (AWS re:Post knowledge center "security-group-load-balancer").
    ROUTED = "every network routed to the VPC"

    @property
    def external(self) -> bool:
        """Reachable from outside the VPC, as far as the template can tell."""
        return self in (Reach.ANYWHERE, Reach.OUTSIDE_VPC, Reach.UNRESOLVED, Reach.ROUTED)


def protocol_name(value: Json) -> str:
    """`tcp`, `udp`, `icmp`, `icmpv6`, `all`, or the IP protocol number as given."""
    text = str(value).lower() if value is not None else "-1"
    return _PROTOCOLS.get(text, text)


def port_range(protocol: str, from_port: Json, to_port: Json) -> str:
    """`443`, `8300-8302`, `all`; ICMP ports are a type and a code."""
    if protocol == "all" or from_port is None:
        return "all"
    low = int(from_port)
    high = int(to_port) if to_port is not None else low
    if protocol in ("icmp", "icmpv6"):
        if low == -1:
            return "all"
        return f"type {low}" + (f" code {high}" if high != -1 else "")
    if low == -1 or (low == 0 and high == 65535):
        return "all"
    return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class Peer:
    """The other end of a rule: a CIDR, a group or a prefix list, and how far it reaches."""

    key: str  # CIDR literal, logical id of a group/VPC attribute, prefix list id, or "?"
    label: str  # Markdown
    reach: Reach
    res: Res | None = None  # the group (or VPC) it resolves to
    kind: str = "cidr"  # cidr, group, prefix-list, vpc, unresolved


def networks(values: Iterable[Json]) -> list[Network]:
    found: list[Network] = []
    for value in values:
        if isinstance(value, str):
            try:
                found.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                continue
    return found


class VpcCidrs:
    """CIDRs per VPC resource, and the fallback set when a group's VPC is not a resource."""

    def __init__(self, assembly: Assembly, extra: Sequence[str]) -> None:
        self.extra = networks(extra)
        self.by_vpc: dict[tuple[str, str], list[Network]] = {}
        resolver = Resolver(assembly)
        for stack in assembly.stacks:
            for logical_id, resource in stack.resources_of(VPC):
                cidr = (resource.get("Properties") or {}).get("CidrBlock")
                self.by_vpc.setdefault((stack.name, logical_id), []).extend(networks([cidr]))
            for _, resource in stack.resources_of(VPC_CIDR):
                props = resource.get("Properties") or {}
                vpc = resolver.target(stack, props.get("VpcId"))
                if vpc is not None:
                    key = (vpc.stack.name, vpc.logical_id)
                    blocks = [props.get("CidrBlock"), props.get("Ipv6CidrBlock")]
                    self.by_vpc.setdefault(key, []).extend(networks(blocks))

    def of(self, vpc: Target | None) -> list[Network]:
        if vpc is not None and (vpc.stack.name, vpc.logical_id) in self.by_vpc:
            return self.by_vpc[(vpc.stack.name, vpc.logical_id)] + self.extra
        return [net for nets in self.by_vpc.values() for net in nets] + self.extra


def cidr_reach(text: str, vpc_cidrs: list[Network]) -> Reach:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return Reach.UNRESOLVED
    if network.prefixlen == 0:
        return Reach.ANYWHERE
    inside = any(
        network.version == vpc.version and network.subnet_of(vpc)  # type: ignore[arg-type]
        for vpc in vpc_cidrs
    )
    return Reach.INSIDE_VPC if inside else Reach.OUTSIDE_VPC


def _cidr_peer(
    resolver: Resolver, stack: StackTemplate, value: Json, vpc_cidrs: list[Network]
) -> Peer:
    """A CIDR given literally, through an import, or as the VPC's own block."""
    home = stack
    stack, value = resolver.producer(stack, value)
    if isinstance(value, str):
        return Peer(value, f"`{value}`", cidr_reach(value, vpc_cidrs))
    if isinstance(value, dict) and isinstance(value.get("Fn::Select"), list):
        value = value["Fn::Select"][1]  # Fn::Select [0, Fn::GetAtt [Vpc, Ipv6CidrBlocks]]
    found = resolver.target(stack, value)
    if found is not None and found.type in (VPC, VPC_CIDR) and found.attribute in _VPC_ATTRIBUTES:
        # `Peer.ipv4(vpc.vpc_cidr_block)`: the VPC itself, whatever its block is.
        literal = found.properties.get("CidrBlock") if found.attribute == "CidrBlock" else None
        label = found.label(home, attribute=True)
        if found.type == VPC and isinstance(literal, str):
            return Peer(literal, f"`{literal}` = {label}", Reach.INSIDE_VPC, found.res, "vpc")
        key = f"{found.logical_id}.{found.attribute}"
        return Peer(key, label, Reach.INSIDE_VPC, found.res, "vpc")
    return Peer("?", f"unresolved `{flatten(value)}`", Reach.UNRESOLVED, kind="unresolved")


def _named(resolver: Resolver, stack: StackTemplate, value: Json) -> tuple[str, str, Res | None]:
    """(key, label, resource) of a group or prefix list named by logical id or literal id."""
    found = resolver.target(stack, value)
    if found is not None:
        return found.logical_id, found.label(stack), found.res
    _, literal = resolver.producer(stack, value)
    if isinstance(literal, str):
        return literal, f"`{literal}`", None
    return "?", f"unresolved `{flatten(literal)}`", None


def peer(
    resolver: Resolver,
    stack: StackTemplate,
    rule: dict[str, Json],
    vpc_cidrs: list[Network],
    *,
    egress: bool = False,
) -> Peer:
    """The source of an ingress rule (or the destination of an egress rule)."""
    for key in ("CidrIp", "CidrIpv6"):
        if key in rule:
            return _cidr_peer(resolver, stack, rule[key], vpc_cidrs)
    group_keys = (
        ("DestinationSecurityGroupId",)
        if egress
        else ("SourceSecurityGroupId", "SourceSecurityGroupName")
    )
    for key in group_keys:
        if key in rule:
            name, label, res = _named(resolver, stack, rule[key])
            if name == "?":
                return Peer("?", label, Reach.UNRESOLVED, kind="unresolved")
            owner = rule.get("SourceSecurityGroupOwnerId")
            suffix = f" of account `{flatten(owner)}`" if owner is not None else ""
            # A group these templates do not create (a literal id), or another account's: its
            # members are unknown here (a peered VPC, a transit gateway spoke), so it counts
            # as outside the VPC like any unresolved peer.
            foreign = res is None or (owner is not None and flatten(owner) != "<AWS::AccountId>")
            label += suffix + (" (members unknown)" if foreign else "")
            return Peer(name, label, Reach.UNRESOLVED if foreign else Reach.GROUP, res, "group")
    prefix_key = "DestinationPrefixListId" if egress else "SourcePrefixListId"
    if prefix_key in rule:
        # A prefix list can hold any range: counted as outside the VPC.
        name, label, res = _named(resolver, stack, rule[prefix_key])
        if name == "?":
            return Peer("?", label, Reach.UNRESOLVED, kind="unresolved")
        return Peer(name, f"prefix list {label}", Reach.OUTSIDE_VPC, res, "prefix-list")
    return Peer("?", "no peer", Reach.UNRESOLVED, kind="unresolved")


def group_of(resolver: Resolver, stack: StackTemplate, value: Json) -> tuple[str, str, Res | None]:
    """(key, label, resource) of the group a standalone rule opens."""
    return _named(resolver, stack, value)


def vpcs(assembly: Assembly) -> list[tuple[str, str]]:
    """(label, CIDR) of every VPC and extra VPC CIDR block the templates create."""
    resolver = Resolver(assembly)
    found: list[tuple[str, str]] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(VPC, VPC_CIDR):
            props = resource.get("Properties") or {}
            for key in ("CidrBlock", "Ipv6CidrBlock"):
                if key in props:
                    _, cidr = resolver.producer(stack, props[key])
                    found.append((stack.label(logical_id), flatten(cidr)))
            if props.get("AmazonProvidedIpv6CidrBlock"):
                found.append((stack.label(logical_id), "Amazon-provided IPv6 /56"))
    return found
