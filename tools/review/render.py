"""REVIEW.md: the first page (four questions, one screen), then the appendix (every fact).

The output is deterministic (no timestamps, stable order) so two reviews of the same
assembly diff clean. `summary_rows` feeds both the console summary and the appendix's
check table.
"""

from __future__ import annotations

from tools.review.appendix import INGRESS_COLUMNS, INGRESS_HEADING, appendix
from tools.review.changes import Comparison, section
from tools.review.collect import Review
from tools.review.markdown import cell, table
from tools.review.mermaid import picture
from tools.review.page import first_page
from tools.review.twin import facts

__all__ = [
    "INGRESS_COLUMNS",
    "INGRESS_HEADING",
    "cell",
    "render",
    "summary_rows",
    "summary_text",
    "table",
]


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
    stale = len(review.nag.stale)
    packs = ", ".join(plugin.name for plugin in review.nag.plugins) or "none"
    lint = review.lint
    no_rest = sum(not store.at_rest_ok for store in review.stores)
    no_transit = sum(not store.in_transit_ok for store in review.stores)
    counts = review.resource_counts()
    bypass = sum(port.bypasses_mesh for net in review.task_networks for port in net.ports)
    anywhere = review.egress.to_anywhere
    unresolved = len(review.secrets.unresolved)
    nag_result = (
        f"{nag_open} unacknowledged, {len(review.nag.acknowledged)} acknowledged, "
        f"{stale} stale acknowledgements (packs reporting: {packs})"
        if review.report_found
        else "validation-report.json missing: no pack ran"
    )
    grouped = ", ".join(f"{g.rule} x{g.count}" for g in lint.groups())
    return [
        ("Critical: ingress from 0.0.0.0/0 or ::/0", str(critical), _flag(critical, "CRITICAL")),
        (
            "Reachable from outside the VPC",
            f"{outside} ingress rules, {public} listeners not internal",
            _flag(outside + public, "REVIEW"),
        ),
        (
            "Published app ports (bypass mTLS)",
            f"{bypass} mesh app ports reachable on the hosts; host-mode apps: only as far "
            "as the template states where they listen (A.1)",
            _flag(bypass, "REVIEW"),
        ),
        (
            "Egress to any address",
            f"{len(anywhere)} rules in {len({r.group for r in anywhere})} groups",
            _flag(len(anywhere), "REVIEW"),
        ),
        (
            "IAM wildcards",
            f"{len(wildcards) - unacked} acknowledged, {unacked} unacknowledged",
            _flag(unacked),
        ),
        ("cdk-nag", nag_result, _flag(nag_open + stale + (not review.report_found))),
        (
            "cfn-lint",
            lint.skipped
            or f"{lint.errors} errors, {lint.warnings} warnings"
            + (f" ({grouped})" if grouped else ""),
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
            f"{len(review.secrets.secrets)} secrets, {unresolved} unresolved grants, "
            f"{len(review.secrets.dynamic_references)} dynamic references",
            _flag(len(review.secrets.dynamic_references) + unresolved, "REVIEW"),
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


def render(review: Review, comparison: Comparison | None = None) -> str:
    """REVIEW.md: with a comparison, its section first; then the first page, the exposure as
    a picture (marked against the baseline), and the appendix."""
    lines = section(comparison) if comparison is not None else []
    old = comparison.old if comparison is not None else None
    lines += [*first_page(review), "", *picture(facts(review), old)]
    lines += appendix(review, summary_rows(review))
    return "\n".join(lines).rstrip() + "\n"
