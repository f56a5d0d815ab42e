"""The first page of REVIEW.md: the reviewer's four questions, one table each, one screen.

1. What is reachable from where?  2. Who can read or write each secret, and what does it grant
in Consul?  3. Which wildcards exist, and which acknowledgement covers them?  4. What is weaker
than the secure default?

Every resource is named by a short unique name (`model.short_names`, computed over everything
the page names); long lists wrap into continuation rows and long reasons are abridged, so no
line is wider than `WIDTH`. The appendix holds every fact in full, with logical IDs and paths.
"""

from __future__ import annotations

from collections.abc import Iterable

from tools.review.appendix import IAM, SECRETS
from tools.review.collect import Review
from tools.review.consul import AclPolicy, AclRule, AclToken
from tools.review.markdown import abridge, abridge_list, compact, logical_names, table
from tools.review.model import Res, brace_join, short_names
from tools.review.network import Reach
from tools.review.posture import Weakness, WildcardGroup, weaknesses, wildcard_groups
from tools.review.reachability import Path
from tools.review.secrets import Access, SecretReview

WIDTH = 120
SECRETS_HEADING = (
    "Who can read or write each secret, and what it grants in Consul "
    "(roles of these templates; IAM may allow others)"
)


class _Names:
    """Short names for every resource the page mentions (and, apart, for the resources that
    wildcard ARNs refer to, so a function and its role never need telling apart)."""

    def __init__(self, review: Review) -> None:
        found: list[Res] = []
        for path in review.reachability:
            found += [r for r in (path.target, path.source_res) if r is not None]
            found += [*path.behind, *path.forwards_to]
        for secret in review.secrets.secrets:
            found.append(secret.res)
            found += [a.principal for a in (*secret.readers, *secret.writers) if a.principal]
        found += [a.principal for a in review.secrets.unresolved if a.principal]
        for group in wildcard_groups(review):
            found += [principal for principal, _ in group.items if principal is not None]
        found += [item.res for item in review.entry_points]
        for weakness in weaknesses(review):
            found += [r for r in (weakness.subject, *weakness.others) if r is not None]
        self.names = short_names(found)
        referred = [
            stack.res(logical_id)
            for stack in review.assembly.stacks
            for logical_id in stack.resources
            if f"<{logical_id}" in "".join(w.finding for w in review.wildcards)
        ]
        self.by_logical_id = logical_names(short_names(referred))

    def __call__(self, res: Res | None, fallback: str = "?") -> str:
        return self.names.get(res, res.logical_id) if res is not None else fallback

    def join(self, resources: Iterable[Res | None]) -> str:
        return brace_join([self(res) for res in resources if res is not None])


def _source(path: Path, names: _Names) -> str:
    if path.source_kind == "host-clients":
        return "**clients of the host**"
    if path.source_kind == "routed":  # the VPC's addresses include an open load balancer's
        return f"**{Reach.ROUTED.value}** (via {names(path.source_res, path.source)})"
    if path.source_kind in ("group", "vpc"):
        itself = path.source_res is not None and path.source_res == path.target
        return names(path.source_res, path.source) + (" (itself)" if itself else "")
    kind = {
        "internet": "internet",
        "outside-vpc": "outside the VPC",
        "prefix-list": "prefix list",
        "unresolved": "unresolved",
    }.get(path.source_kind, path.source_kind)
    text = f"{kind} {path.source}".strip()
    return f"**{text}**" if path.reach.external else text


def _sources(sources: list[str]) -> str:
    """Sources joined, sibling groups folded (`{ConsulObjects,Registrar}/SecurityGroup`)."""
    plain = [s for s in sources if not s.startswith("**") and " " not in s]
    other = [s for s in sources if s not in plain]
    return ", ".join(([brace_join(plain)] if plain else []) + other)


def _reaches(path: Path, names: _Names) -> str:
    if path.target is None:
        return names.join(path.behind)
    behind = names.join(path.behind) or f"group {names(path.target)}"
    if path.forwards_to:
        behind += " → " + names.join(path.forwards_to)
    return behind


def _ports(paths: list[Path]) -> str:
    """`tcp 8501 HTTPS API, 8503 gRPC-TLS; udp 8301`, or the host ports of a task."""
    if paths[0].target is None:
        by_container: dict[str, list[str]] = {}
        for path in sorted(paths, key=lambda p: (not p.bypasses_mesh, p.ports)):
            container = path.container
            port = path.ports.split(" ->", 1)[0]
            if path.bypasses_mesh:
                port = f"**{port} (no mTLS)**"
            elif path.listens.startswith("mesh"):
                port += " (mTLS)"
            elif path.listens.startswith("expose"):
                port += " (health path, no mTLS)"
            by_container.setdefault(container, []).append(port)
        dynamic = " → dynamic" if all("dynamic" in p.ports for p in paths) else ""
        return ", ".join(f"{c} {', '.join(ports)}" for c, ports in by_container.items()) + dynamic
    by_protocol: dict[str, list[str]] = {}
    for path in sorted(paths, key=lambda p: (p.protocol, p.ports)):
        name = next(
            (
                part.split(" ", 1)[1]
                for part in path.listens.split(", ")
                if part.startswith(path.ports + " ")
            ),
            "",
        )
        text = f"{path.ports} {name}".strip()
        text = f"**{text} (plaintext)**" if path.plaintext else text
        items = by_protocol.setdefault(path.protocol, [])
        if text not in items:
            items.append(text)
    return "; ".join(f"{protocol} {', '.join(items)}" for protocol, items in by_protocol.items())


def _reachability(review: Review, names: _Names) -> list[str]:
    lines = ["## 1. What is reachable from where"]
    internet = [p for p in review.reachability if p.source_kind == "internet"]
    public = [item for item in review.exposure.external_listeners if item.reach is not Reach.ROUTED]
    # One row per (what is reached, the set of ports) with every source reaching exactly that.
    targets: dict[tuple[str, bool], dict[str, list[Path]]] = {}
    for path in review.reachability:
        key = (_reaches(path, names), path.source_kind == "host-clients")
        targets.setdefault(key, {}).setdefault(_source(path, names), []).append(path)
    rows: list[tuple[str, str, str]] = []
    for (reaches, _), sources in targets.items():
        by_ports: dict[str, list[str]] = {}
        for source, paths in sources.items():
            by_ports.setdefault(_ports(paths), []).append(source)
        for ports, froms in by_ports.items():
            external = sorted(s for s in froms if s.startswith("**"))
            internal = sorted(s for s in froms if not s.startswith("**"))
            for group in (external, internal):
                if group:
                    rows.append((_sources(group), reaches, ports))
    rank = {"**clients of the host**": 2}
    rows.sort(key=lambda row: (rank.get(row[0], 1 if row[0].startswith("**") else 3), row[1:]))
    if not internet and not public and not review.entry_points:
        checked = "no 0.0.0.0/0 or ::/0 ingress, public LB, open function URL, API or CDN"
        rows.insert(0, ("the internet", "nothing", checked))
    else:
        rows += [
            ("**the internet**", names(item.load_balancer_res), f"{item.protocol} {item.port}")
            for item in public
        ]
        rows += [("**the internet**", names(item.res), item.what) for item in review.entry_points]
    lines += table(("From", "Reaches", "Ports: what listens"), rows, width=WIDTH)
    return [*lines, ""]


def _rules(rules: Iterable[AclRule]) -> str:
    """`write key ecs-registrar/*, node ecs-task-*, service *` (grouped by access)."""
    by_access: dict[str, list[str]] = {}
    for rule in rules:
        by_access.setdefault(rule.access, []).append(rule.text().rsplit(":", 1)[0])
    return "; ".join(f"{access} {', '.join(names)}" for access, names in by_access.items())


def _grant(token: AclToken | None, secret: SecretReview, policies: dict[str, AclPolicy]) -> str:
    if token is not None:
        parts = [
            f"{name} ({_rules(policies[name].rules)})" if name in policies else name
            for name in token.policies
        ]
        parts += [f"service identity {name}" for name in token.service_identities]
        return "token: " + ", ".join(parts)
    return abridge(secret.description.split(";")[0].split(":")[0], 36) or "—"


def _who(accesses: list[Access], names: _Names) -> str:
    named = [a.principal for a in accesses if a.principal is not None]
    text = names.join(named)
    others = sorted({a.principal_text for a in accesses if a.principal is None})
    wildcards = sum(a.wildcard for a in accesses)
    parts = [text] if text else []
    parts += others
    if wildcards:
        parts.append(f"({wildcards} by wildcard)")
    return ", ".join(parts) or "nobody in the templates"


def _secrets(review: Review, names: _Names) -> list[str]:
    # Same-account principals need only an IAM allow (no resource policy of these templates
    # denies them; the keys' policies allow the account root, so IAM decides: KMS Developer
    # Guide, "Default key policy"): the table is as complete as the templates' roles.
    lines = [f"## 2. {SECRETS_HEADING}"]
    if not review.secrets.secrets:
        return [*lines, "No Secrets Manager secret.", ""]
    # Secrets nobody but the same principals touch, and that grant nothing declared in
    # Consul, share a row: what matters is who holds them.
    merged: dict[tuple[str, str, str], list[SecretReview]] = {}
    for secret in review.secrets.secrets:
        token = review.consul.token_for(secret.res)
        alone = secret.res.key if token else ""
        key = (alone, _who(secret.readers, names), _who(secret.writers, names))
        merged.setdefault(key, []).append(secret)
    policies = {policy.name: policy for policy in review.consul.policies}
    rows = []
    for (_, readers, writers), members in merged.items():
        token = review.consul.token_for(members[0].res)
        what = (
            _grant(token, members[0], policies) if len(members) == 1 else "no Consul grant declared"
        )
        rows.append((", ".join(names(m.res) for m in members), what, readers, writers))
    lines += table(("Secret", "What it is / grants", "Read by", "Written by"), rows, width=WIDTH)
    lines.append("")
    unresolved = review.secrets.unresolved
    if unresolved:
        who = names.join(a.principal for a in unresolved) or "roles outside the templates"
        lines += [
            f"**Unresolved:** {len(unresolved)} read/write grants name secrets the review "
            f"cannot resolve ({who}); see {SECRETS}.",
            "",
        ]
    return lines


def _wildcard_text(group: WildcardGroup, names: dict[str, str]) -> str:
    found = [
        compact(wildcard.removeprefix("Action::").removeprefix("Resource::"), names)
        for _, wildcard in group.items
    ]
    return abridge_list([f"`{item}`" for item in dict.fromkeys(found)], 40)


def _wildcards(review: Review, names: _Names) -> list[str]:
    lines = ["## 3. Which wildcards exist, and why"]
    groups = wildcard_groups(review)
    if not groups:
        return [*lines, "None.", ""]
    rows: list[tuple[str, str, str]] = []
    for group in groups:
        holders = sorted({names(principal) for principal, _ in group.items if principal})
        where = abridge_list(brace_join(holders).split(", "), 30)
        text = _wildcard_text(group, names.by_logical_id)
        room = WIDTH - len(text) - len(where) - 10
        if group.kind == "iam":
            reason = abridge(group.reason, room) if group.acknowledged else "**UNACKNOWLEDGED**"
        else:
            reason = abridge("Consul: " + group.reason, room)
        rows.append((text, where, reason))
    lines += table(("Wildcards", "Held by", f"Reason (acknowledgements: {IAM})"), rows, width=WIDTH)
    return [*lines, ""]


_KINDS = {
    "published-app-port": "app port",
    "metrics-every-interface": "open metrics",
    "plaintext-listener": "plaintext",
    "ingress-anywhere": "ingress",
    "internet-facing": "public LB",
    "egress-anywhere": "egress",
    "key-policy": "key policy",
    "resource-policy": "resource policy",
    "intention-wildcard": "intention",
    "unacknowledged-wildcard": "wildcard",
    "unresolved-secret-access": "unresolved",
    "dynamic-reference": "dynamic ref",
}


def _weaker_row(item: Weakness, names: _Names) -> tuple[str, str, str]:
    subjects = [res for res in (item.subject, *item.others) if res is not None]
    where = names.join(subjects) or "—"
    what = abridge(f"{_KINDS.get(item.kind, item.kind)}: {item.what}", 64).replace("->", "→")
    # the table wraps a long list of places, never a single long name
    longest = max((len(word) for word in where.split()), default=0)
    room = WIDTH - 10 - len(what) - max(min(len(where), 30), longest)
    return (what, where, abridge(item.why, max(room, 30)))


def _weaker(review: Review, names: _Names) -> list[str]:
    lines = ["## 4. What is weaker than the secure default"]
    items = weaknesses(review)
    if not items:
        return [*lines, "Nothing.", ""]
    lines += table(
        ("What", "Where", "Why it matters"), [_weaker_row(i, names) for i in items], width=WIDTH
    )
    return [*lines, ""]


def _status(review: Review) -> str:
    nag = review.nag
    lint = review.lint
    lint_text = "cfn-lint skipped" if lint.skipped else f"cfn-lint {lint.errors} errors"
    report = "" if review.report_found else "NO validation report, "
    return (
        f"Gate: {report}{len(nag.open)} open nag findings, {len(nag.stale)} stale acks, "
        f"{len(review.unacknowledged_wildcards)} unacknowledged wildcards, "
        f"{len(review.exposure.critical)} rules open to 0.0.0.0/0, {lint_text}."
    )


def first_page(review: Review) -> list[str]:
    names = _Names(review)
    stacks = ", ".join(s.name for s in review.assembly.stacks) or "no stack"
    total = sum(sum(c.values()) for c in review.resource_counts().values())
    lines = [
        f"# Security review: {stacks}",
        "",
        f"What `cdk deploy` of `{review.assembly.outdir.name}` creates ({total} resources), "
        "from its templates alone. All facts: [appendix](#appendix).",
        _status(review),
        "",
    ]
    for section in (_reachability, _secrets, _wildcards, _weaker):
        lines += section(review, names)
    while lines and not lines[-1]:
        lines.pop()  # the caller separates the page from what follows
    return lines
