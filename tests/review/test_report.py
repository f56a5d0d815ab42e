"""REVIEW.md end to end: summary, flagged findings, the CLI, and the exposure cross-check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.review.builder import (
    allow,
    getatt,
    plugin_report,
    policy,
    ref,
    resource,
    suppressed,
    write_assembly,
)
from tools.review.__main__ import main
from tools.review.crosscheck import rows_from_report, rows_from_templates

POLICY_PATH = "App/Role/DefaultPolicy/Resource"


def _risky_template() -> dict[str, Any]:
    """SSH open to the internet, on-premises access, and a role with two wildcards."""
    return {
        "Resources": {
            "Vpc": resource("AWS::EC2::VPC", "App/Vpc/Resource", CidrBlock="10.0.0.0/16"),
            "Sg": resource(
                "AWS::EC2::SecurityGroup",
                "App/Sg/Resource",
                GroupDescription="probe",
                VpcId=ref("Vpc"),
                SecurityGroupIngress=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "CidrIp": "0.0.0.0/0",
                        "Description": "ssh | anywhere",
                    },
                    {"IpProtocol": "-1", "CidrIp": "192.168.0.0/16"},
                ],
            ),
            "SelfRule": resource(
                "AWS::EC2::SecurityGroupIngress",
                "App/Sg/from self",
                GroupId=getatt("Sg", "GroupId"),
                SourceSecurityGroupId=getatt("Sg", "GroupId"),
                IpProtocol="udp",
                FromPort=8301,
                ToPort=8301,
            ),
            "VpcRule": resource(
                "AWS::EC2::SecurityGroupIngress",
                GroupId=ref("Sg"),
                CidrIp=getatt("Vpc", "CidrBlock"),
                IpProtocol="tcp",
                FromPort=8500,
                ToPort=8500,
            ),
            "Role": resource("AWS::IAM::Role", "App/Role/Resource"),
            "RolePolicy": resource(
                "AWS::IAM::Policy",
                POLICY_PATH,
                PolicyName="p",
                PolicyDocument=policy(allow(["s3:*"], "*")),
                Roles=[ref("Role")],
            ),
        }
    }


def _assembly(tmp_path: Path) -> Path:
    # The action wildcard is acknowledged, the resource wildcard is not.
    report = plugin_report(
        "AwsSolutions",
        [],
        [
            suppressed(
                "AwsSolutions",
                "AwsSolutions-IAM5[Action::s3:*]",
                POLICY_PATH,
                "Backup copies every object; limited by the bucket policy.",
                "App/Role",
            )
        ],
    )
    return write_assembly(tmp_path / "cdk.out", {"App": _risky_template()}, plugin_reports=[report])


def test_report_flags_open_ingress_and_unacknowledged_wildcard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outdir = _assembly(tmp_path)
    out = tmp_path / "review"
    # WHEN `python -m tools.review cdk.out` runs (cfn-lint skipped to keep this test fast)
    assert main([str(outdir), "--skip-cfn-lint", "--out-dir", str(out)]) == 0
    report = (out / "REVIEW.md").read_text()
    printed = capsys.readouterr().out
    # THEN the summary counts the critical rule and the unacknowledged wildcard ...
    assert "| Critical: ingress from 0.0.0.0/0 or ::/0 | 1 | **CRITICAL** |" in report
    assert "| IAM wildcards | 1 acknowledged, 1 unacknowledged | **FLAG** |" in report
    assert "2 ingress rules, 0 listeners not internal" in report
    # ... the rule and the wildcard are marked where a reviewer reads them ...
    assert "| **CRITICAL: any address** | App | `Sg` (App/Sg/Resource) | tcp | 22 |" in report
    assert "ssh \\| anywhere" in report
    assert "| **UNACKNOWLEDGED** | `Resource::*` |" in report
    assert "Backup copies every object; limited by the bucket policy." in report
    # ... and the console shows the same summary
    assert "CRITICAL" in printed
    assert f"Wrote {out / 'REVIEW.md'} and {out / 'review.json'}" in printed


def test_strict_mode_fails_on_flagged_findings(tmp_path: Path) -> None:
    outdir = _assembly(tmp_path)
    out = str(tmp_path / "review")
    assert main([str(outdir), "--skip-cfn-lint", "--strict", "--out-dir", out]) == 1


def test_clean_assembly_passes_strict_mode(tmp_path: Path) -> None:
    template = {"Resources": {"Topic": resource("AWS::SNS::Topic", KmsMasterKeyId="alias/aws/sns")}}
    outdir = write_assembly(tmp_path / "cdk.out", {"App": template}, plugin_reports=[])
    out = str(tmp_path / "review")
    assert main([str(outdir), "--skip-cfn-lint", "--strict", "--out-dir", out]) == 0


def test_report_is_written_outside_the_assembly_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a project folder with an assembly (which every synth wipes)
    outdir = _assembly(tmp_path)
    monkeypatch.chdir(tmp_path)
    # WHEN the review runs without an output option
    assert main([str(outdir), "--skip-cfn-lint"]) == 0
    # THEN the Markdown and its JSON twin are in review/, and nothing is added to the assembly
    assert sorted(p.name for p in (tmp_path / "review").iterdir()) == ["REVIEW.md", "review.json"]
    assert not (outdir / "REVIEW.md").exists()
    facts = json.loads((tmp_path / "review" / "review.json").read_text())
    assert [
        rule["source"] for rule in facts["network"]["ingress"] if rule["reach"] == "anywhere"
    ] == ["0.0.0.0/0"]


def test_missing_assembly_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "is not a cloud assembly: no manifest.json (run `make synth` first)" in (
        capsys.readouterr().err
    )


def test_bad_vpc_cidr_names_the_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--vpc-cidr", "10.0.0.0/33"])
    assert "--vpc-cidr must be a CIDR such as 10.0.0.0/16, got '10.0.0.0/33'" in (
        capsys.readouterr().err
    )


def test_report_runs_cfn_lint_by_default(tmp_path: Path) -> None:
    # GIVEN the role in the template has no AssumeRolePolicyDocument (a CloudFormation error)
    outdir = _assembly(tmp_path)
    assert main([str(outdir), "--output", str(tmp_path / "out.md")]) == 0
    report = (tmp_path / "out.md").read_text()
    assert (tmp_path / "review.json").is_file()
    # THEN cfn-lint's error is counted in the summary and listed with its rule and location
    assert "| cfn-lint | 1 errors, 0 warnings | **FLAG** |" in report
    assert "| Error | E3003 | App.template.json | Resources/Role/Properties" in report


def test_exposure_table_matches_the_template(tmp_path: Path) -> None:
    # GIVEN the report of an assembly with inline, standalone, self and VPC-CIDR rules
    outdir = _assembly(tmp_path)
    main([str(outdir), "--skip-cfn-lint", "--output", str(outdir / "REVIEW.md")])
    templates = {"App": json.loads((outdir / "App.template.json").read_text())}
    # WHEN its ingress table is parsed back, THEN it is the template's rules, no more, no less
    expected = [
        ("App", "Sg", "all", "all", "192.168.0.0/16"),
        ("App", "Sg", "tcp", "22", "0.0.0.0/0"),
        ("App", "Sg", "tcp", "8500", "10.0.0.0/16"),
        ("App", "Sg", "udp", "8301", "Sg"),
    ]
    assert rows_from_templates(templates) == expected
    assert rows_from_report((outdir / "REVIEW.md").read_text()) == expected


def test_cross_check_catches_a_report_that_drops_a_rule(tmp_path: Path) -> None:
    outdir = _assembly(tmp_path)
    main([str(outdir), "--skip-cfn-lint", "--output", str(outdir / "REVIEW.md")])
    report = (outdir / "REVIEW.md").read_text()
    tampered = "\n".join(line for line in report.splitlines() if "| 8301 |" not in line)
    templates = {"App": json.loads((outdir / "App.template.json").read_text())}
    assert rows_from_report(tampered) != rows_from_templates(templates)


def test_cross_check_follows_imports_between_stacks(tmp_path: Path) -> None:
    producer = {
        "Resources": {
            "Vpc": resource("AWS::EC2::VPC", CidrBlock="10.9.0.0/16"),
            "ServerSg": resource("AWS::EC2::SecurityGroup", GroupDescription="p"),
        },
        "Outputs": {
            "Sg": {"Value": getatt("ServerSg", "GroupId"), "Export": {"Name": "P:Sg"}},
            "Cidr": {"Value": getatt("Vpc", "CidrBlock")},
        },
    }
    consumer = {
        "Resources": {
            "Rule": resource(
                "AWS::EC2::SecurityGroupIngress",
                GroupId={"Fn::ImportValue": "P:Sg"},
                CidrIp={"Fn::GetStackOutput": {"StackName": "Producer", "OutputName": "Cidr"}},
                IpProtocol="tcp",
                FromPort=443,
                ToPort=443,
            )
        }
    }
    outdir = write_assembly(tmp_path, {"Producer": producer, "Consumer": consumer})
    main([str(outdir), "--skip-cfn-lint", "--output", str(outdir / "REVIEW.md")])
    templates = {"Producer": producer, "Consumer": consumer}
    expected = [("Consumer", "ServerSg", "tcp", "443", "10.9.0.0/16")]
    assert rows_from_templates(templates) == expected
    assert rows_from_report((outdir / "REVIEW.md").read_text()) == expected
