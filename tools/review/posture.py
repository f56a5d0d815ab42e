"""The reviewer's two judgement questions, answered from the facts the other modules read.

- Which wildcards exist, grouped by the reason given for them: IAM wildcards (as cdk-nag finds
  them) grouped by the acknowledgement that covers them, and Consul ACL rules on an empty
  prefix (every service, node or key), grouped by the policy (or service identity) granting them.
- What is weaker than the secure default: every fact that departs from DESIGN.md's guarantees
  (no 0.0.0.0/0 ingress, no bypass of the mesh, TLS everywhere, least privilege, encryption),
  whether it comes from an opt-in or from the code.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.review.collect import Review
from tools.review.consul import AclRule, service_identity_rules
from tools.review.containers import (
    ALL_INTERFACES,
    LOOPBACK,
    PROMETHEUS_BIND,
    PublishedPort,
    TaskNetwork,
)
from tools.review.managed_policies import TABLE
from tools.review.model import Res
from tools.review.network import Reach
from tools.review.policy import DocStatement

# Page 1 has room for the policies' names only: versions and statements are in A.4.
MANAGED_REASON = "AWS managed"
NOT_EVALUATED_REASON = "not in the review's pinned copies, contents not evaluated"
SERVICE_IDENTITY_REASON = (
    "Consul's builtin service identity: write on the service and its sidecar, read on every "
    "service and node to discover upstreams"
)


@dataclass(frozen=True)
class WildcardGroup:
    kind: str  # "iam" or "consul"
    reason: str  # the acknowledgement's reason, the ACL policy's description, or ''
    covered_by: tuple[str, ...]  # acknowledgement ids (with where), '' when none applies
    items: tuple[tuple[Res | None, str], ...]  # (role or token, wildcard)
    acknowledged: bool  # IAM: every item covered; Consul: not applicable (True)


@dataclass(frozen=True)
class Weakness:
    kind: str
    subject: Res | None
    what: str
    why: str
    others: tuple[Res, ...] = ()  # further resources with the same weakness


def wildcard_groups(review: Review) -> list[WildcardGroup]:
    groups: dict[tuple[str, str], list[tuple[Res | None, str]]] = {}
    covers: dict[tuple[str, str], set[str]] = {}
    acknowledged: dict[tuple[str, str], bool] = {}
    managed: set[str] = set()
    for role in review.roles:
        for unknown in role.not_evaluated:
            key = ("iam", f"AWS managed policy {unknown.name}: {NOT_EVALUATED_REASON}")
            groups.setdefault(key, []).append((role.res, "wildcards unknown"))
            acknowledged[key] = False
        for wildcard in role.wildcards:
            reason = wildcard.covers[0].reason if wildcard.covers else ""
            if wildcard.managed and wildcard.acknowledged:  # one row for AWS managed policies
                reason = MANAGED_REASON
                managed.add(wildcard.managed.split(" ")[0])  # without its version
            key = ("iam", reason)
            groups.setdefault(key, []).append((role.res, wildcard.finding))
            covers.setdefault(key, set()).update(
                f"{cover.rule} at {cover.acknowledged_at or 'the app'}" for cover in wildcard.covers
            )
            acknowledged[key] = acknowledged.get(key, True) and wildcard.acknowledged
    for token in review.consul.tokens:
        broad = [rule for rule in token.rules if rule.everything]
        identity = {r for s in token.service_identities for r in service_identity_rules(s)}
        for policy_name in token.policies:
            policy = next((p for p in review.consul.policies if p.name == policy_name), None)
            for rule in policy.rules if policy else ():
                if rule.everything:
                    key = (
                        "consul",
                        f"ACL policy {policy_name}: {policy.description if policy else ''}",
                    )
                    _add_rule(groups, key, token.res, rule)
        for rule in broad:
            if rule in identity:
                _add_rule(groups, ("consul", SERVICE_IDENTITY_REASON), token.res, rule)
    found: list[WildcardGroup] = []
    for (kind, reason), items in groups.items():
        key = (kind, reason)
        found.append(
            WildcardGroup(
                kind=kind,
                reason=f"{reason}: {', '.join(sorted(managed, key=_breadth))}"
                if reason == MANAGED_REASON
                else reason,
                covered_by=tuple(sorted(covers.get(key, set()))),
                items=tuple(dict.fromkeys(items)),
                acknowledged=acknowledged.get(key, kind == "consul"),
            )
        )
    return sorted(found, key=lambda g: (g.kind != "iam", g.acknowledged, g.reason))


def _breadth(name: str) -> tuple[int, str]:
    """Widest AWS managed policy first (most actions), so page 1 names it before it abridges."""
    policy = TABLE.get(name)
    actions = sum(len(s.get("Action") or ()) for s in policy.statements) if policy else 0
    return (-actions, name)


def _add_rule(
    groups: dict[tuple[str, str], list[tuple[Res | None, str]]],
    key: tuple[str, str],
    token: Res,
    rule: AclRule,
) -> None:
    groups.setdefault(key, []).append((token, rule.text()))


def weaknesses(review: Review) -> list[Weakness]:
    found: list[Weakness] = []
    found += _network(review)
    found += _policies(review)
    found += _access(review)
    return found


def _network(review: Review) -> list[Weakness]:
    found: list[Weakness] = []
    for rule in review.exposure.rules:
        if rule.reach is Reach.ANYWHERE:
            found.append(
                Weakness(
                    "ingress-anywhere",
                    rule.group_res,
                    f"{rule.protocol} {rule.ports} from {rule.source}",
                    "reachable from the internet",
                )
            )
    for listener in review.exposure.external_listeners:
        found.append(
            Weakness(
                "internet-facing",
                listener.load_balancer_res,
                f"{listener.protocol} {listener.port}, scheme {listener.scheme}",
                "a load balancer outside the VPC",
            )
        )
    for network in review.task_networks:
        for port in network.ports:
            found += _port_weaknesses(network, port)
    # one row per plaintext port of a target, with every source that reaches it
    plaintext: dict[tuple[Res | None, str, str, str], list[str]] = {}
    for path in review.reachability:
        if path.plaintext:
            target = (path.target, path.protocol, path.ports, path.listens)
            source = path.source_res.logical_id if path.source_res else path.source
            plaintext.setdefault(target, []).append(source or path.source_kind)
    for (group, protocol, ports, listens), sources in plaintext.items():
        unique = sorted(set(sources))
        found.append(
            Weakness(
                "plaintext-listener",
                group,
                f"{protocol} {ports} ({listens}) from {len(unique)} sources: {', '.join(unique)}"
                if len(unique) > 1
                else f"{protocol} {ports} ({listens}) from {unique[0]}",
                "no TLS: tokens and catalog data cross the network in clear",
            )
        )
    anywhere = [rule for rule in review.egress.to_anywhere if rule.protocol == "all"]
    for out in anywhere:
        found.append(
            Weakness(
                "egress-anywhere",
                out.group,
                f"all traffic to {out.destination}"
                + (" (EC2 default rule)" if out.implicit else ""),
                out.description or "any destination, any port",
            )
        )
    narrow = [rule for rule in review.egress.to_anywhere if rule.protocol != "all"]
    by_port: dict[tuple[str, str, str], list[Res]] = {}
    for egress in narrow:
        key = (egress.protocol, egress.ports, egress.reason)
        by_port.setdefault(key, []).extend([egress.group] if egress.group else [])
    for (protocol, ports, reason), groups in by_port.items():
        ordered = sorted(set(groups))
        found.append(
            Weakness(
                "egress-anywhere",
                ordered[0] if ordered else None,
                f"{protocol} {ports} to any address",
                reason,
                tuple(ordered[1:]),
            )
        )
    return found


def _port_weaknesses(network: TaskNetwork, port: PublishedPort) -> list[Weakness]:
    """A published port that bypasses the mesh, or Envoy metrics off the host's loopback."""
    found: list[Weakness] = []
    if port.bypasses_mesh:
        found.append(
            Weakness(
                "published-app-port",
                network.task_definition,
                f"{port.container} {port.container_port} -> host "
                f"{port.host_port.split(' ')[0]} ({network.network_mode})",
                "host clients bypass mTLS and intentions",
            )
        )
    if port.told.startswith(f"{PROMETHEUS_BIND}=") and port.bind != LOOPBACK:
        where = "every host interface" if port.bind == ALL_INTERFACES else port.bind
        found.append(
            Weakness(
                "metrics-every-interface",
                network.task_definition,
                f"{port.container} {port.container_port} on {where}",
                "anyone reaching the host reads the service's and its upstreams' names "
                "and traffic (prometheus_bind_address opt-in; default 127.0.0.1)",
            )
        )
    return found


def _statement_text(statement: DocStatement) -> str:
    """`cloudwatch.amazonaws.com: Decrypt, GenerateDataKey*` (the service prefix said once)."""
    who = ", ".join(p.value if p.is_service else p.text() for p in statement.principals)
    prefixes = {action.partition(":")[0] for action in statement.actions}
    actions = [
        action.partition(":")[2] if len(prefixes) == 1 else action for action in statement.actions
    ]
    return f"{who}: {', '.join(actions)}"


def _policies(review: Review) -> list[Weakness]:
    flagged = [("key-policy", key.res, key.flagged) for key in review.keys] + [
        (
            "resource-policy",
            policy.applies_to[0] if policy.applies_to else policy.policy,
            policy.flagged,
        )
        for policy in review.resource_policies
    ]
    found = [
        Weakness(kind, subject, _statement_text(statement), statement.flag)
        for kind, subject, statements in flagged
        for statement in statements
    ]
    for intention in review.consul.intentions:
        if intention.action == "allow" and "*" in (intention.source, intention.destination):
            found.append(
                Weakness(
                    "intention-wildcard",
                    intention.entry,
                    f"{intention.source} -> {intention.destination} allowed",
                    "a wildcard intention opens the mesh beyond named services",
                )
            )
    for store in review.stores:
        if not (store.at_rest_ok and store.in_transit_ok):
            found.append(
                Weakness(
                    "encryption",
                    None,
                    f"{store.kind} {store.label}",
                    store.at_rest if not store.at_rest_ok else store.in_transit,
                )
            )
    return found


def _access(review: Review) -> list[Weakness]:
    found = [
        Weakness(
            "unacknowledged-wildcard",
            wildcard.role,
            wildcard.finding,
            "no acknowledgement names the compensating control",
        )
        for wildcard in review.unacknowledged_wildcards
    ]
    for access in review.secrets.unresolved:
        found.append(
            Weakness(
                "unresolved-secret-access",
                access.principal,
                f"{'/'.join(access.actions)} on {access.value}",
                "; ".join(access.why),
            )
        )
    for item in review.secrets.dynamic_references:
        found.append(
            Weakness(
                "dynamic-reference", item.where, item.path, "the secret's value is in the resource"
            )
        )
    return found
