"""Fail `make synth` when any validation finding (cdk-nag or CDK's own) is unacknowledged.

Reads the CDK validation report (`validation-report.json` in the cloud assembly) instead of
trusting the CLI's exit code. A missing report means no pack ran, which also fails.
Usage: python -m tools.nag_gate cdk.out
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.review.nag import Finding, acknowledged_findings, unacknowledged_findings

__all__ = ["Finding", "acknowledged", "unacknowledged"]


def unacknowledged(outdir: Path) -> list[Finding]:
    """Open findings of every plugin: each must be fixed or acknowledged."""
    return unacknowledged_findings(outdir)


def acknowledged(outdir: Path) -> list[Finding]:
    """Acknowledged findings, each with the reason given."""
    return acknowledged_findings(outdir)


def main(argv: list[str]) -> int:
    outdir = Path(argv[1] if len(argv) > 1 else "cdk.out")
    try:
        open_findings = unacknowledged(outdir)
    except FileNotFoundError as err:
        print(f"nag gate: {err}", file=sys.stderr)
        return 1
    for f in open_findings:
        print(f"unacknowledged finding {f.rule} ({f.plugin}) at {f.path}", file=sys.stderr)
    print(
        f"validation: {len(open_findings)} unacknowledged, "
        f"{len(acknowledged(outdir))} acknowledged findings"
    )
    return 1 if open_findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
