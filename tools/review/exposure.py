"""Network exposure: every security group ingress rule and every load balancer listener.

A rule's reach is judged against the CIDRs of the VPC its security group lives in (or, when
the group's VPC is not in any template, every VPC of the assembly plus `--vpc-cidr`): a
source outside those is reachable from outside the VPC (on-premises ranges, VPN, internet),
and `0.0.0.0/0` or `::/0` is CRITICAL. Anything the review cannot resolve counts as outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.network import (
    INGRESS,
    SECURITY_GROUP,
    Reach,
    VpcCidrs,
    group_of,
    peer,
    port_range,
    protocol_name,
    vpcs,
)
from tools.review.refs import Resolver, Target, flatten

__all__ = [
    "Exposure",
    "IngressRule",
    "Listener",
    "Reach",
    "exposure",
    "ingress_rules",
    "listeners",
    "port_range",
    "vpcs",
]

LISTENER = "AWS::ElasticLoadBalancingV2::Listener"
CLASSIC_LB = "AWS::ElasticLoadBalancing::LoadBalancer"


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
    group_res: Res | None = None
    source_res: Res | None = None
    source_kind: str = "cidr"  # cidr, group, prefix-list, vpc, unresolved
    from_port: int | None = None  # the range as numbers, None for all
    to_port: int | None = None


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
    listener_res: Res | None = None
    load_balancer_res: Res | None = None
    default_targets: tuple[Res, ...] = ()  # target groups of the default actions

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


def _numbers(protocol: str, rule: dict[str, Json]) -> tuple[int | None, int | None]:
    if protocol == "all" or rule.get("FromPort") is None or protocol.startswith("icmp"):
        return None, None
    low = int(rule["FromPort"])
    high = int(rule.get("ToPort", low))
    return (None, None) if low == -1 or (low, high) == (0, 65535) else (low, high)


def _rule(
    resolver: Resolver,
    cidrs: VpcCidrs,
    stack: StackTemplate,
    *,
    declared_by: str,
    group: Target | None,
    rule: dict[str, Json],
    group_value: Json = None,
) -> IngressRule:
    protocol = protocol_name(rule.get("IpProtocol"))
    vpc = resolver.target(group.stack, group.properties.get("VpcId")) if group else None
    source = peer(resolver, stack, rule, cidrs.of(vpc))
    group_res: Res | None
    if group is not None:
        group_key, group_label, group_res = group.logical_id, group.label(stack), group.res
    else:
        group_key, group_label, group_res = group_of(resolver, stack, group_value)
    low, high = _numbers(protocol, rule)
    return IngressRule(
        stack=stack.name,
        group=group_key,
        group_label=group_label,
        protocol=protocol,
        ports=port_range(protocol, rule.get("FromPort"), rule.get("ToPort")),
        source=source.key,
        source_label=source.label,
        description=str(rule.get("Description", "")),
        declared_by=declared_by,
        reach=source.reach,
        group_res=group_res,
        source_res=source.res,
        source_kind=source.kind,
        from_port=low,
        to_port=high,
    )


def ingress_rules(assembly: Assembly, *, vpc_cidrs: Sequence[str] = ()) -> list[IngressRule]:
    """Inline `SecurityGroupIngress` entries and `AWS::EC2::SecurityGroupIngress` resources."""
    resolver = Resolver(assembly)
    cidrs = VpcCidrs(assembly, vpc_cidrs)
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


def _lb_reach(scheme: str, lb_type: str = "classic", groups: bool = True) -> Reach:
    """Who reaches a load balancer's listeners.

    A network load balancer created without `SecurityGroups` filters nothing: every client
    routed to its subnets reaches it (the VPC, and on-prem or peered networks behind VPN,
    transit gateway or peering routes), and security groups cannot be added to it later
    (ELB User Guide for NLBs, "Security groups for your Network Load Balancer"). Any other
    internal load balancer is reached as its security groups allow (an ALB without
    `SecurityGroups` gets the VPC's default group).
    """
    if scheme == "internet-facing":
        return Reach.OUTSIDE_VPC
    if scheme != "internal":
        return Reach.UNRESOLVED
    if lb_type == "network" and not groups:
        return Reach.ROUTED
    return Reach.INSIDE_VPC


def _client_ip_preserved(group: Target) -> bool:
    """Whether targets see the client's address (ELB User Guide for NLBs, target group
    attributes `preserve_client_ip.enabled`: on by default for instance targets, off for IP
    targets on TCP and TLS)."""
    for attribute in group.properties.get("TargetGroupAttributes") or []:
        if isinstance(attribute, dict) and attribute.get("Key") == "preserve_client_ip.enabled":
            return str(flatten(attribute.get("Value"))).lower() == "true"
    target_type = str(group.properties.get("TargetType", "instance"))
    protocol = str(group.properties.get("Protocol", "TCP")).upper()
    return not (target_type == "ip" and protocol in ("TCP", "TLS"))


def hidden_clients(assembly: Assembly, found: list[Listener]) -> dict[Res, set[int]]:
    """Target groups (and their ports) behind a load balancer reached by every routed network
    whose targets see the load balancer's address, not the client's: a target rule that
    admits the load balancer's subnets admits every client of the load balancer."""
    resolver = Resolver(assembly)
    hidden: dict[Res, set[int]] = {}
    for listener in found:
        if listener.reach is not Reach.ROUTED or not listener.port.isdigit():
            continue
        for res in listener.default_targets:
            stack = next(s for s in assembly.stacks if s.name == res.stack)
            group = resolver.target(stack, {"Ref": res.logical_id})
            if group is None or _client_ip_preserved(group):
                continue
            port = str(group.properties.get("Port"))
            hidden.setdefault(res, set()).add(int(port) if port.isdigit() else -1)
    return hidden


def _target_groups(
    resolver: Resolver, stack: StackTemplate, props: dict[str, Json]
) -> tuple[Res, ...]:
    """Target groups the listener's default actions forward to (plain or weighted)."""
    found: list[Res] = []
    for action in props.get("DefaultActions") or []:
        values = [action.get("TargetGroupArn")]
        forward = action.get("ForwardConfig") or {}
        values += [tg.get("TargetGroupArn") for tg in forward.get("TargetGroups") or []]
        for value in values:
            target = resolver.target(stack, value) if value is not None else None
            if target is not None:
                found.append(target.res)
    return tuple(dict.fromkeys(found))


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
            groups = bool(lb.properties.get("SecurityGroups")) if lb else True
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
                    reach=_lb_reach(scheme, lb_type, groups),
                    listener_res=stack.res(logical_id),
                    load_balancer_res=lb.res if lb else None,
                    default_targets=_target_groups(resolver, stack, props),
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
                        listener_res=stack.res(logical_id),
                        load_balancer_res=stack.res(logical_id),
                    )
                )
    return found


def exposure(assembly: Assembly, *, vpc_cidrs: Sequence[str] = ()) -> Exposure:
    return Exposure(ingress_rules(assembly, vpc_cidrs=vpc_cidrs), listeners(assembly))
