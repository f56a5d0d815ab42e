"""Network exposure: every security group ingress rule and every load balancer listener.

A rule's reach is judged against the CIDRs of the VPC its security group lives in (or, when
the group's VPC is not in any template, every VPC of the assembly plus `--vpc-cidr`): a
source outside those is reachable from outside the VPC (on-premises ranges, VPN, internet),
and `0.0.0.0/0` or `::/0` is CRITICAL. Anything the review cannot resolve counts as outside.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.refs import Resolver, Target, flatten

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SECURITY_GROUP = "AWS::EC2::SecurityGroup"
INGRESS = "AWS::EC2::SecurityGroupIngress"
VPC = "AWS::EC2::VPC"
VPC_CIDR = "AWS::EC2::VPCCidrBlock"
LISTENER = "AWS::ElasticLoadBalancingV2::Listener"
CLASSIC_LB = "AWS::ElasticLoadBalancing::LoadBalancer"

_PROTOCOLS = {"-1": "all", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}


class Reach(enum.Enum):
    ANYWHERE = "CRITICAL: any address"
    OUTSIDE_VPC = "outside the VPC"
    UNRESOLVED = "unresolved source (counted as outside the VPC)"
    GROUP = "security group"
    INSIDE_VPC = "inside the VPC"

    @property
    def external(self) -> bool:
        """Reachable from outside the VPC, as far as the template can tell."""
        return self in (Reach.ANYWHERE, Reach.OUTSIDE_VPC, Reach.UNRESOLVED)


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
class IngressRule:
    stack: str  # the template that declares the rule
    group: str  # logical id of the security group it opens (or the literal group id)
    group_label: str
    protocol: str
    ports: str
    source: str  # CIDR, source group logical id, prefix list id, or "?" when unresolved
    source_label: str
    description: str
    declared_by: str  # logical id of the resource carrying the rule
    reach: Reach


@dataclass(frozen=True)
class Listener:
    stack: str
    listener_label: str
    load_balancer_label: str
    load_balancer_type: str
    scheme: str
    port: str
    protocol: str
    reach: Reach

    @property
    def encrypted(self) -> bool:
        return self.protocol.upper() in ("HTTPS", "TLS", "SSL")


@dataclass(frozen=True)
class Exposure:
    rules: list[IngressRule]
    listeners: list[Listener]

    @property
    def critical(self) -> list[IngressRule]:
        return [rule for rule in self.rules if rule.reach is Reach.ANYWHERE]

    @property
    def external_rules(self) -> list[IngressRule]:
        return [rule for rule in self.rules if rule.reach.external]

    @property
    def external_listeners(self) -> list[Listener]:
        return [listener for listener in self.listeners if listener.reach.external]


def _networks(values: Iterable[Json]) -> list[Network]:
    found: list[Network] = []
    for value in values:
        if isinstance(value, str):
            try:
                found.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                continue
    return found


class _VpcCidrs:
    """CIDRs per VPC resource, and the fallback set when a group's VPC is not a resource."""

    def __init__(self, assembly: Assembly, extra: Sequence[str]) -> None:
        self.extra = _networks(extra)
        self.by_vpc: dict[tuple[str, str], list[Network]] = {}
        resolver = Resolver(assembly)
        for stack in assembly.stacks:
            for logical_id, resource in stack.resources_of(VPC):
                cidr = (resource.get("Properties") or {}).get("CidrBlock")
                self.by_vpc.setdefault((stack.name, logical_id), []).extend(_networks([cidr]))
            for _, resource in stack.resources_of(VPC_CIDR):
                props = resource.get("Properties") or {}
                vpc = resolver.target(stack, props.get("VpcId"))
                if vpc is not None:
                    key = (vpc.stack.name, vpc.logical_id)
                    blocks = [props.get("CidrBlock"), props.get("Ipv6CidrBlock")]
                    self.by_vpc.setdefault(key, []).extend(_networks(blocks))

    def of(self, vpc: Target | None) -> list[Network]:
        if vpc is not None and (vpc.stack.name, vpc.logical_id) in self.by_vpc:
            return self.by_vpc[(vpc.stack.name, vpc.logical_id)] + self.extra
        return [net for nets in self.by_vpc.values() for net in nets] + self.extra


def _cidr_reach(text: str, vpc_cidrs: list[Network]) -> Reach:
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


_VPC_ATTRIBUTES = ("CidrBlock", "Ipv6CidrBlocks", "Ipv6CidrBlock", "CidrBlockAssociations")


def _cidr_source(
    resolver: Resolver, stack: StackTemplate, value: Json, vpc_cidrs: list[Network]
) -> tuple[str, str, Reach]:
    """A CIDR given literally, through an import, or as the VPC's own block."""
    home = stack
    stack, value = resolver.producer(stack, value)
    if isinstance(value, str):
        return value, f"`{value}`", _cidr_reach(value, vpc_cidrs)
    if isinstance(value, dict) and isinstance(value.get("Fn::Select"), list):
        value = value["Fn::Select"][1]  # Fn::Select [0, Fn::GetAtt [Vpc, Ipv6CidrBlocks]]
    found = resolver.target(stack, value)
    if found is not None and found.type in (VPC, VPC_CIDR) and found.attribute in _VPC_ATTRIBUTES:
        # `Peer.ipv4(vpc.vpc_cidr_block)`: the VPC itself, whatever its block is.
        literal = found.properties.get("CidrBlock") if found.attribute == "CidrBlock" else None
        if found.type == VPC and isinstance(literal, str):
            return literal, f"`{literal}` = {found.label(home, attribute=True)}", Reach.INSIDE_VPC
        key = f"{found.logical_id}.{found.attribute}"
        return key, found.label(home, attribute=True), Reach.INSIDE_VPC
    return "?", f"unresolved `{flatten(value)}`", Reach.UNRESOLVED


def _named(resolver: Resolver, stack: StackTemplate, value: Json) -> tuple[str, str] | None:
    """(key, label) of a group or prefix list named by logical id or literal id."""
    found = resolver.target(stack, value)
    if found is not None:
        return found.logical_id, found.label(stack)
    _, literal = resolver.producer(stack, value)
    return (literal, f"`{literal}`") if isinstance(literal, str) else None


def _source(
    resolver: Resolver, stack: StackTemplate, rule: dict[str, Json], vpc_cidrs: list[Network]
) -> tuple[str, str, Reach]:
    """(row key, Markdown label, reach) of one rule's source."""
    for key in ("CidrIp", "CidrIpv6"):
        if key in rule:
            return _cidr_source(resolver, stack, rule[key], vpc_cidrs)
    for key in ("SourceSecurityGroupId", "SourceSecurityGroupName"):
        if key in rule:
            named = _named(resolver, stack, rule[key])
            if named is None:
                return "?", f"unresolved `{flatten(rule[key])}`", Reach.UNRESOLVED
            owner = rule.get("SourceSecurityGroupOwnerId")
            suffix = f" of account `{flatten(owner)}`" if owner is not None else ""
            return named[0], named[1] + suffix, Reach.GROUP
    if "SourcePrefixListId" in rule:
        # A prefix list can hold any range: counted as outside the VPC.
        named = _named(resolver, stack, rule["SourcePrefixListId"])
        if named is None:
            return "?", f"unresolved `{flatten(rule['SourcePrefixListId'])}`", Reach.UNRESOLVED
        return named[0], f"prefix list {named[1]}", Reach.OUTSIDE_VPC
    return "?", "no source", Reach.UNRESOLVED


def _rule(
    resolver: Resolver,
    cidrs: _VpcCidrs,
    stack: StackTemplate,
    *,
    declared_by: str,
    group: Target | None,
    rule: dict[str, Json],
    group_value: Json = None,
) -> IngressRule:
    protocol = protocol_name(rule.get("IpProtocol"))
    vpc = resolver.target(group.stack, group.properties.get("VpcId")) if group else None
    source, source_label, reach = _source(resolver, stack, rule, cidrs.of(vpc))
    if group is not None:
        group_key, group_label = group.logical_id, group.label(stack)
    else:
        literal = resolver.producer(stack, group_value)[1]
        group_key, group_label = (
            (literal, f"`{literal}`")
            if isinstance(literal, str)
            else ("?", f"unresolved `{flatten(literal)}`")
        )
    return IngressRule(
        stack=stack.name,
        group=group_key,
        group_label=group_label,
        protocol=protocol,
        ports=port_range(protocol, rule.get("FromPort"), rule.get("ToPort")),
        source=source,
        source_label=source_label,
        description=str(rule.get("Description", "")),
        declared_by=declared_by,
        reach=reach,
    )


def ingress_rules(assembly: Assembly, *, vpc_cidrs: Sequence[str] = ()) -> list[IngressRule]:
    """Inline `SecurityGroupIngress` entries and `AWS::EC2::SecurityGroupIngress` resources."""
    resolver = Resolver(assembly)
    cidrs = _VpcCidrs(assembly, vpc_cidrs)
    rules: list[IngressRule] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(SECURITY_GROUP):
            owner = Target(stack, logical_id, None)
            for entry in (resource.get("Properties") or {}).get("SecurityGroupIngress") or []:
                rules.append(
                    _rule(resolver, cidrs, stack, declared_by=logical_id, group=owner, rule=entry)
                )
        for logical_id, resource in stack.resources_of(INGRESS):
            props = resource.get("Properties") or {}
            group_value = props.get("GroupId", props.get("GroupName"))
            rules.append(
                _rule(
                    resolver,
                    cidrs,
                    stack,
                    declared_by=logical_id,
                    group=resolver.target(stack, group_value),
                    group_value=group_value,
                    rule=props,
                )
            )
    return rules


def _lb_reach(scheme: str) -> Reach:
    if scheme == "internet-facing":
        return Reach.OUTSIDE_VPC
    return Reach.INSIDE_VPC if scheme == "internal" else Reach.UNRESOLVED


def listeners(assembly: Assembly) -> list[Listener]:
    """ELBv2 listeners with their load balancer's scheme, and classic ELB listeners."""
    resolver = Resolver(assembly)
    found: list[Listener] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(LISTENER):
            props = resource.get("Properties") or {}
            lb = resolver.target(stack, props.get("LoadBalancerArn"))
            # CloudFormation's defaults when the load balancer omits them.
            scheme = str(lb.properties.get("Scheme", "internet-facing")) if lb else "unknown"
            lb_type = str(lb.properties.get("Type", "application")) if lb else "unknown"
            found.append(
                Listener(
                    stack=stack.name,
                    listener_label=stack.label(logical_id),
                    load_balancer_label=lb.label(stack)
                    if lb
                    else f"`{flatten(props.get('LoadBalancerArn'))}`",
                    load_balancer_type=lb_type,
                    scheme=scheme,
                    port=str(props.get("Port", "")),
                    protocol=str(props.get("Protocol", "")),
                    reach=_lb_reach(scheme),
                )
            )
        for logical_id, resource in stack.resources_of(CLASSIC_LB):
            props = resource.get("Properties") or {}
            scheme = str(props.get("Scheme", "internet-facing"))
            for entry in props.get("Listeners") or []:
                found.append(
                    Listener(
                        stack=stack.name,
                        listener_label=stack.label(logical_id),
                        load_balancer_label=stack.label(logical_id),
                        load_balancer_type="classic",
                        scheme=scheme,
                        port=str(entry.get("LoadBalancerPort", "")),
                        protocol=str(entry.get("Protocol", "")),
                        reach=_lb_reach(scheme),
                    )
                )
    return found


def exposure(assembly: Assembly, *, vpc_cidrs: Sequence[str] = ()) -> Exposure:
    return Exposure(ingress_rules(assembly, vpc_cidrs=vpc_cidrs), listeners(assembly))


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
