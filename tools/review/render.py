"""REVIEW.md: a summary a reviewer reads first, then one section per concern.

The output is deterministic (no timestamps, stable order) so two reviews of the same
assembly diff clean. The ingress table's columns are a contract: `tools.review.crosscheck`
parses them back to compare with the templates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tools.review.collect import Review
from tools.review.exposure import IngressRule, Reach, vpcs
from tools.review.iam import RoleReview, Wildcard
from tools.review.nag import Cover

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


def cell(text: object) -> str:
    """Table-safe text: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or "—"


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def _flag(count: int, word: str = "FLAG") -> str:
    return f"**{word}**" if count else "ok"


def summary_rows(review: Review) -> list[tuple[str, str, str]]:
    """(check, result, status) rows, shared by REVIEW.md and the console summary."""
    exposure = review.exposure
    critical = len(exposure.critical)
    outside = len(exposure.external_rules)
    public = len(exposure.external_listeners)
    wildcards = review.wildcards
    unacked = len(review.unacknowledged_wildcards)
    nag_open = len(review.nag.open)
    packs = ", ".join(plugin.name for plugin in review.nag.plugins) or "none"
    lint = review.lint
    no_rest = sum(not store.at_rest_ok for store in review.stores)
    no_transit = sum(not store.in_transit_ok for store in review.stores)
    counts = review.resource_counts()
    nag_result = (
        f"{nag_open} unacknowledged, {len(review.nag.acknowledged)} acknowledged "
        f"(packs reporting: {packs})"
        if review.report_found
        else "validation-report.json missing: no pack ran"
    )
    return [
        (
            "Critical: ingress from 0.0.0.0/0 or ::/0",
            str(critical),
            _flag(critical, "CRITICAL"),
        ),
        (
            "Reachable from outside the VPC",
            f"{outside} ingress rules, {public} listeners not internal",
            _flag(outside + public, "REVIEW"),
        ),
        (
            "IAM wildcards",
            f"{len(wildcards) - unacked} acknowledged, {unacked} unacknowledged",
            _flag(unacked),
        ),
        ("cdk-nag", nag_result, _flag(nag_open + (not review.report_found))),
        (
            "cfn-lint",
            lint.skipped or f"{lint.errors} errors, {lint.warnings} warnings",
            _flag(lint.errors) if not lint.skipped else "**SKIPPED**",
        ),
        (
            "Encryption",
            f"{len(review.stores)} stores: {no_rest} not encrypted at rest, "
            f"{no_transit} without enforced TLS",
            _flag(no_rest + no_transit),
        ),
        (
            "Secrets",
            f"{len(review.secrets.secrets)} secrets, "
            f"{len(review.secrets.dynamic_references)} dynamic references",
            _flag(len(review.secrets.dynamic_references), "REVIEW"),
        ),
        (
            "Resources",
            f"{sum(sum(c.values()) for c in counts.values())} in {len(counts)} stacks",
            "ok",
        ),
    ]


def summary_text(review: Review) -> str:
    """The console form of the summary block."""
    rows = summary_rows(review)
    width = max(len(check) for check, _, _ in rows)
    return "\n".join(
        f"{check.ljust(width)}  {status.strip('*').upper():8}  {result}"
        for check, result, status in rows
    )


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


def _exposure(review: Review) -> list[str]:
    exposure = review.exposure
    lines = ["## Network exposure", ""]
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
            ("Reach", "Stack", "Listener", "Load balancer", "Type", "Scheme", "Port", "Protocol"),
            [
                [
                    f"**{item.reach.value}**" if item.reach.external else item.reach.value,
                    item.stack,
                    item.listener_label,
                    item.load_balancer_label,
                    item.load_balancer_type,
                    item.scheme,
                    item.port,
                    _listener_protocol(item.protocol),
                ]
                for item in exposure.listeners
            ],
        )
    else:
        lines.append("No load balancer listeners.")
    return [*lines, ""]


def _listener_protocol(protocol: str) -> str:
    upper = protocol.upper()
    if upper in ("HTTPS", "TLS", "SSL"):
        return f"{protocol} (TLS terminated at the listener)"
    if upper in ("TCP", "UDP", "TCP_UDP"):
        return f"{protocol} (passed through: TLS only if the target speaks it)"
    return f"{protocol} (plaintext)" if upper == "HTTP" else protocol


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
        "## IAM",
        "",
        "Wildcards are found as cdk-nag AwsSolutions-IAM5 finds them (an Allow whose action or "
        "resource contains `*`); each needs an acknowledgement naming "
        "`AwsSolutions-IAM5[<finding>]` on the policy or an enclosing construct.",
        "",
    ]
    if not review.roles:
        lines += ["No roles.", ""]
    for role in sorted(review.roles, key=lambda r: (r.stack, r.label)):
        lines += _role(role)
    return lines


def _encryption(review: Review) -> list[str]:
    lines = ["## Encryption at rest and in transit", ""]
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


def _secrets(review: Review) -> list[str]:
    lines = ["## Secrets", ""]
    if not review.secrets.secrets:
        lines += ["No Secrets Manager secrets.", ""]
    for secret in review.secrets.secrets:
        lines += [
            f"### Secret {secret.label} — stack {secret.stack}",
            "",
            f"- KMS key: {secret.key}",
            f"- Rotation: {secret.rotation}",
        ]
        if secret.injections:
            lines += ["- Injected into:", *(f"  - {where}" for where in secret.injections), ""]
        else:
            lines += ["- Injected into: not referenced by any other resource", ""]
        if secret.readers:
            lines += table(
                ("Can read (GetSecretValue)", "Policy", "How"),
                [[r.principal, r.policy, r.how] for r in secret.readers],
            )
        else:
            lines.append("No principal in the templates can read it.")
        lines.append("")
    if review.secrets.dynamic_references:
        lines += [
            "**Dynamic references** (`{{resolve:secretsmanager:...}}`: CloudFormation puts the "
            "value into the resource, visible to anyone who can describe it):",
            "",
            *(f"- {where}" for where in review.secrets.dynamic_references),
            "",
        ]
    return lines


def _nag(review: Review) -> list[str]:
    nag = review.nag
    lines = ["## cdk-nag", ""]
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
    lines += [f"### Acknowledged findings: {len(nag.acknowledged)}", ""]
    if nag.acknowledged:
        lines += table(
            ("Rule", "Construct", "Acknowledged at", "Reason"),
            [[f"`{f.rule}`", f.path, f.acknowledged_at, f.reason] for f in nag.acknowledged],
        )
        lines.append("")
    if nag.inside_nag:
        lines += [
            "### Acknowledged inside cdk-nag (id without a pack namespace)",
            "",
            "cdk-nag applied these itself, so the report has no record of which finding each "
            "one suppressed; prefer `<pack>::<rule>` ids.",
            "",
            *table(
                ("Rule", "Acknowledged at", "Reason"),
                [[f"`{a.rule}`", a.path, a.reason] for a in nag.inside_nag],
            ),
            "",
        ]
    if nag.unmatched:
        lines += [
            "### Acknowledgements no reported finding used",
            "",
            "Stale, or for a check that found nothing (or for construct annotations).",
            "",
            *table(
                ("Id", "Acknowledged at", "Reason"),
                [[f"`{a.qualified_id}`", a.path, a.reason] for a in nag.unmatched],
            ),
            "",
        ]
    return lines


def _lint(review: Review) -> list[str]:
    lint = review.lint
    lines = ["## cfn-lint", ""]
    if lint.skipped:
        return [*lines, f"cfn-lint {lint.skipped}.", ""]
    informational = len(lint.matches) - lint.errors - lint.warnings
    lines.append(
        f"{lint.errors} errors, {lint.warnings} warnings, {informational} informational "
        f"over {len(review.assembly.stacks)} templates."
    )
    if lint.matches:
        order = {"Error": 0, "Warning": 1}
        lines += [
            "",
            *table(
                ("Level", "Rule", "Template", "Location", "Message"),
                [
                    [m.level, m.rule, m.file, m.location, m.message]
                    for m in sorted(lint.matches, key=lambda m: (order.get(m.level, 2), m.rule))
                ],
            ),
        ]
    return [*lines, ""]


def _counts(review: Review) -> list[str]:
    lines = ["## Resources per stack", ""]
    for stack, counts in review.resource_counts().items():
        lines += [f"### {stack} ({sum(counts.values())} resources)", ""]
        lines += table(("Type", "Count"), sorted(counts.items()))
        lines.append("")
    return lines


def render(review: Review) -> str:
    stacks = ", ".join(f"{s.name} (`{s.file.name}`)" for s in review.assembly.stacks)
    lines = [
        "# Security review of the synthesized templates",
        "",
        f"Generated by `python -m tools.review` from `{review.assembly.outdir}`: the "
        "templates, construct metadata and CDK validation report that `cdk deploy` uses. "
        f"Stacks: {stacks or 'none'}.",
        "",
        "## Summary",
        "",
        *table(("Check", "Result", "Status"), summary_rows(review)),
        "",
    ]
    for section in (_exposure, _iam, _encryption, _secrets, _nag, _lint, _counts):
        lines += section(review)
    return "\n".join(lines).rstrip() + "\n"
