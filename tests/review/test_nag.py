"""cdk-nag results from the validation report: the synth gate and the review's nag section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.review.builder import plugin_report, suppressed, violation, write_assembly
from tools import nag_gate
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


def _gate(tmp_path: Path, acks: dict[str, dict[str, str]]) -> Path:
    reports = [
        plugin_report(
            "AwsSolutions",
            [],
            [suppressed("AwsSolutions", "AwsSolutions-S1", "App/B/Resource", "used", "App/B")],
        )
    ]
    return write_assembly(
        tmp_path, {"App": {"Resources": {}}}, plugin_reports=reports, acknowledgements=acks
    )


def test_gate_fails_on_a_stale_acknowledgement_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN one acknowledgement a finding used, and one that no finding uses any more
    outdir = _gate(
        tmp_path,
        {
            "App/B": {"AwsSolutions::AwsSolutions-S1": "used"},
            "App/Fleet/Role": {"AwsSolutions::AwsSolutions-IAM5[Action::kms:ReEncrypt*]": "old"},
        },
    )
    # WHEN the gate runs
    assert nag_gate.main(["nag_gate", str(outdir)]) == 1
    # THEN it names the stale acknowledgement and the construct it was made on
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "stale acknowledgement AwsSolutions::AwsSolutions-IAM5[Action::kms:ReEncrypt*] at "
        "App/Fleet/Role: no finding uses it (the code changed under it: remove it, or fix its id)"
    ]


def test_gate_fails_on_an_acknowledgement_that_can_never_be_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outdir = _gate(
        tmp_path,
        {
            "App/B": {"AwsSolutions::AwsSolutions-S1": "used"},
            "App/Q": {"Annotation::AwsSolutions-SQS3": "plain id"},
        },
    )
    assert nag_gate.main(["nag_gate", str(outdir)]) == 1
    assert "unverifiable acknowledgement AwsSolutions-SQS3 at App/Q" in capsys.readouterr().err


def test_gate_ignores_unused_acknowledgements_of_checks_not_registered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN aws-cdk-lib's own acknowledgement for a validator this app does not run
    outdir = _gate(
        tmp_path,
        {
            "App/B": {"AwsSolutions::AwsSolutions-S1": "used"},
            "App": {"CloudFormation-Validate::W3010": "Literal AZs are expected"},
        },
    )
    assert nag_gate.main(["nag_gate", str(outdir)]) == 0
    assert "0 stale acknowledgements" in capsys.readouterr().out
    review = nag_review(load_assembly(outdir))
    assert [a.qualified_id for a in review.not_checked] == ["CloudFormation-Validate::W3010"]
