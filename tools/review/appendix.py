"""The appendix of REVIEW.md: every fact in full, with logical IDs and construct paths.

Sections are numbered (`A.1` ...) so the first page can point at them. The ingress table's
heading and columns are a contract: `tools.review.crosscheck` parses them back to compare with
the templates.
"""

from __future__ import annotations

from collections.abc import Callable

from tools.review.collect import Review
from tools.review.containers import LOOPBACK, UNKNOWN_BIND, PublishedPort
from tools.review.exposure import IngressRule, Reach, vpcs
from tools.review.iam import RoleReview, Wildcard
from tools.review.markdown import table
from tools.review.model import Res
from tools.review.nag import Cover, stale_message
from tools.review.policy import DocStatement
from tools.review.posture import wildcard_groups
from tools.review.secrets import Access

APPENDIX_HEADING = "# Appendix"
NETWORK, SECRETS, CONSUL, IAM, KEYS, POLICIES, ENCRYPTION, NAG, LINT, TOTALS = (
    f"A.{n}" for n in range(1, 11)
)
INGRESS_HEADING = "### Security group ingress rules"
INGRESS_COLUMNS = (
    "Reach",
    "Stack",
    "Security group",
    "Protocol",
    "Ports",
    "Source",
    "Description",
    "Declared by",
)
_REACH_ORDER = list(Reach)


def _md(res: Res | None, fallback: str = "—") -> str:
    return res.markdown() if res is not None else fallback


def _ingress_rows(rules: list[IngressRule]) -> list[list[str]]:
    ordered = sorted(
        rules,
        key=lambda r: (_REACH_ORDER.index(r.reach), r.stack, r.group, r.protocol, r.ports),
    )
    return [
        [
            f"**{rule.reach.value}**" if rule.reach.external else rule.reach.value,
            rule.stack,
            rule.group_label,
            rule.protocol,
            rule.ports,
            rule.source_label,
            rule.description,
            f"`{rule.declared_by}`",
        ]
        for rule in ordered
    ]


def _listener_protocol(protocol: str) -> str:
    upper = protocol.upper()
    if upper in ("HTTPS", "TLS", "SSL"):
        return f"{protocol} (TLS terminated at the listener)"
    if upper in ("TCP", "UDP", "TCP_UDP"):
        return f"{protocol} (passed through: TLS only if the target speaks it)"
    return f"{protocol} (plaintext)" if upper == "HTTP" else protocol


def _network(review: Review) -> list[str]:
    exposure = review.exposure
    lines = [f"## {NETWORK} Network: ingress, listeners, egress, published host ports", ""]
    networks = [f"{cidr} ({label})" for label, cidr in vpcs(review.assembly)]
    networks += [f"{cidr} (given with --vpc-cidr)" for cidr in review.vpc_cidrs]
    lines.append("VPC CIDRs: " + ("; ".join(networks) if networks else "none in the templates"))
    lines += [
        "",
        "A source outside these CIDRs is reachable from outside the VPC (on-premises, VPN, "
        "internet); a source the templates do not resolve is counted as outside.",
        "",
        INGRESS_HEADING,
        "",
    ]
    if exposure.rules:
        lines += table(INGRESS_COLUMNS, _ingress_rows(exposure.rules))
    else:
        lines.append("No ingress rules.")
    lines += ["", "### Load balancer listeners", ""]
    if exposure.listeners:
        lines += table(
            ("Reach", "Listener", "Load balancer", "Type", "Scheme", "Port", "Protocol", "Targets"),
            [
                [
                    f"**{item.reach.value}**"
                    if item.reach.external
                    else "networks routed to the VPC, as its security groups allow (A.1 rules)"
                    if item.reach is Reach.INSIDE_VPC
                    else item.reach.value,
                    item.listener_label,
                    item.load_balancer_label,
                    item.load_balancer_type,
                    item.scheme,
                    item.port,
                    _listener_protocol(item.protocol),
                    ", ".join(r.markdown() for r in item.default_targets),
                ]
                for item in exposure.listeners
            ],
        )
    else:
        lines.append("No load balancer listeners.")
    lines += ["", *_egress(review), *_published(review), *_paths(review)]
    return lines


def _egress(review: Review) -> list[str]:
    lines = [
        "### Egress rules",
        "",
        "A group without any egress rule keeps EC2's default (all traffic to any address); "
        "a group with only standalone egress rules loses it (see `tools/review/egress.py`). "
        "VPC endpoints in the templates: "
        + (", ".join(f"`{e}`" for e in review.egress.endpoints) or "none")
        + ".",
        "",
    ]
    if not review.egress.rules:
        return [*lines, "No security group.", ""]
    lines += table(
        ("Security group", "Protocol", "Ports", "Destination", "Description", "Reason"),
        [
            [
                rule.group_label,
                rule.protocol,
                rule.ports,
                f"**{rule.destination_label}**" if rule.to_anywhere else rule.destination_label,
                rule.description + (" (implicit)" if rule.implicit else ""),
                rule.reason,
            ]
            for rule in review.egress.rules
        ],
    )
    return [*lines, ""]


def _paths(review: Review) -> list[str]:
    lines = [
        "### Network paths: routes, VPN, transit gateway, peering",
        "",
        'Who else is routed to the VPC: "inside the VPC" and an internal load balancer reach '
        "as far as these paths (a transit gateway attachment connects whatever its route table "
        "propagates; route propagation means routes learnt over BGP, not in the templates).",
        "",
    ]
    if not review.network_paths:
        return [*lines, "No route or attachment in the templates.", ""]
    rows = [
        [item.kind, _md(item.res), item.what, "yes" if item.inbound else "no (outbound only)"]
        for item in sorted(review.network_paths, key=lambda p: (p.kind, p.what))
    ]
    return [*lines, *table(("Kind", "Resource", "Connects", "Brings clients in"), rows), ""]


def _bind_text(port: PublishedPort, mode: str) -> str:
    if mode != "host":
        return "all interfaces (published by Docker)"
    if port.bind == UNKNOWN_BIND:
        return "**not stated in the template**"
    told = f" (told {port.told})" if port.told else ""
    text = f"{port.bind}{told}"
    return text if port.bind == LOOPBACK else f"**{text}**" if port.bypasses_mesh else text


def _published(review: Review) -> list[str]:
    lines = [
        "### Container ports published on the hosts",
        "",
        "Per task definition and network mode (`bridge` when omitted). `host`: the container "
        "port is a port of the host; `bridge`: published on `hostPort`, or on a port from the "
        "host's ephemeral range when it is 0. An app container (docker label "
        "`consul-mesh.enabled`) with a published port is reachable without its sidecar: no "
        "mTLS, no intentions. In host mode ECS only reserves a mapped port: who reaches it is "
        "decided by the address the process binds, shown where the template tells the process "
        "(an app's own ports are not mapped at all). The template cannot bound what a process "
        "binds; it can only say where it is told to listen.",
        "",
    ]
    if not review.task_networks:
        return [*lines, "No task definition.", ""]
    rows = []
    for network in review.task_networks:
        mode = network.network_mode + ("" if network.mode_given else " (default)")
        if not network.ports:
            rows.append(
                [network.task_definition.markdown(), mode, "—", "—", "—", "—", "no port", ""]
            )
        for port in network.ports:
            rows.append(
                [
                    network.task_definition.markdown(),
                    mode,
                    f"`{port.container}`",
                    f"{port.protocol} {port.container_port}",
                    port.host_port,
                    _bind_text(port, network.network_mode),
                    port.role,
                    "**bypasses mTLS and intentions**" if port.bypasses_mesh else "",
                ]
            )
    lines += table(
        (
            "Task definition",
            "Network mode",
            "Container",
            "Port",
            "On the host",
            "Binds",
            "What",
            "Flag",
        ),
        rows,
    )
    return [*lines, ""]


def _accesses(title: str, accesses: list[Access]) -> list[str]:
    if not accesses:
        return [f"{title}: nobody in the templates.", ""]
    return [
        *table(
            (title, "Actions", "How", "Condition", "Policy"),
            [
                [
                    _md(a.principal, f"`{a.principal_text}`"),
                    ", ".join(a.actions),
                    a.how,
                    f"`{a.condition}`" if a.condition else "",
                    a.policy.markdown(),
                ]
                for a in accesses
            ],
        ),
        "",
    ]


def _secrets(review: Review) -> list[str]:
    lines = [
        f"## {SECRETS} Secrets: readers, writers, injection points",
        "",
        "Readers and writers are the roles of these templates whose policies allow it. A "
        "principal of the same account needs only an IAM allow: a resource policy that allows "
        "does not exclude it, and a key policy allowing the account root lets IAM decide (KMS "
        'Developer Guide, "Default key policy"). So any principal of the account whose IAM '
        "policies allow `secretsmanager:GetSecretValue` and `kms:Decrypt` reads these secrets "
        "too, and an ECS execution-role reader means the ECS agent of every host that runs the "
        "task fetches the value.",
        "",
    ]
    if not review.secrets.secrets:
        lines += ["No Secrets Manager secrets.", ""]
    for secret in review.secrets.secrets:
        token = review.consul.token_for(secret.res)
        lines += [
            f"### Secret {secret.label}",
            "",
            f"- {secret.description or 'no description'}",
            f"- KMS key: {secret.key}; {secret.rotation}",
            "- Consul: "
            + (
                f"SecretID of token {token.res.markdown()} ({CONSUL})"
                if token
                else "no Consul-object token declares it"
            ),
        ]
        if secret.injections:
            lines.append("- Injected into:")
            lines += [
                f"  - {item.where.markdown()} ({item.where.type}), {item.kind}: {item.detail}"
                + (f" via {', '.join(item.via)}" if item.via else "")
                for item in secret.injections
            ]
        else:
            lines.append("- Injected into: not referenced by any other resource")
        lines.append("")
        lines += _accesses("Can read", secret.readers)
        lines += _accesses("Can write", secret.writers)
    lines += [f"### Unresolved secret access: {len(review.secrets.unresolved)}", ""]
    if review.secrets.unresolved:
        lines += table(
            ("Principal", "Actions", "Resource", "Why unresolved", "Policy"),
            [
                [
                    _md(a.principal, f"`{a.principal_text}`"),
                    ", ".join(a.actions),
                    f"`{a.value}`",
                    "; ".join(a.why),
                    a.policy.markdown(),
                ]
                for a in review.secrets.unresolved
            ],
        )
    else:
        lines.append("Every secret resource a policy names resolves to a secret of the templates.")
    lines.append("")
    if review.secrets.dynamic_references:
        lines += [
            "**Dynamic references** (`{{resolve:secretsmanager:...}}`: CloudFormation puts the "
            "value into the resource, visible to anyone who can describe it):",
            "",
            *(f"- {item.markdown()}" for item in review.secrets.dynamic_references),
            "",
        ]
    return lines


def _table_or(
    heading: str, columns: tuple[str, ...], rows: list[list[str]], empty: str
) -> list[str]:
    return [heading, "", *(table(columns, rows) if rows else [empty]), ""]


def _consul(review: Review) -> list[str]:
    consul = review.consul
    none = "None declared."
    return [
        f"## {CONSUL} Consul: ACL policies, tokens, intentions, config entries",
        "",
        "As declared by the Consul-object custom resources (applied at deploy time). Tokens the "
        "servers mint at boot are not declared there.",
        "",
        *_table_or(
            "### ACL policies",
            ("Policy", "Description", "Rules", "Declared by"),
            [
                [
                    f"`{p.name}`",
                    p.description,
                    "; ".join(f"`{r.text()}`" for r in p.rules) or f"`{p.raw}`",
                    p.res.markdown(),
                ]
                for p in consul.policies
            ],
            none,
        ),
        *_table_or(
            "### ACL tokens",
            ("Token", "Policies", "Service identities", "Grants", "SecretID in"),
            [
                [
                    f"{t.description} ({t.res.markdown()})",
                    ", ".join(f"`{p}`" for p in t.policies)
                    + (f" (unresolved: {', '.join(t.unresolved)})" if t.unresolved else ""),
                    ", ".join(f"`{s}`" for s in t.service_identities),
                    "; ".join(f"`{r.text()}`" for r in t.rules),
                    _md(t.secret),
                ]
                for t in consul.tokens
            ],
            none,
        ),
        *_table_or(
            "### Intentions",
            ("Source", "Destination", "Action", "Declared by"),
            [
                [f"`{i.source}`", f"`{i.destination}`", i.action, i.entry.markdown()]
                for i in consul.intentions
            ],
            none,
        ),
        *_table_or(
            "### Config entries",
            ("Kind", "Name", "Entry", "Declared by"),
            [[e.kind, f"`{e.name}`", f"`{e.body}`", e.res.markdown()] for e in consul.entries],
            none,
        ),
    ]


def _covers(covers: list[Cover]) -> str:
    return "; ".join(
        f"{cover.rule} at {cover.acknowledged_at or 'app'}: “{cover.reason}” ({cover.source})"
        for cover in covers
    )


def _wildcard_row(wildcard: Wildcard) -> list[str]:
    if wildcard.acknowledged:
        status = "acknowledged"
    elif wildcard.covers:
        status = "**UNACKNOWLEDGED** (open in the validation report)"
    else:
        status = "**UNACKNOWLEDGED**"
    return [status, f"`{wildcard.finding}`", wildcard.policy, _covers(wildcard.covers)]


def _role(role: RoleReview) -> list[str]:
    lines = [f"### Role {role.label}" + (f" — stack {role.stack}" if role.stack else ""), ""]
    lines.append("- Assumed by: " + (", ".join(role.assumed_by) or "—"))
    if role.managed:
        managed = [
            f"`{policy.arn}`"
            + (
                f" (statements from the review's pinned copy {policy.evaluated}"
                + (f"; {policy.partial}" if policy.partial else "")
                + ", listed below)"
                if policy.evaluated
                else " (**not evaluated**: contents not in the templates nor pinned)"
            )
            + (f" (acknowledged: {_covers(policy.covers)})" if policy.covers else "")
            for policy in role.managed
        ]
        lines.append("- AWS managed policies: " + "; ".join(managed))
    else:
        lines.append("- AWS managed policies: none")
    allowed = [
        f"**{service}**: " + ", ".join(action.partition(":")[2] or action for action in actions)
        for service, actions in role.actions_by_service().items()
    ]
    lines.append("- Allowed actions by service: " + ("; ".join(allowed) or "none"))
    lines.append("")
    rows = [
        [
            statement.effect,
            service,
            ("NOT " if statement.not_action else "") + ", ".join(f"`{a}`" for a in actions),
            ("NOT " if statement.not_resource else "")
            + ", ".join(f"`{r}`" for r in statement.resources),
            f"`{statement.condition}`" if statement.condition else "",
            statement.policy,
        ]
        for statement in role.statements
        for service, actions in statement.actions_by_service.items()
    ]
    if rows:
        lines += table(("Effect", "Service", "Actions", "Resources", "Condition", "Policy"), rows)
        lines.append("")
    if role.wildcards:
        lines += table(
            ("Wildcard", "Finding", "Policy", "Acknowledgement"),
            [_wildcard_row(w) for w in role.wildcards],
        )
        lines.append("")
    return lines


def _iam(review: Review) -> list[str]:
    lines = [
        f"## {IAM} Wildcards and IAM roles",
        "",
        "Wildcards are found as cdk-nag AwsSolutions-IAM5 finds them (an Allow whose action or "
        "resource contains `*`); each needs an acknowledgement naming "
        "`AwsSolutions-IAM5[<finding>]` on the policy or an enclosing construct. Consul ACL "
        "rules on an empty prefix are listed with the policy that grants them.",
        "",
        "### Wildcards by reason",
        "",
    ]
    groups = wildcard_groups(review)
    if groups:
        lines += table(
            ("Kind", "Wildcards", "Held by", "Reason", "Acknowledged by"),
            [
                [
                    group.kind,
                    ", ".join(dict.fromkeys(f"`{w}`" for _, w in group.items)),
                    ", ".join(dict.fromkeys(_md(p) for p, _ in group.items)),
                    group.reason or "**none: UNACKNOWLEDGED**",
                    "; ".join(group.covered_by)
                    or ("not a cdk-nag finding" if group.kind == "consul" else "—"),
                ]
                for group in groups
            ],
        )
    else:
        lines.append("None.")
    lines.append("")
    if not review.roles:
        lines += ["No roles.", ""]
    for role in sorted(review.roles, key=lambda r: (r.stack, r.label)):
        lines += _role(role)
    return lines


STATEMENT_COLUMNS = ("Sid", "Effect", "Principals", "Actions", "Condition", "Flag")


def _statement_cells(statement: DocStatement) -> list[str]:
    return [
        statement.sid,
        statement.effect,
        ", ".join(p.res.markdown() if p.res else f"`{p.text()}`" for p in statement.principals),
        ", ".join(f"`{a}`" for a in statement.actions),
        f"`{statement.condition}`" if statement.condition else "",
        f"**{statement.flag}**" if statement.flag else "",
    ]


def _keys(review: Review) -> list[str]:
    lines = [f"## {KEYS} KMS keys: key policies and role grants", ""]
    if not review.keys:
        return [*lines, "No customer-managed key.", ""]
    lines += [
        "A key policy statement allowing a service principal without a condition is flagged: "
        "any use of that service can ask KMS to use the key.",
        "",
    ]
    for key in review.keys:
        users = ", ".join(res.logical_id for res in key.used_by)
        lines += [
            f"### Key {key.res.markdown()}",
            "",
            f"- Rotation: {'on' if key.rotation else '**off**'}; aliases: "
            + (", ".join(f"`{a}`" for a in key.aliases) or "none"),
            f"- Named by {len(key.used_by)} resources: {users or 'none'}",
            "",
            *table(STATEMENT_COLUMNS, [_statement_cells(s) for s in key.statements]),
            "",
        ]
        if key.iam_grants:
            lines += [
                *table(
                    ("Role (own policy)", "Actions", "How", "Condition", "Policy"),
                    [
                        [
                            _md(g.principal, f"`{g.principal_text}`"),
                            ", ".join(g.actions),
                            g.how,
                            f"`{g.condition}`" if g.condition else "**none**",
                            g.policy.markdown(),
                        ]
                        for g in key.iam_grants
                    ],
                ),
                "",
            ]
    return lines


def _resource_policies(review: Review) -> list[str]:
    lines = [
        f"## {POLICIES} Resource policies: buckets, queues, topics, secrets, functions",
        "",
    ]
    if not review.resource_policies:
        return [*lines, "None.", ""]
    rows = [
        [
            ", ".join(r.markdown() for r in policy.applies_to)
            or ", ".join(f"`{t}`" for t in policy.unresolved_targets),
            *_statement_cells(s),
        ]
        for policy in review.resource_policies
        for s in policy.statements
    ]
    lines += table(("Applies to", *STATEMENT_COLUMNS), rows)
    return [*lines, ""]


def _encryption(review: Review) -> list[str]:
    lines = [f"## {ENCRYPTION} Encryption at rest and in transit", ""]
    if not review.stores:
        return [*lines, "No data stores or queues.", ""]
    lines += table(
        ("Stack", "Resource", "Kind", "At rest", "KMS key", "In transit"),
        [
            [
                store.stack,
                store.label,
                store.kind,
                store.at_rest if store.at_rest_ok else f"**{store.at_rest}**",
                store.key,
                store.in_transit if store.in_transit_ok else f"**{store.in_transit}**",
            ]
            for store in review.stores
        ],
    )
    return [*lines, ""]


def _nag(review: Review) -> list[str]:
    nag = review.nag
    lines = [f"## {NAG} cdk-nag", ""]
    if not review.report_found:
        return [
            *lines,
            "**`validation-report.json` is missing**: CDK writes it whenever a validation "
            "plugin is registered, so no cdk-nag pack ran on this assembly.",
            "",
        ]
    lines += [
        "From `validation-report.json`. CDK leaves out a pack that found nothing at all, "
        "so a registered pack with no finding does not appear below.",
        "",
    ]
    if nag.plugins:
        lines += table(
            ("Pack", "Conclusion", "Unacknowledged", "Acknowledged", "Error"),
            [[p.name, p.conclusion, p.open, p.acknowledged, p.error] for p in nag.plugins],
        )
    else:
        lines.append("No pack reported a finding, open or acknowledged.")
    lines += ["", f"### Unacknowledged findings: {len(nag.open)}", ""]
    if nag.open:
        lines += table(
            ("Pack", "Rule", "Severity", "Construct", "Description"),
            [[f.plugin, f"`{f.rule}`", f.severity, f.path, f.description] for f in nag.open],
        )
        lines.append("")
    lines += [f"### Stale acknowledgements (fail the gate): {len(nag.stale)}", ""]
    lines += [f"- {stale_message(ack)}" for ack in nag.stale] or ["None."]
    lines += ["", f"### Acknowledged findings: {len(nag.acknowledged)}", ""]
    if nag.acknowledged:
        lines += table(
            ("Rule", "Construct", "Acknowledged at", "Reason"),
            [[f"`{f.rule}`", f.path, f.acknowledged_at, f.reason] for f in nag.acknowledged],
        )
        lines.append("")
    if nag.not_checked:
        lines += [
            "### Acknowledgements of checks not registered here",
            "",
            "Recorded by aws-cdk-lib itself (or for construct annotations); no pack of this app "
            "reports on them, so they are not checked.",
            "",
            *table(
                ("Id", "Acknowledged at", "Reason"),
                [[f"`{a.qualified_id}`", a.path, a.reason] for a in nag.not_checked],
            ),
            "",
        ]
    return lines


def _lint(review: Review) -> list[str]:
    lint = review.lint
    lines = [f"## {LINT} cfn-lint", ""]
    if lint.skipped:
        return [*lines, f"cfn-lint {lint.skipped}.", ""]
    informational = len(lint.matches) - lint.errors - lint.warnings
    lines.append(
        f"{lint.errors} errors, {lint.warnings} warnings, {informational} informational "
        f"over {len(review.assembly.stacks)} templates."
    )
    lines += [""] + [
        f"- {group.level} {group.rule} ({group.count} matches): {group.meaning}"
        for group in lint.groups()
    ]
    others = lint.ungrouped()
    if others:
        order = {"Error": 0, "Warning": 1}
        lines += [
            "",
            *table(
                ("Level", "Rule", "Template", "Location", "Message"),
                [
                    [m.level, m.rule, m.file, m.location, m.message]
                    for m in sorted(others, key=lambda m: (order.get(m.level, 2), m.rule))
                ],
            ),
        ]
    return [*lines, ""]


def _totals(review: Review, summary: list[tuple[str, str, str]]) -> list[str]:
    lines = [f"## {TOTALS} Checks and resource counts", ""]
    lines += table(("Check", "Result", "Status"), summary)
    lines.append("")
    for stack, counts in review.resource_counts().items():
        lines += [f"### {stack} ({sum(counts.values())} resources)", ""]
        lines += table(("Type", "Count"), sorted(counts.items()))
        lines.append("")
    return lines


SECTIONS: tuple[Callable[[Review], list[str]], ...] = (
    _network,
    _secrets,
    _consul,
    _iam,
    _keys,
    _resource_policies,
    _encryption,
    _nag,
    _lint,
)


def appendix(review: Review, summary: list[tuple[str, str, str]]) -> list[str]:
    lines = [APPENDIX_HEADING, ""]
    for section in SECTIONS:
        lines += section(review)
    return lines + _totals(review, summary)
