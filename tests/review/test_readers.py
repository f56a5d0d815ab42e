"""Every way a role can read a secret or use a key is a reader, or an explicit "not evaluated".

GIVEN roles that reach the secrets without naming them: `NotResource`, an ARN pattern whose
service is `*`, an AWS managed policy the review has a pinned copy of, one it has not
WHEN the secrets and keys are reviewed
THEN each is a reader (with how), or "not evaluated", or unresolved: never absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import allow, getatt, policy, ref, resource, write_assembly
from tests.review.test_secrets import _role, _secrets, _who
from tools.review.collect import build_review
from tools.review.iam import roles
from tools.review.kms import keys
from tools.review.load import load_assembly
from tools.review.nag import AckIndex, nag_review
from tools.review.posture import wildcard_groups

SECRETS = {
    "Ca": resource("AWS::SecretsManager::Secret", "App/Ca/Resource"),
    "Token": resource("AWS::SecretsManager::Secret", "App/Token/Resource"),
}
READ = "secretsmanager:GetSecretValue"


def _managed(name: str, arn: str) -> dict[str, Any]:
    return {
        name: resource(
            "AWS::IAM::Role",
            f"App/{name}/Resource",
            ManagedPolicyArns=[{"Fn::Join": ["", ["arn:", ref("AWS::Partition"), arn]]}],
        )
    }


def _readers(tmp_path: Path, resources: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    found = _secrets(tmp_path, {**SECRETS, **resources})
    return {s.res.logical_id: _who(s.readers) for s in found.secrets}


def test_not_resource_reads_every_secret_it_does_not_name(tmp_path: Path) -> None:
    readers = _readers(
        tmp_path,
        _role("Host", {"Effect": "Allow", "Action": READ, "NotResource": ref("Ca")}),
    )
    assert readers["Ca"] == []
    assert readers["Token"] == [("Host", "NotResource (every secret but <Ca>)")]


def test_an_arn_pattern_with_a_service_wildcard_reads_every_secret(tmp_path: Path) -> None:
    readers = _readers(
        tmp_path,
        {
            **_role("A", allow(READ, "arn:aws:*:us-east-1:*:secret:*")),
            **_role("B", allow(READ, "arn:*:secretsmanager:*")),
            **_role("C", allow(READ, "arn:aws:s3:::bucket/*")),
        },
    )
    assert readers["Token"] == [
        ("A", "wildcard arn:aws:*:us-east-1:*:secret:*"),
        ("B", "wildcard arn:*:secretsmanager:*"),
    ]


def test_a_pinned_aws_managed_policy_is_evaluated_like_an_inline_one(tmp_path: Path) -> None:
    found = _secrets(
        tmp_path, {**SECRETS, **_managed("Host", ":iam::aws:policy/SecretsManagerReadWrite")}
    )
    for secret in found.secrets:
        assert _who(secret.readers) == [
            ("Host", "wildcard * (AWS managed SecretsManagerReadWrite, pinned copy)")
        ]
        assert "ReplicateSecretToRegions" in secret.writers[0].actions


def test_an_unknown_managed_policy_is_not_evaluated_never_no_reader(tmp_path: Path) -> None:
    arn = ":iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
    found = _secrets(tmp_path, {**SECRETS, **_managed("Host", arn)})
    for secret in found.secrets:
        assert _who(secret.readers) == [
            ("Host", "not evaluated: managed policy AmazonEC2ContainerServiceforEC2Role")
        ]


def test_a_pattern_over_generated_names_is_unresolved_with_the_right_reason(
    tmp_path: Path,
) -> None:
    pattern = {
        "Fn::Join": [
            "",
            ["arn:aws:secretsmanager:", ref("AWS::Region"), ":1:secret:TokenSecret-??????"],
        ]
    }
    found = _secrets(tmp_path, {**SECRETS, **_role("Host", allow(READ, pattern))})
    [unresolved] = found.unresolved
    assert unresolved.why == (
        "a pattern the review cannot match against the secrets' names, which CloudFormation "
        "generates at deploy",
    )


def test_key_grants_follow_not_resource_and_kms_patterns(tmp_path: Path) -> None:
    resources = {
        "Key": resource("AWS::KMS::Key", "App/Key/Resource", KeyPolicy=policy()),
        "Other": resource("AWS::KMS::Key", "App/Other/Resource", KeyPolicy=policy()),
        **_role(
            "NotIt",
            {"Effect": "Allow", "Action": "kms:Decrypt", "NotResource": getatt("Other", "Arn")},
        ),
        **_role("Pattern", allow("kms:Decrypt", "arn:aws:kms:*:*:key/*")),
    }
    assembly = load_assembly(write_assembly(tmp_path, {"App": {"Resources": resources}}))
    found = {
        k.res.logical_id: k
        for k in keys(assembly, roles(assembly, AckIndex(assembly, nag_review(assembly))))
    }
    who = {
        name: sorted((g.principal.logical_id if g.principal else "?", g.how) for g in k.iam_grants)
        for name, k in found.items()
    }
    assert who["Key"] == [
        ("NotIt", "NotResource (every key but <Other.Arn>)"),
        ("Pattern", "wildcard arn:aws:kms:*:*:key/*"),
    ]
    assert who["Other"] == [("Pattern", "wildcard arn:aws:kms:*:*:key/*")]


def test_first_page_wildcards_name_managed_policies_evaluated_or_not(tmp_path: Path) -> None:
    # GIVEN a host role with AmazonSSMManagedInstanceCore (pinned: ssm:GetParameter* on *) and
    # another role with a managed policy the review has no copy of
    resources = {
        **_managed("Host", ":iam::aws:policy/AmazonSSMManagedInstanceCore"),
        **_managed("Other", ":iam::aws:policy/AmazonEC2ContainerServiceforEC2Role"),
    }
    review = build_review(write_assembly(tmp_path, {"App": {"Resources": resources}}), linter=None)
    # THEN "Which wildcards exist" holds both: the pinned one's `*`, the other as unknown
    groups = {
        g.reason: [(r.logical_id if r else "", f) for r, f in g.items]
        for g in wildcard_groups(review)
    }
    [unknown] = [r for r in groups if "AmazonEC2ContainerServiceforEC2Role" in r]
    assert groups[unknown] == [("Other", "wildcards unknown")]
    host = [items for items in groups.values() if ("Host", "Resource::*") in items]
    assert host, groups
