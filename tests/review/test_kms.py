"""KMS keys: every key policy statement, the unconditioned service principals, role grants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import allow, getatt, policy, ref, resource, write_assembly
from tools.review.iam import roles
from tools.review.kms import KeyReview, keys
from tools.review.load import load_assembly
from tools.review.nag import AckIndex, nag_review

ROOT = {"AWS": {"Fn::Join": ["", ["arn:aws:iam::", ref("AWS::AccountId"), ":root"]]}}


def _keys(tmp_path: Path, *statements: dict[str, Any], **resources: Any) -> list[KeyReview]:
    template = {
        "Resources": {
            "Key": resource(
                "AWS::KMS::Key",
                "App/Key/Resource",
                EnableKeyRotation=True,
                KeyPolicy=policy(*statements),
            ),
            "Alias": resource("AWS::KMS::Alias", AliasName="alias/app", TargetKeyId=ref("Key")),
            "Queue": resource("AWS::SQS::Queue", "App/Queue/Resource", KmsMasterKeyId=ref("Key")),
            **resources,
        }
    }
    assembly = load_assembly(write_assembly(tmp_path, {"App": template}))
    return keys(assembly, roles(assembly, AckIndex(assembly, nag_review(assembly))))


def test_service_principal_without_condition_is_flagged(tmp_path: Path) -> None:
    # GIVEN the account root, a conditioned and an unconditioned service principal
    [key] = _keys(
        tmp_path,
        allow("kms:*", "*", Principal=ROOT),
        allow(
            ["kms:Decrypt", "kms:GenerateDataKey*"],
            "*",
            Principal={"Service": "events.amazonaws.com"},
            Condition={"StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")}},
        ),
        allow("kms:Decrypt", "*", Principal={"Service": "cloudwatch.amazonaws.com"}),
    )
    # THEN every statement is listed, and only the unconditioned service statement is flagged
    assert [(s.principals[0].text(), s.condition, bool(s.flag)) for s in key.statements] == [
        ("this account (IAM policies decide)", "", False),
        ("Service events.amazonaws.com", "StringEquals aws:SourceAccount=<AWS::AccountId>", False),
        ("Service cloudwatch.amazonaws.com", "", True),
    ]
    assert (key.rotation, key.aliases) == (True, ("alias/app",))
    assert [res.logical_id for res in key.used_by] == ["Queue"]


def test_roles_granted_the_key_in_their_own_policy_are_listed_with_conditions(
    tmp_path: Path,
) -> None:
    via = {"StringEquals": {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}}
    [key] = _keys(
        tmp_path,
        allow("kms:*", "*", Principal=ROOT),
        Role=resource("AWS::IAM::Role", "App/Role/Resource"),
        RolePolicy=resource(
            "AWS::IAM::Policy",
            "App/Role/DefaultPolicy/Resource",
            PolicyName="p",
            PolicyDocument=policy(
                allow("kms:Decrypt", getatt("Key", "Arn"), Condition=via),
                allow("s3:GetObject", "*"),
            ),
            Roles=[ref("Role")],
        ),
    )
    [grant] = key.iam_grants
    assert grant.principal is not None
    assert (grant.principal.logical_id, grant.actions, grant.how) == (
        "Role",
        ("Decrypt",),
        "names it",
    )
    assert grant.condition == "StringEquals kms:ViaService=secretsmanager.us-east-1.amazonaws.com"
