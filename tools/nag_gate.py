"""Fail `make synth` on an unacknowledged validation finding or a stale acknowledgement.

Reads the CDK validation report (`validation-report.json` in the cloud assembly) instead of
trusting the CLI's exit code. A missing report means no pack ran, which also fails. An
acknowledgement no finding uses means the code changed under it: it fails too, named with
the construct path it was made on (`tools.review.nag`).
Usage: python -m tools.nag_gate cdk.out
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.review.load import Acknowledgement
from tools.review.nag import (
    Finding,
    acknowledged_findings,
    stale_acknowledgements,
    stale_message,
    unacknowledged_findings,
)

__all__ = ["Finding", "acknowledged", "stale", "unacknowledged"]


def unacknowledged(outdir: Path) -> list[Finding]:
    """Open findings of every plugin: each must be fixed or acknowledged."""
    return unacknowledged_findings(outdir)


def acknowledged(outdir: Path) -> list[Finding]:
    """Acknowledged findings, each with the reason given."""
    return acknowledged_findings(outdir)


def stale(outdir: Path) -> list[Acknowledgement]:
    """Acknowledgements no finding uses (or that cannot be checked): each must go."""
    return stale_acknowledgements(outdir)


def main(argv: list[str]) -> int:
    outdir = Path(argv[1] if len(argv) > 1 else "cdk.out")
    try:
        open_findings = unacknowledged(outdir)
        stale_acks = stale(outdir)
    except FileNotFoundError as err:
        print(f"nag gate: {err}", file=sys.stderr)
        return 1
    for f in open_findings:
        print(f"unacknowledged finding {f.rule} ({f.plugin}) at {f.path}", file=sys.stderr)
    for ack in stale_acks:
        print(stale_message(ack), file=sys.stderr)
    print(
        f"validation: {len(open_findings)} unacknowledged, "
        f"{len(acknowledged(outdir))} acknowledged findings, "
        f"{len(stale_acks)} stale acknowledgements"
    )
    return 1 if open_findings or stale_acks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
