"""The "Changes since baseline" section of REVIEW.md, its console form, and `--fail-on`.

A comparison is the baseline's name (a git ref with its commit, or a folder), its facts (after
aligning moved logical IDs) and the changes; or, when there is no baseline to compare with
(a ref that does not exist, a synthesis that failed), the one line that says why. The section
is then still there, with that line, so a reader of the report knows no comparison was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tools.review.compare import CATEGORIES, Change, Facts, align
from tools.review.diff import diff
from tools.review.markdown import table

HEADING = "## Changes since baseline"
ANCHOR = "#changes-since-baseline"
DIAGRAM_ANCHOR = "#5-the-exposure-as-a-picture"
FAIL_ON = {
    "broadening": "a change that opens, grants or decrypts something new (see docs/review.md)",
    "any": "any change at all",
}


@dataclass(frozen=True)
class Comparison:
    baseline: str  # what was compared with, e.g. "origin/main (1a2b3c4d5e6f)"
    old: Facts | None  # the baseline's facts, moved logical IDs aligned; None: unavailable
    changes: list[Change] = field(default_factory=list)
    error: str = ""  # why there is nothing to compare with
    how: str = ""  # how the baseline's facts were computed

    @property
    def broadening(self) -> list[Change]:
        return [change for change in self.changes if change.broadening]


def compare_with(baseline: str, old: Facts, new: Facts, how: str = "") -> Comparison:
    return Comparison(baseline, align(old, new), diff(old, new), how=how)


def unavailable(baseline: str, error: str) -> Comparison:
    return Comparison(baseline, None, error=error)


def where_text(res: Facts) -> str:
    """`LogicalId` (construct/path), or the construct path alone (an acknowledgement)."""
    logical_id, path = res.get("logical_id"), res.get("path")
    if logical_id:
        return f"`{logical_id}` ({path})" if path else f"`{logical_id}`"
    return str(path or res.get("literal") or "—")


def _counts(comparison: Comparison) -> str:
    total = len(comparison.changes)
    wide = len(comparison.broadening)
    return f"{total} change{'s' * (total != 1)}, {wide} broadening"


def section(comparison: Comparison) -> list[str]:
    lines = [HEADING, ""]
    if comparison.old is None:
        return [*lines, f"**Not compared:** {comparison.error}", ""]
    lines.append(
        f"Baseline: {comparison.baseline}" + (f", {comparison.how}." if comparison.how else ".")
    )
    if not comparison.changes:
        return [
            *lines,
            "",
            "**No changes**: the two assemblies open, grant and decrypt the same.",
            "",
        ]
    lines += [
        f"**{_counts(comparison)}** (a broadening change is what `--fail-on broadening` fails "
        f"on). Added edges are drawn thick and red in [the exposure diagram]({DIAGRAM_ANCHOR}).",
        "",
    ]
    for category, heading in CATEGORIES.items():
        found = [c for c in comparison.changes if c.category == category]
        if not found:
            continue
        rows = [
            (
                f"**{change.action}**",
                change.what,
                "<br>".join(where_text(res) for res in change.where) or "—",
                f"**{change.broadening}**" if change.broadening else "",
            )
            for change in found
        ]
        lines += [f"### {heading}", ""]
        lines += table(("Change", "What", "Where: logical ID (construct path)", "Broadening"), rows)
        lines.append("")
    return lines


def _line(change: Change) -> str:
    where = "; ".join(where_text(res).replace("`", "") for res in change.where)
    text = f"{change.action:8} {change.category:16} {change.what.replace('`', '')}"
    return text + (f"  [{where}]" if where else "")


def console(comparison: Comparison) -> str:
    """What `python -m tools.review` prints about the comparison."""
    if comparison.old is None:
        return f"Changes since baseline: not compared: {comparison.error}"
    baseline = comparison.baseline.replace("`", "")
    if not comparison.changes:
        return f"Changes since baseline {baseline}: no changes"
    lines = [f"Changes since baseline {baseline}: {_counts(comparison)}"]
    lines += [
        "  " + _line(c) + (f"  <- broadening: {c.broadening}" if c.broadening else "")
        for c in comparison.changes
    ]
    return "\n".join(lines)


def offending(comparison: Comparison, fail_on: str) -> list[str]:
    """The lines `--fail-on` fails on (empty: pass). No baseline fails closed."""
    if comparison.old is None:
        return [f"FAIL (--fail-on {fail_on}): no baseline to compare with: {comparison.error}"]
    chosen = comparison.broadening if fail_on == "broadening" else comparison.changes
    return [
        f"FAIL (--fail-on {fail_on}): {_line(c)}" + (f" -- {c.broadening}" if c.broadening else "")
        for c in chosen
    ]
