"""Reachability: which sources reach which workload on which ports, and what listens there.

Built from the ingress rules (`exposure`), what each security group is attached to (any
resource whose properties name the group: a load balancer, a launch template, a function),
the load balancers' listeners and target groups, and the container ports published on the
ECS Anywhere hosts (`containers`), which no security group of these templates governs: any
client that can reach a host reaches them.

Ports get a name from Consul's port list (hashicorp/consul website/content/docs/install/
ports.mdx, as DESIGN.md §4 records it) so a reviewer sees what listens, and 8500/8502 are
known as plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tools.review.containers import TaskNetwork
from tools.review.exposure import Exposure, IngressRule, Listener
from tools.review.load import Assembly
from tools.review.model import Res
from tools.review.network import Reach
from tools.review.refs import Resolver
from tools.review.workloads import AUTO_SCALING_GROUP, behind_groups

CONSUL_PORTS = {
    8300: "Consul server RPC",
    8301: "Serf LAN",
    8302: "Serf WAN",
    8500: "HTTP API, plaintext",
    8501: "HTTPS API",
    8502: "gRPC, plaintext",
    8503: "gRPC-TLS",
    8600: "DNS",
}
PLAINTEXT_PORTS = (8500, 8502)
LOAD_BALANCER = "AWS::ElasticLoadBalancingV2::LoadBalancer"


@dataclass(frozen=True, order=True)
class Path:
    """One source reaching one group (or host) on one protocol and port range."""

    target: Res | None  # the security group, None for a host's published port
    target_label: str  # what is there, in words (for host ports: the task definition)
    protocol: str
    ports: str
    source_kind: str  # internet, outside-vpc, vpc, group, prefix-list, unresolved, host-clients
    source: str  # CIDR, group logical id, prefix list id, or "" for host clients
    source_res: Res | None
    reach: Reach
    behind: tuple[Res, ...]  # the workloads attached to the target group (or the task def)
    listens: str  # what listens on those ports, when known
    forwards_to: tuple[Res, ...] = ()  # for a load balancer: the ASGs its listeners feed
    container: str = ""  # for a host port: the container publishing it
    bypasses_mesh: bool = False
    plaintext: bool = False


def port_name(port: int | None) -> str:
    return CONSUL_PORTS.get(port, "") if port is not None else ""


def through_open_load_balancers(
    rules: list[IngressRule], attachments: Attachments, hidden: dict[Res, set[int]]
) -> list[IngressRule]:
    """A rule admitting VPC addresses to targets of a load balancer without security groups
    whose targets see the load balancer's address admits every network routed to the VPC."""
    reached: dict[Res, set[int]] = {}
    for group, ports in hidden.items():
        for asg in attachments.target_groups.get(group, []):
            reached.setdefault(asg, set()).update(ports)
    found: list[IngressRule] = []
    for rule in rules:
        ports = set(_port_numbers(rule)) if rule.from_port is not None else {-1}
        open_ports = {
            port
            for res in attachments.of(rule.group_res)
            for port in reached.get(res, set())
            if port in ports or -1 in ports or port == -1
        }
        if rule.reach is Reach.INSIDE_VPC and open_ports:
            found.append(
                replace(
                    rule,
                    reach=Reach.ROUTED,
                    source_label=f"{rule.source_label}, which includes the load balancer: "
                    "every client routed to it",
                )
            )
        else:
            found.append(rule)
    return found


class Attachments:
    """What each security group is attached to, and the ASGs each target group feeds."""

    def __init__(self, assembly: Assembly) -> None:
        resolver = Resolver(assembly)
        self.by_group = behind_groups(assembly, resolver)
        self.target_groups: dict[Res, list[Res]] = {}  # target group -> ASGs registered in it
        for stack in assembly.stacks:
            for logical_id, resource in stack.resources_of(AUTO_SCALING_GROUP):
                for value in (resource.get("Properties") or {}).get("TargetGroupARNs") or []:
                    group = resolver.target(stack, value)
                    if group is not None:
                        self.target_groups.setdefault(group.res, []).append(stack.res(logical_id))

    def of(self, group: Res | None) -> tuple[Res, ...]:
        return self.by_group.get(group, ()) if group else ()

    def forwards_to(self, listeners: list[Listener]) -> tuple[Res, ...]:
        """The ASGs registered in the target groups these listeners forward to."""
        return tuple(
            sorted(
                {
                    asg
                    for listener in listeners
                    for group in listener.default_targets
                    for asg in self.target_groups.get(group, [])
                }
            )
        )


def _source_kind(rule: IngressRule) -> str:
    if rule.reach is Reach.ROUTED:
        return "routed"
    if rule.reach is Reach.ANYWHERE:
        return "internet"
    if rule.source_kind == "cidr":
        return "outside-vpc" if rule.reach is Reach.OUTSIDE_VPC else "vpc"
    return rule.source_kind


def _port_numbers(rule: IngressRule) -> list[int]:
    if rule.from_port is None or rule.to_port is None or rule.to_port - rule.from_port > 16:
        return []
    return list(range(rule.from_port, rule.to_port + 1))


def _listens(
    rule: IngressRule, behind: tuple[Res, ...], listeners: list[Listener]
) -> tuple[str, bool]:
    numbers = _port_numbers(rule)
    names = [f"{port} {port_name(port)}" for port in numbers if port_name(port)]
    plaintext = any(port in PLAINTEXT_PORTS for port in numbers)
    plaintext = plaintext or any(
        listener.protocol.upper() == "HTTP"
        for listener in _listeners_on(listeners, behind, numbers)
    )
    return ", ".join(names), plaintext


def _listeners_on(
    listeners: list[Listener], behind: tuple[Res, ...], numbers: list[int]
) -> list[Listener]:
    return [
        listener
        for listener in listeners
        if listener.load_balancer_res in behind
        and listener.port.isdigit()
        and int(listener.port) in numbers
    ]


def paths(exposure: Exposure, networks: list[TaskNetwork], attachments: Attachments) -> list[Path]:
    found: list[Path] = []
    for rule in exposure.rules:
        behind = attachments.of(rule.group_res)
        listens, plaintext = _listens(rule, behind, exposure.listeners)
        on_port = _listeners_on(exposure.listeners, behind, _port_numbers(rule))
        found.append(
            Path(
                target=rule.group_res,
                target_label=rule.group_label,
                protocol=rule.protocol,
                ports=rule.ports,
                source_kind=_source_kind(rule),
                source=rule.source,
                source_res=rule.source_res,
                reach=rule.reach,
                behind=behind,
                listens=listens,
                plaintext=plaintext,
                forwards_to=attachments.forwards_to(on_port),
            )
        )
    for network in networks:
        # a host-mode port bound to loopback serves only the host's own processes
        for port in (p for p in network.ports if p.reachable):
            found.append(
                Path(
                    target=None,
                    target_label=f"{network.network_mode}-mode task, container {port.container}",
                    container=port.container,
                    protocol=port.protocol,
                    ports=f"{port.container_port} -> host {port.host_port}",
                    source_kind="host-clients",
                    source="",
                    source_res=None,
                    reach=Reach.OUTSIDE_VPC,
                    behind=(network.task_definition,),
                    listens=port.role,
                    bypasses_mesh=port.bypasses_mesh,
                )
            )
    return sorted(found, key=lambda p: (p.target_label, p.source_kind, p.source, p.ports))
