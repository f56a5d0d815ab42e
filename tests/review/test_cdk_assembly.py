"""What aws-cdk-lib + cdk-nag really write, read by the review (a tiny app, one synthesis).

Pins the facts the review relies on: the report's file name and schema, acknowledgements
under the pack namespace listed with reasons, plain-id ones only in construct metadata, and
construct paths without `aws:cdk:path` template metadata (as `app.synth()` writes them).
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks

from tools.review.collect import Review, build_review
from tools.review.nag import unacknowledged_findings


@pytest.fixture(scope="module")
def outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("probe.out")
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Probe", env=cdk.Environment(account="111111111111", region="us-east-1"))
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        ip_addresses=ec2.IpAddresses.cidr("10.1.0.0/16"),
        max_azs=1,
        nat_gateways=0,
        restrict_default_security_group=False,
        subnet_configuration=[
            ec2.SubnetConfiguration(name="App", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        ],
    )
    group = ec2.SecurityGroup(stack, "Open", vpc=vpc)
    group.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(22), "ssh from anywhere")
    bucket = s3.Bucket(stack, "Bucket", enforce_ssl=True)
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    role.add_to_policy(iam.PolicyStatement(actions=["s3:*"], resources=["*"]))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    cdk.Validations.of(bucket).acknowledge(
        cdk.Acknowledgment(id="AwsSolutions::AwsSolutions-S1", reason="probe: no access logs")
    )
    cdk.Validations.of(role).acknowledge(
        cdk.Acknowledgment(
            id="AwsSolutions::AwsSolutions-IAM5[Action::s3:*]", reason="probe: namespaced id"
        ),
        cdk.Acknowledgment(id="AwsSolutions-IAM5[Resource::*]", reason="probe: plain id"),
    )
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()  # the open rule on the security group fails validation
    return outdir


@pytest.fixture(scope="module")
def review(outdir: Path) -> Review:
    return build_review(outdir, linter=None)


def test_report_is_validation_report_json(outdir: Path) -> None:
    assert (outdir / "validation-report.json").is_file()
    assert not (outdir / "policy-validation-report.json").exists()


def test_open_findings_are_the_ones_nobody_acknowledged(outdir: Path) -> None:
    found = {(f.plugin, f.rule, f.path) for f in unacknowledged_findings(outdir)}
    assert ("AwsSolutions", "AwsSolutions-EC23", "Probe/Open/Resource") in found
    assert not any("IAM5" in rule or rule == "AwsSolutions-S1" for _, rule, _ in found)


def test_wildcards_carry_the_reason_from_wherever_cdk_kept_it(review: Review) -> None:
    by_finding = {w.finding: w for w in review.wildcards}
    action, resource = by_finding["Action::s3:*"], by_finding["Resource::*"]
    assert action.path == resource.path == "Probe/Role/DefaultPolicy/Resource"
    assert [(c.reason, c.source) for c in action.covers] == [
        ("probe: namespaced id", "validation report")
    ]
    assert [(c.reason, c.source) for c in resource.covers] == [
        ("probe: plain id", "construct metadata")
    ]
    assert review.unacknowledged_wildcards == []


def test_open_ssh_rule_is_critical_with_its_construct_path(review: Review) -> None:
    [rule] = review.exposure.critical
    assert (rule.source, rule.ports, rule.description) == ("0.0.0.0/0", "22", "ssh from anywhere")
    assert "(Probe/Open/Resource)" in rule.group_label


def test_acknowledged_bucket_finding_is_listed_with_its_reason(review: Review) -> None:
    assert ("AwsSolutions-S1", "probe: no access logs", "Probe/Bucket") in {
        (f.rule, f.reason, f.acknowledged_at) for f in review.nag.acknowledged
    }
    assert [(a.rule, a.path) for a in review.nag.inside_nag] == [
        ("AwsSolutions-IAM5[Resource::*]", "Probe/Role")
    ]
