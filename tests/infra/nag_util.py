"""Run both cdk-nag packs over a test app and return the open findings."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from tools.nag_gate import Finding, unacknowledged


def open_findings(app: cdk.App) -> list[Finding]:
    """Synthesize `app` with both packs; the findings nobody fixed or acknowledged."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), NIST80053R5Checks(app))
    try:
        app.synth()
    except RuntimeError as err:
        if "ValidationFailed" not in str(err):
            raise
    return unacknowledged(Path(app.outdir))
