"""Egress: every security group's outbound rules, with the reason each one is there.

What a group may send is its inline `SecurityGroupEgress` plus its `AWS::EC2::SecurityGroupEgress`
resources. Two defaults are not written in the template but are real:
- a group with neither gets EC2's default rule, all traffic to 0.0.0.0/0 and ::/0 (CloudFormation
  `AWS::EC2::SecurityGroup`: "if you do not add egress rules, we add egress rules that allow all
  outbound IPv4 and IPv6 traffic");
- a group with only standalone egress resources loses that default rule when the first one is
  added (what aws-cdk relies on for `allow_all_outbound=False`: aws/aws-cdk#987 and the fix
  b9d5b43, "adding them would only make CloudFormation delete the 'all traffic allowed' rule").
CDK's placeholder `255.255.255.255/32 icmp 252-86` ("Disallow all traffic") matches nothing.

Reason: the rule's own description, and for HTTPS to any address the fact a reviewer needs to
judge it: whether the templates create VPC endpoints (without them, AWS APIs are reached through
the NAT gateway and 443 to 0.0.0.0/0 is the narrowest CIDR rule that works).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.network import (
    EGRESS,
    SECURITY_GROUP,
    Reach,
    VpcCidrs,
    group_of,
    peer,
    port_range,
    protocol_name,
)
from tools.review.refs import Resolver, Target, flatten

VPC_ENDPOINT = "AWS::EC2::VPCEndpoint"
_NO_TRAFFIC = ("255.255.255.255/32", "icmp", "type 252 code 86")
_ANY = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class EgressRule:
    group: Res | None  # None when the group is not in any template
    group_label: str
    protocol: str
    ports: str
    destination: str  # CIDR, group logical id, prefix list id, or "?"
    destination_label: str
    destination_res: Res | None
    reach: Reach
    description: str
    declared_by: Res | None  # the group (inline rule) or the egress resource; None if implicit
    implicit: bool = False  # EC2's default rule, not written in the template
    reason: str = ""  # what a reviewer needs beyond the description

    @property
    def to_anywhere(self) -> bool:
        return self.destination in _ANY


@dataclass(frozen=True)
class Egress:
    rules: list[EgressRule]
    endpoints: list[str]  # service names of the VPC endpoints the templates create

    @property
    def to_anywhere(self) -> list[EgressRule]:
        return [rule for rule in self.rules if rule.to_anywhere]


def _reason(rule: EgressRule, endpoints: list[str]) -> str:
    if not rule.to_anywhere:
        return ""
    if rule.implicit:
        return "no egress rule in the template: EC2's default allows everything"
    if rule.protocol == "tcp" and rule.ports == "443":
        if endpoints:
            return "HTTPS to any address although the VPC has endpoints: " + ", ".join(endpoints)
        return (
            "AWS APIs, no VPC endpoint in the templates: reached through the NAT, so any "
            "address is the narrowest CIDR that works"
        )
    return "any address"


def _endpoints(resolver: Resolver, assembly: Assembly) -> list[str]:
    found: list[str] = []
    for stack in assembly.stacks:
        for _, resource in stack.resources_of(VPC_ENDPOINT):
            name = (resource.get("Properties") or {}).get("ServiceName")
            found.append(flatten(resolver.producer(stack, name)[1]))
    return sorted(set(found))


def _rule(
    resolver: Resolver,
    cidrs: VpcCidrs,
    stack: StackTemplate,
    *,
    group: Target | None,
    rule: dict[str, Json],
    declared_by: Res,
    group_value: Json = None,
) -> EgressRule | None:
    protocol = protocol_name(rule.get("IpProtocol"))
    vpc = resolver.target(group.stack, group.properties.get("VpcId")) if group else None
    destination = peer(resolver, stack, rule, cidrs.of(vpc), egress=True)
    ports = port_range(protocol, rule.get("FromPort"), rule.get("ToPort"))
    if (destination.key, protocol, ports) == _NO_TRAFFIC:
        return None
    if group is not None:
        group_res: Res | None = group.res
        group_label = group.label(stack)
    else:
        _, group_label, group_res = group_of(resolver, stack, group_value)
    return EgressRule(
        group=group_res,
        group_label=group_label,
        protocol=protocol,
        ports=ports,
        destination=destination.key,
        destination_label=destination.label,
        destination_res=destination.res,
        reach=destination.reach,
        description=str(rule.get("Description", "")),
        declared_by=declared_by,
    )


def _implicit(group: Target) -> list[EgressRule]:
    return [
        EgressRule(
            group=group.res,
            group_label=group.label(),
            protocol="all",
            ports="all",
            destination=cidr,
            destination_label=f"`{cidr}`",
            destination_res=None,
            reach=Reach.ANYWHERE,
            description="EC2 default rule (no egress rule in the template)",
            declared_by=None,
            implicit=True,
        )
        for cidr in _ANY
    ]


def egress_rules(assembly: Assembly, *, vpc_cidrs: Sequence[str] = ()) -> Egress:
    resolver = Resolver(assembly)
    cidrs = VpcCidrs(assembly, vpc_cidrs)
    endpoints = _endpoints(resolver, assembly)
    found: list[EgressRule] = []
    standalone: set[tuple[str, str]] = set()
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(EGRESS):
            props = resource.get("Properties") or {}
            group = resolver.target(stack, props.get("GroupId"))
            if group is not None:
                standalone.add((group.stack.name, group.logical_id))
            rule = _rule(
                resolver,
                cidrs,
                stack,
                group=group,
                rule=props,
                declared_by=stack.res(logical_id),
                group_value=props.get("GroupId"),
            )
            if rule is not None:
                found.append(rule)
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(SECURITY_GROUP):
            group = Target(stack, logical_id, None)
            inline = (resource.get("Properties") or {}).get("SecurityGroupEgress")
            if inline is None and (stack.name, logical_id) not in standalone:
                found += _implicit(group)
            for entry in inline or []:
                rule = _rule(resolver, cidrs, stack, group=group, rule=entry, declared_by=group.res)
                if rule is not None:
                    found.append(rule)
    return Egress(
        [
            _with_reason(rule, endpoints)
            for rule in sorted(found, key=lambda r: (r.group_label, r.destination, r.ports))
        ],
        endpoints,
    )


def _with_reason(rule: EgressRule, endpoints: list[str]) -> EgressRule:
    return replace(rule, reason=_reason(rule, endpoints))
