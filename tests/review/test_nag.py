"""cdk-nag results from the validation report: the synth gate and the review's nag section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.review.builder import plugin_report, suppressed, violation, write_assembly
from tools.review.load import load_assembly
from tools.review.nag import acknowledged_findings, nag_review, unacknowledged_findings


def test_unacknowledged_findings_lists_each_open_finding_per_construct(tmp_path: Path) -> None:
    # GIVEN one rule failing on two constructs, and another pack's acknowledged finding
    reports = [
        plugin_report(
            "AwsSolutions",
            [
                {
                    **violation("AwsSolutions-EC23", "App/A/Resource"),
                    "violatingConstructs": [
                        {"constructPath": "App/A/Resource"},
                        {"constructPath": "App/B/Resource"},
                    ],
                }
            ],
        ),
        plugin_report(
            "NIST.800.53.R5",
            [],
            [suppressed("NIST.800.53.R5", "NIST.800.53.R5-S3", "App/C", "reason text", "App")],
        ),
    ]
    outdir = write_assembly(tmp_path, {"App": {"Resources": {}}}, plugin_reports=reports)
    # WHEN the gate reads the assembly
    found = unacknowledged_findings(outdir)
    # THEN every open finding is there once per construct, acknowledged ones are not
    assert [(f.plugin, f.rule, f.path) for f in found] == [
        ("AwsSolutions", "AwsSolutions-EC23", "App/A/Resource"),
        ("AwsSolutions", "AwsSolutions-EC23", "App/B/Resource"),
    ]
    [ack] = acknowledged_findings(outdir)
    assert (ack.rule, ack.reason, ack.acknowledged_at) == (
        "NIST.800.53.R5-S3",
        "reason text",
        "App",
    )


def test_a_crashed_plugin_is_an_unacknowledged_finding(tmp_path: Path) -> None:
    crashed = {
        "pluginName": "AwsSolutions",
        "conclusion": "failure",
        "metadata": {"error": "Validation plugin 'AwsSolutions' failed: boom"},
        "violations": [],
    }
    outdir = write_assembly(tmp_path, {"App": {"Resources": {}}}, plugin_reports=[crashed])
    [finding] = unacknowledged_findings(outdir)
    assert (finding.rule, finding.severity) == ("(plugin failed)", "fatal")
    assert "boom" in finding.description


def test_fails_when_no_pack_ran(tmp_path: Path) -> None:
    # GIVEN an assembly without validation-report.json (CDK writes it whenever a pack runs)
    outdir = write_assembly(tmp_path, {"App": {"Resources": {}}}, plugin_reports=None)
    with pytest.raises(FileNotFoundError, match=r"validation-report\.json is missing"):
        unacknowledged_findings(outdir)


def test_fails_when_the_folder_is_not_an_assembly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a cloud assembly"):
        unacknowledged_findings(tmp_path)


def test_acknowledgements_the_report_does_not_show_are_classified(tmp_path: Path) -> None:
    # GIVEN one ack CDK applied, one plain-id ack cdk-nag applied, and one that matched nothing
    reports = [
        plugin_report(
            "AwsSolutions",
            [],
            [suppressed("AwsSolutions", "AwsSolutions-S1", "App/B/Resource", "used", "App/B")],
        )
    ]
    acks = {
        "App/B": {"AwsSolutions::AwsSolutions-S1": "used"},
        "App/Q": {"Annotation::AwsSolutions-SQS3": "plain id"},
        "App/Old": {"AwsSolutions::AwsSolutions-IAM5[Action::kms:*]": "stale"},
    }
    outdir = write_assembly(
        tmp_path, {"App": {"Resources": {}}}, plugin_reports=reports, acknowledgements=acks
    )
    review = nag_review(load_assembly(outdir))
    assert [(p.name, p.open, p.acknowledged) for p in review.plugins] == [("AwsSolutions", 0, 1)]
    assert [(a.rule, a.path) for a in review.inside_nag] == [("AwsSolutions-SQS3", "App/Q")]
    assert [a.qualified_id for a in review.unmatched] == [
        "AwsSolutions::AwsSolutions-IAM5[Action::kms:*]"
    ]
