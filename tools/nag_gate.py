"""Fail `make synth` when any cdk-nag finding is unacknowledged.

Reads the CDK policy validation report (`validation-report.json` in the cloud assembly)
instead of trusting the CLI's exit code: the report lists each pack's open `violations` and
its acknowledged `suppressedViolations` (with reasons). Usage: python -m tools.nag_gate cdk.out
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPORT = "validation-report.json"


@dataclass(frozen=True)
class Finding:
    pack: str
    rule: str
    path: str
    reason: str = ""


def _findings(outdir: Path, key: str) -> list[Finding]:
    report = outdir / REPORT
    if not report.exists():
        if not (outdir / "manifest.json").exists():
            raise FileNotFoundError(f"{outdir} is not a cloud assembly (no manifest.json)")
        return []  # neither pack found anything to report, open or acknowledged
    data = json.loads(report.read_text())
    return [
        Finding(plugin["pluginName"], v["ruleName"], c["constructPath"], v.get("reason", ""))
        for plugin in data.get("pluginReports", [])
        for v in plugin.get(key, [])
        for c in v.get("violatingConstructs", [])
    ]


def unacknowledged(outdir: Path) -> list[Finding]:
    """Open findings of every pack: each must be fixed or acknowledged."""
    return _findings(outdir, "violations")


def acknowledged(outdir: Path) -> list[Finding]:
    """Acknowledged findings with the reason given for each."""
    return _findings(outdir, "suppressedViolations")


def main(argv: list[str]) -> int:
    outdir = Path(argv[1] if len(argv) > 1 else "cdk.out")
    open_findings = unacknowledged(outdir)
    for f in open_findings:
        print(f"unacknowledged cdk-nag finding {f.rule} at {f.path}", file=sys.stderr)
    print(f"cdk-nag: {len(open_findings)} unacknowledged, {len(acknowledged(outdir))} acknowledged")
    return 1 if open_findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
