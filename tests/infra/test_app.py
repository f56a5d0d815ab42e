"""The whole default app: synthesizes, passes both nag packs, lints clean, rejects bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.infra.conftest import Synthesized
from tools.nag_gate import acknowledged, unacknowledged


def test_default_app_synthesizes_without_validation_errors(synthesized: Synthesized) -> None:
    assert synthesized.error is None, synthesized.error
    assert synthesized.templates(), "no template was synthesized"


def test_zero_unacknowledged_nag_findings(synthesized: Synthesized) -> None:
    # GIVEN the default app with AwsSolutions and NIST 800-53 rev 5 packs
    # WHEN it is synthesized
    # THEN every finding is fixed or acknowledged with a reason
    open_findings = unacknowledged(synthesized.outdir)
    assert open_findings == [], "\n".join(f"{f.rule} at {f.path}" for f in open_findings)
    for finding in acknowledged(synthesized.outdir):
        assert len(finding.reason) >= 20, f"{finding.rule} at {finding.path} has no real reason"


def test_cfn_lint_reports_no_errors(synthesized: Synthesized) -> None:
    templates = sorted(str(p) for p in synthesized.outdir.glob("*.template.json"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", *templates],
        capture_output=True,
        text=True,
        check=False,
    )
    # cfn-lint's exit code is a bit mask: 2 = errors, 4 = warnings, 8 = informational;
    # 1 means it could not run at all.
    errors = [line for line in result.stdout.splitlines() if ":E" in line]
    assert errors == [], "\n".join(errors)
    assert result.returncode != 1, result.stderr
    assert result.returncode & 2 == 0, result.stdout


def _ingress_rules(template: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::EC2::SecurityGroup":
            rules.extend(props.get("SecurityGroupIngress", []))
        elif resource["Type"] == "AWS::EC2::SecurityGroupIngress":
            rules.append(props)
    return rules


def test_no_ingress_from_anywhere(synthesized: Synthesized) -> None:
    for name, template in synthesized.templates().items():
        rules = _ingress_rules(template)
        assert rules, f"{name}: no ingress rule found; the check would prove nothing"
        for rule in rules:
            assert rule.get("CidrIp") != "0.0.0.0/0", f"{name} opens {rule} to 0.0.0.0/0"
            assert rule.get("CidrIpv6") != "::/0", f"{name} opens {rule} to ::/0"


def _run_app(context: dict[str, object], tmp_path: object) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps(context),
        "CDK_OUTDIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("server_count", "4"), ("onprem_cidrs", "0.0.0.0/0"), ("envoy_version", "1.20.0")],
)
def test_fails_when_app_gets_a_bad_context_value(key: str, value: str, tmp_path: object) -> None:
    # GIVEN a bad `-c key=value` override  WHEN the app runs  THEN one clear line, exit 1
    result = _run_app({key: value}, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: invalid context value {key}=")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("context", "line"),
    [
        (
            {"onprem_cidr": "10.20.0.0/16"},
            "error: unknown context key 'onprem_cidr': did you mean onprem_cidrs?",
        ),
        (
            {"services": '{"orders": {"image": "ghcr.io/acme/orders:1", "prot": 8080}}'},
            "error: invalid context value services.orders.prot='<redacted>': unknown field; "
            "did you mean port?",
        ),
    ],
)
def test_fails_with_one_line_on_a_misspelled_key_or_field(
    context: dict[str, object], line: str, tmp_path: object
) -> None:
    # GIVEN a typo that used to be silently ignored  WHEN the app runs  THEN one line, exit 1
    result = _run_app(context, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line]


def test_review_exposure_table_matches_the_template(
    synthesized: Synthesized, tmp_path: Path
) -> None:
    from tools.review.__main__ import main as review_main
    from tools.review.crosscheck import rows_from_report, rows_from_templates

    out = tmp_path / "REVIEW.md"
    assert review_main([str(synthesized.outdir), "--skip-cfn-lint", "--output", str(out)]) == 0
    rows = rows_from_report(out.read_text())
    assert rows, "the report lists no ingress rule"
    assert rows == rows_from_templates(synthesized.templates())


def test_importing_app_keeps_the_collector_on() -> None:
    # Only the `python app.py` process (one synthesis, then exit) runs without the collector;
    # a test session or any other importer of build_app keeps it.
    import gc

    import app

    assert app.build_app is not None
    assert gc.isenabled()
