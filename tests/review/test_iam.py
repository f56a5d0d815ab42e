"""IAM per role: actions by service, and every wildcard with the acknowledgement covering it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import (
    allow,
    getatt,
    plugin_report,
    policy,
    ref,
    resource,
    suppressed,
    violation,
    write_assembly,
)
from tools.review.iam import RoleReview, Wildcard, roles
from tools.review.load import load_assembly
from tools.review.nag import AckIndex, nag_review

POLICY_PATH = "App/Role/DefaultPolicy/Resource"


def _template(*statements: dict[str, Any]) -> dict[str, Any]:
    return {
        "Resources": {
            "Role": resource(
                "AWS::IAM::Role",
                "App/Role/Resource",
                AssumeRolePolicyDocument=policy(
                    {
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                    }
                ),
                ManagedPolicyArns=[
                    {
                        "Fn::Join": [
                            "",
                            [
                                "arn:",
                                ref("AWS::Partition"),
                                ":iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
                            ],
                        ]
                    }
                ],
            ),
            "Bucket": resource("AWS::S3::Bucket", "App/Bucket/Resource"),
            "RolePolicy": resource(
                "AWS::IAM::Policy",
                POLICY_PATH,
                PolicyName="RoleDefaultPolicy",
                PolicyDocument=policy(*statements),
                Roles=[ref("Role")],
            ),
        }
    }


def _own(role: RoleReview) -> list[Wildcard]:
    """The wildcards of the templates' statements (not of the pinned AWS managed policies)."""
    return [w for w in role.wildcards if not w.managed]


def _role(
    tmp_path: Path,
    template: dict[str, Any],
    *,
    plugin_reports: list[dict[str, Any]] | None = None,
    acknowledgements: dict[str, dict[str, str]] | None = None,
) -> RoleReview:
    outdir = write_assembly(
        tmp_path,
        {"App": template},
        plugin_reports=plugin_reports if plugin_reports is not None else [],
        acknowledgements=acknowledgements,
    )
    assembly = load_assembly(outdir)
    [role] = roles(assembly, AckIndex(assembly, nag_review(assembly)))
    return role


def test_wildcard_without_acknowledgement_is_flagged(tmp_path: Path) -> None:
    # GIVEN a role allowed s3:* on every resource, and nobody acknowledged it
    role = _role(tmp_path, _template(allow("s3:*", "*")))
    # THEN both wildcards are reported on the policy's path, neither acknowledged
    assert [(w.finding, w.path, w.acknowledged) for w in _own(role)] == [
        ("Action::s3:*", POLICY_PATH, False),
        ("Resource::*", POLICY_PATH, False),
    ]


def test_acknowledged_wildcard_shows_the_reason_from_the_validation_report(
    tmp_path: Path,
) -> None:
    # GIVEN CDK suppressed the action wildcard because of an ack on the role (pack namespace)
    report = plugin_report(
        "AwsSolutions",
        [violation("AwsSolutions-IAM5[Resource::*]", POLICY_PATH)],
        [
            suppressed(
                "AwsSolutions",
                "AwsSolutions-IAM5[Action::s3:*]",
                POLICY_PATH,
                "Replication needs every S3 action; scoped by SCP.",
                "App/Role",
            )
        ],
    )
    # WHEN the role is reviewed
    role = _role(tmp_path, _template(allow("s3:*", "*")), plugin_reports=[report])
    action, resource_ = _own(role)
    # THEN the action wildcard carries the reason; the resource wildcard is still open
    assert action.acknowledged
    assert [(c.rule, c.reason, c.acknowledged_at, c.source) for c in action.covers] == [
        (
            "AwsSolutions-IAM5[Action::s3:*]",
            "Replication needs every S3 action; scoped by SCP.",
            "App/Role",
            "validation report",
        )
    ]
    assert not resource_.acknowledged
    assert resource_.open_in_report


def test_plain_id_acknowledgement_is_read_from_construct_metadata(tmp_path: Path) -> None:
    # GIVEN an ack without pack namespace: cdk-nag applies it and the report never shows it
    acks = {"App/Role": {"Annotation::AwsSolutions-IAM5[Resource::*]": "Describe* has no ARN."}}
    role = _role(tmp_path, _template(allow("ec2:DescribeInstances", "*")), acknowledgements=acks)
    # THEN the wildcard is acknowledged with that reason, found in the metadata
    [wildcard] = _own(role)
    assert wildcard.acknowledged
    assert [(c.reason, c.source) for c in wildcard.covers] == [
        ("Describe* has no ARN.", "construct metadata")
    ]


def test_acknowledgement_of_another_finding_or_elsewhere_does_not_cover(tmp_path: Path) -> None:
    acks = {
        "App/Role": {"AwsSolutions::AwsSolutions-IAM5[Action::s3:*]": "for s3:* only"},
        "App/Bucket": {"AwsSolutions::AwsSolutions-IAM5[Resource::*]": "on another construct"},
    }
    role = _role(tmp_path, _template(allow("s3:GetObject", "*")), acknowledgements=acks)
    [wildcard] = _own(role)
    assert wildcard.finding == "Resource::*"
    assert not wildcard.acknowledged


def test_finding_ids_use_cdk_nag_flattening_of_intrinsics(tmp_path: Path) -> None:
    # GIVEN object access under a bucket ARN built with Fn::Join, and a Get* action
    bucket_objects = {"Fn::Join": ["", [getatt("Bucket", "Arn"), "/*"]]}
    role = _role(tmp_path, _template(allow(["s3:Get*", "s3:PutObject"], bucket_objects)))
    # THEN the finding ids are the ones cdk-nag prints, so acknowledgements can name them
    assert [w.finding for w in _own(role)] == [
        "Action::s3:Get*",
        "Resource::<Bucket.Arn>/*",
    ]


def test_role_lists_actions_by_service_principals_and_managed_policies(tmp_path: Path) -> None:
    acks = {
        "App/Role": {
            "AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
            "service-role/AWSLambdaBasicExecutionRole]": "AWS's minimum for Lambda logs."
        }
    }
    role = _role(
        tmp_path,
        _template(
            allow(["sqs:ReceiveMessage", "sqs:DeleteMessage"], getatt("Queue", "Arn")),
            allow("kms:Decrypt", getatt("Key", "Arn")),
        ),
        acknowledgements=acks,
    )
    assert role.assumed_by == ["Service `lambda.amazonaws.com`"]
    # the AWS managed policy is evaluated from its pinned copy, like an inline policy
    assert role.actions_by_service() == {
        "kms": ["kms:Decrypt"],
        "logs": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
        "sqs": ["sqs:DeleteMessage", "sqs:ReceiveMessage"],
    }
    [managed] = role.managed
    assert managed.arn.endswith(":iam::aws:policy/service-role/AWSLambdaBasicExecutionRole")
    assert managed.evaluated == "AWSLambdaBasicExecutionRole v1"
    assert [c.reason for c in managed.covers] == ["AWS's minimum for Lambda logs."]
    assert _own(role) == []
    # its `*` is a wildcard of the role, covered by the IAM4 acknowledgement of the policy
    assert [(w.finding, w.managed, w.acknowledged) for w in role.wildcards] == [
        ("Resource::*", "AWSLambdaBasicExecutionRole v1", True)
    ]


def test_policy_in_another_stack_attaches_to_the_imported_role(tmp_path: Path) -> None:
    # GIVEN the role lives in Producer and Consumer's policy names it through an export
    producer = _template()
    del producer["Resources"]["RolePolicy"]
    producer["Outputs"] = {
        "RoleName": {"Value": ref("Role"), "Export": {"Name": "Producer:RoleName"}}
    }
    consumer = {
        "Resources": {
            "ExtraPolicy": resource(
                "AWS::IAM::Policy",
                "Consumer/Extra/Resource",
                PolicyName="Extra",
                PolicyDocument=policy(allow("logs:*", "*")),
                Roles=[{"Fn::ImportValue": "Producer:RoleName"}],
            )
        }
    }
    outdir = write_assembly(tmp_path, {"Producer": producer, "Consumer": consumer})
    assembly = load_assembly(outdir)
    [role] = roles(assembly, AckIndex(assembly, nag_review(assembly)))
    # THEN the statements are reported under the producer's role, findings on the policy path
    assert role.label == "`Role` (App/Role/Resource)"
    assert [(w.finding, w.path) for w in _own(role)] == [
        ("Action::logs:*", "Consumer/Extra/Resource"),
        ("Resource::*", "Consumer/Extra/Resource"),
    ]
