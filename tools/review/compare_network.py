"""Network changes: ingress rules and listeners, egress rules, container ports published on hosts.

A rule is identified by its security group, protocol, port range and peer (CIDR, group or
prefix list); its reach (outside the VPC or not) is what can change under it, e.g. when the VPC's
CIDR changes. Rules that differ only in their ports are one line (`tcp 8501, 8503`): that is one
path a reviewer approves, the way the first page shows it.

Broadening: a rule or listener that becomes reachable from outside the VPC (the internet, an
on-prem or other CIDR outside the VPC, a prefix list, an unresolved peer), an egress rule to
such a destination, and any container port newly published on the hosts (any client that
reaches a host reaches it; an app port also bypasses mTLS and intentions).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from tools.review.compare import (
    ADDED,
    CHANGED,
    EXTERNAL,
    REACH_WORDS,
    REMOVED,
    Change,
    Facts,
    Matched,
    Names,
    additions_and_removals,
    get,
    match,
    rid,
)
from tools.review.containers import ALL_INTERFACES, LOOPBACK

_ENCRYPTED = ("HTTPS", "TLS", "SSL")


def _port_key(item: Facts) -> tuple[str, int, str]:
    first = str(item.get("ports", "")).split("-")[0].split(" ")[0]
    return (str(item.get("protocol", "")), int(first) if first.isdigit() else -1, item["ports"])


def _ports(items: list[Facts], listens: Callable[[Facts], str] = lambda _: "") -> str:
    """`tcp 8501 HTTPS API, 8503 gRPC-TLS; udp 8301 Serf LAN` (ports of one path)."""
    by_protocol: dict[str, list[str]] = {}
    for item in sorted(items, key=_port_key):
        name = listens(item)
        text = f"{item['ports']} {name}".strip() if item["ports"] != "all" else "all ports"
        entries = by_protocol.setdefault(str(item["protocol"]), [])
        if text not in entries:
            entries.append(text)
    return "; ".join(
        ("all traffic" if protocol == "all" else f"{protocol} {', '.join(entries)}")
        for protocol, entries in by_protocol.items()
    )


def _grouped(
    matched: Matched, path_of: Callable[[Facts], Hashable]
) -> list[tuple[str, list[Facts], list[Facts]]]:
    """(action, new-side items, old-side items) per path: ports of one path make one line."""
    found: dict[tuple[str, Hashable], tuple[list[Facts], list[Facts]]] = {}
    for item in matched.added:
        found.setdefault((ADDED, path_of(item)), ([], []))[0].append(item)
    for item in matched.removed:
        found.setdefault((REMOVED, path_of(item)), ([], []))[0].append(item)
    for was, now in matched.changed:
        news, olds = found.setdefault((CHANGED, path_of(now)), ([], []))
        news.append(now)
        olds.append(was)
    return [(action, news, olds) for (action, _), (news, olds) in found.items()]


# --- ingress and listeners -------------------------------------------------------------------


def _peer_id(item: Facts, key: str, resource_key: str) -> Hashable:
    return rid(item.get(resource_key)) or str(item.get(key, ""))


def _source(item: Facts, names: Names) -> str:
    kind = item.get("source_kind", "cidr")
    if kind == "group":
        return f"security group {names(item.get('source_resource'), str(item['source']))}"
    if kind == "vpc":
        return f"the VPC ({item['source']})"
    if kind == "prefix-list":
        return f"prefix list {item['source']}"
    if kind == "unresolved":
        return "an unresolved source"
    return f"{item['source']} ({REACH_WORDS.get(item['reach'], item['reach'])})"


class _Reachability:
    """What a rule's group leads to (load balancer, instances) and what listens on its ports."""

    def __init__(self, facts: Facts) -> None:
        self.paths = {
            (rid(p.get("target")), p["protocol"], p["ports"], p.get("source")): p
            for p in get(facts, "network", "reachability")
            if p.get("target")
        }

    def of(self, rule: Facts) -> Facts:
        key = (rid(rule.get("group")), rule["protocol"], rule["ports"], rule.get("source"))
        return self.paths.get(key, {})

    def target(self, rule: Facts, names: Names) -> str:
        path = self.of(rule)
        behind = names.join(path.get("behind") or [])
        if not behind:
            return f"group {names(rule.get('group'), '?')}"
        forwards = names.join(path.get("forwards_to") or [])
        return f"{behind} → {forwards}" if forwards else behind

    def listens(self, rule: Facts) -> str:
        text = str(self.of(rule).get("listens", ""))
        return text.split(" ", 1)[1] if text.startswith(f"{rule['ports']} ") else ""


def _where(items: list[Facts], key: str, fallback: str) -> tuple[Facts, ...]:
    found = {rid(r): r for i in items if (r := i.get(key) or i.get(fallback))}
    return tuple(found[k] for k in sorted(found, key=str))


def _rule_id(peer: str) -> Callable[[Facts], Hashable]:
    """A rule's identity: its group, protocol, ports and `peer` (source or destination)."""
    return lambda rule: (
        rid(rule.get("group")) or canon_literal(rule.get("group")),
        rule["protocol"],
        rule["ports"],
        _peer_id(rule, peer, f"{peer}_resource"),
    )


def _ingress(old: Facts, new: Facts, names: Names) -> list[Change]:
    matched = match(
        get(old, "network", "ingress"),
        get(new, "network", "ingress"),
        _rule_id("source"),
        lambda r: r["reach"],
    )
    reach_new, reach_old = _Reachability(new), _Reachability(old)
    changes: list[Change] = []
    for action, items, olds in _grouped(
        matched,
        lambda r: (rid(r.get("group")), _peer_id(r, "source", "source_resource"), r["reach"]),
    ):
        reach = reach_old if action == REMOVED else reach_new
        first = items[0]
        text = (
            f"{_source(first, names)} → {reach.target(first, names)}: "
            f"{_ports(items, reach.listens)}"
        )
        why = ""
        if action == CHANGED:
            was = olds[0]["reach"]
            text += f" (reach: {REACH_WORDS.get(was, was)} → {REACH_WORDS.get(first['reach'])})"
            if first["reach"] in EXTERNAL and was not in EXTERNAL:
                why = f"now reachable from {REACH_WORDS[first['reach']]}"
        elif action == ADDED and first["reach"] in EXTERNAL:
            why = f"reachable from {REACH_WORDS[first['reach']]}"
        changes.append(
            Change("ingress", action, text, _where(items, "declared_by_resource", "group"), why)
        )
    return changes


def canon_literal(value: Facts | None) -> str:
    return str((value or {}).get("literal", ""))


def _listener_text(item: Facts, names: Names) -> str:
    return (
        f"{names(item.get('load_balancer'), 'load balancer')} listener {item['protocol']} "
        f"{item['port']} ({item['scheme']} {item['type']})"
    )


def _listeners(old: Facts, new: Facts, names: Names) -> list[Change]:
    fields = ("port", "protocol", "scheme", "type", "reach")
    matched = match(
        get(old, "network", "listeners"),
        get(new, "network", "listeners"),
        lambda item: rid(item.get("listener")),
        lambda item: [item.get(f) for f in fields],
    )
    changes = additions_and_removals(
        "ingress",
        matched,
        lambda item: _listener_text(item, names),
        lambda item: (item["listener"],),
        lambda item: (
            f"a load balancer reachable from {REACH_WORDS[item['reach']]}"
            if item["reach"] in EXTERNAL
            else ""
        ),
    )
    for was, now in matched.changed:
        diffs = [f"{f} {was.get(f)} → {now.get(f)}" for f in fields if was.get(f) != now.get(f)]
        why = ""
        if now["reach"] in EXTERNAL and was["reach"] not in EXTERNAL:
            why = f"now reachable from {REACH_WORDS[now['reach']]}"
        elif (
            str(was["protocol"]).upper() in _ENCRYPTED and now["protocol"].upper() not in _ENCRYPTED
        ):
            why = "the listener no longer terminates TLS"
        changes.append(
            Change(
                "ingress",
                CHANGED,
                f"{_listener_text(now, names)}: {', '.join(diffs)}",
                (now["listener"],),
                why,
            )
        )
    return changes


# --- egress ----------------------------------------------------------------------------------


def _attached(facts: Facts) -> dict[Hashable, list[Facts]]:
    return {
        rid(item["group"]): item.get("attached_to") or []
        for item in get(facts, "network", "security_groups")
    }


def _destination(item: Facts, names: Names) -> str:
    if item.get("destination_resource"):
        return f"security group {names(item['destination_resource'])}"
    where = REACH_WORDS.get(item["reach"], item["reach"])
    return f"{item['destination']} ({where})"


def _egress(old: Facts, new: Facts, names: Names) -> list[Change]:
    matched = match(
        get(old, "network", "egress"),
        get(new, "network", "egress"),
        _rule_id("destination"),
        lambda r: [r["reach"], r.get("implicit", False)],
    )
    attached = {ADDED: _attached(new), CHANGED: _attached(new), REMOVED: _attached(old)}
    existing = {rid(r.get("group")) for r in get(old, "network", "egress")}
    changes: list[Change] = []
    for action, items, olds in _grouped(
        matched,
        lambda r: (rid(r.get("group")), _peer_id(r, "destination", "destination_resource")),
    ):
        first = items[0]
        group = names(first.get("group"), canon_literal(first.get("group")))
        behind = names.join(attached[action].get(rid(first.get("group")), []))
        who = f"{behind} (group {group})" if behind else f"group {group}"
        implicit = " (EC2's default rule)" if first.get("implicit") else ""
        if implicit and action == ADDED and rid(first.get("group")) in existing:
            # AWS::EC2::SecurityGroup, SecurityGroupEgress: "After the security group is
            # created, if you remove all egress rules that you added, we do not add egress
            # rules, so no outbound traffic is allowed."
            implicit = (
                " (EC2's default rule on a fresh deploy; on an update of the deployed group "
                "CloudFormation adds none: no outbound traffic)"
            )
        text = f"{who} → {_destination(first, names)}: {_ports(items)}{implicit}"
        why = ""
        external = [i for i in items if i["reach"] in EXTERNAL]
        if action == ADDED and external:
            why = f"sends to {REACH_WORDS[external[0]['reach']]}"
        elif action == CHANGED:
            was = olds[0]["reach"]
            text += f" (reach: {REACH_WORDS.get(was, was)} → {REACH_WORDS.get(first['reach'])})"
            if first["reach"] in EXTERNAL and was not in EXTERNAL:
                why = f"now sends to {REACH_WORDS[first['reach']]}"
        changes.append(Change("egress", action, text, _where(items, "declared_by", "group"), why))
    return changes


# --- published host ports --------------------------------------------------------------------


def _host_ports(facts: Facts) -> list[Facts]:
    return [
        {
            "bind": ALL_INTERFACES,  # review.json written before binds were read
            **port,
            "task_definition": network["task_definition"],
            "network_mode": network["network_mode"],
        }
        for network in get(facts, "network", "published_ports")
        for port in network.get("ports") or []
    ]


def _port_text(port: Facts) -> str:
    role = "app, no mTLS" if port.get("bypasses_mesh") else port.get("role", "")
    told = f", told {port['told']}" if port.get("told") else ""
    return (
        f"{port['container']} {port['container_port']}/{port['protocol']} → "
        f"host {port['host_port']} ({role}; binds {port['bind']}{told})"
    )


def _leaves_loopback(was: Facts, now: Facts) -> bool:
    """A port that only the host's processes reached is now reachable by its clients."""
    return bool(was["bind"] == LOOPBACK and now["bind"] != LOOPBACK)


def _published(old: Facts, new: Facts, names: Names) -> list[Change]:
    fields = ("host_port", "role", "bypasses_mesh", "network_mode", "bind")
    matched = match(
        _host_ports(old),
        _host_ports(new),
        lambda p: (rid(p["task_definition"]), p["container"], p["container_port"], p["protocol"]),
        lambda p: [p.get(f) for f in fields],
    )
    changes: list[Change] = []
    for action, items, olds in _grouped(matched, lambda p: rid(p["task_definition"])):
        task = items[0]["task_definition"]
        head = f"{names(task)} ({items[0]['network_mode']} mode): "
        if action == CHANGED:
            parts = [
                f"{now['container']} {now['container_port']}: "
                + ", ".join(
                    f"{f} {was.get(f)} → {now.get(f)}" for f in fields if was.get(f) != now.get(f)
                )
                for was, now in zip(olds, items, strict=True)
            ]
            pairs = list(zip(olds, items, strict=True))
            reasons = []
            if any(now.get("bypasses_mesh") and not was.get("bypasses_mesh") for was, now in pairs):
                reasons.append("an app port now bypasses mTLS and intentions")
            left = [now for was, now in pairs if _leaves_loopback(was, now)]
            if left:
                reasons.append(
                    "no longer bound to loopback, now open to any client of the host: "
                    + ", ".join(f"{p['container']} {p['container_port']}" for p in left)
                )
            why = "; ".join(reasons)
            changes.append(Change("host-ports", action, head + "; ".join(parts), (task,), why))
            continue
        text = head + "; ".join(
            _port_text(p) for p in sorted(items, key=lambda p: p["container_port"] or 0)
        )
        why = ""
        if action == ADDED and any(p["bind"] != LOOPBACK for p in items):
            why = "a new port on every host that runs the task, open to any client of the host"
            if any(p.get("bypasses_mesh") for p in items):
                why += "; an app port that bypasses mTLS and intentions"
        changes.append(Change("host-ports", action, text, (task,), why))
    return changes


def _entry_points(old: Facts, new: Facts, names: Names) -> list[Change]:
    """Function URLs without auth, public APIs, CDNs: the internet reaches them by design."""
    matched = match(
        get(old, "network", "entry_points"),
        get(new, "network", "entry_points"),
        lambda item: rid(item["resource"]),
        lambda item: [item["what"]],
    )
    changes = additions_and_removals(
        "ingress",
        matched,
        lambda item: f"the internet → {names(item['resource'])}: {item['what']}",
        lambda item: (item["resource"],),
        lambda _: "reachable from the internet, no security group in front",
    )
    changes += [
        Change(
            "ingress",
            CHANGED,
            f"the internet → {names(now['resource'])}: {was['what']} → {now['what']}",
            (now["resource"],),
            "reachable from the internet, no security group in front",
        )
        for was, now in matched.changed
    ]
    return changes


def _paths(old: Facts, new: Facts, names: Names) -> list[Change]:
    """Routes, VPN, transit gateway and peering: who else is routed to the VPC."""
    matched = match(
        get(old, "network", "paths"),
        get(new, "network", "paths"),
        lambda item: rid(item["resource"]),
        lambda item: [item["what"], item["inbound"]],
    )

    def text(item: Facts) -> str:
        return f"{item['kind']} {names(item['resource'])}: {item['what']}"

    def why(item: Facts) -> str:
        if not item["inbound"]:
            return ""
        return (
            "a new network path into the VPC: 'inside the VPC' and internal load balancers "
            "now reach further"
        )

    changes = additions_and_removals("paths", matched, text, lambda i: (i["resource"],), why)
    changes += [
        Change("paths", CHANGED, f"{text(now)} (was {was['what']})", (now["resource"],), why(now))
        for was, now in matched.changed
    ]
    return changes


def network_changes(old: Facts, new: Facts, names: Names) -> list[Change]:
    return [
        *_ingress(old, new, names),
        *_paths(old, new, names),
        *_entry_points(old, new, names),
        *_listeners(old, new, names),
        *_egress(old, new, names),
        *_published(old, new, names),
    ]
