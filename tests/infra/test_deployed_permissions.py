"""The requests the deployed code really makes are allowed by the synthesized IAM policies.

Each test names one request a component sends at run time (with the resource ARN and condition
context IAM evaluates it with) and asks the template's policies whether it is allowed, so a
policy that looks scoped but never matches the request fails here instead of in production.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import Synthesized
from tests.infra.iam_eval import PSEUDO, allows, function_role, render, role_statements


@pytest.fixture(scope="module")
def template(synthesized: Synthesized) -> dict[str, Any]:
    (only,) = synthesized.templates().values()
    return only


def _cluster_arn(template: dict[str, Any]) -> str:
    (cluster,) = [
        name for name, r in template["Resources"].items() if r["Type"] == "AWS::ECS::Cluster"
    ]
    return render({"Fn::GetAtt": [cluster, "Arn"]})


def test_reconcile_pass_may_list_its_clusters_tasks(template: dict[str, Any]) -> None:
    # GIVEN the reconcile pass's role
    statements = role_statements(template, function_role(template, "reconcile.handler"))
    cluster = _cluster_arn(template)
    # WHEN it calls ListTasks(cluster=..., desiredStatus=RUNNING) without a container instance,
    # which IAM evaluates against resource "*" with the ecs:cluster condition key (AWS's own
    # example for "list tasks in a cluster": Resource "*", ArnEquals ecs:cluster)
    allowed = allows(statements, "ecs:ListTasks", "*", {"ecs:cluster": cluster})
    # THEN it is allowed, or the pass can never read ECS and repairs nothing
    assert allowed
    # AND only for this cluster
    assert not allows(statements, "ecs:ListTasks", "*", {"ecs:cluster": "arn:other"})


def _fleet(template: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str]:
    """(server role statements, snapshot bucket ARN, fleet key ARN)."""
    resources = template["Resources"]
    (profile,) = [r for r in resources.values() if r["Type"] == "AWS::IAM::InstanceProfile"]
    (role,) = profile["Properties"]["Roles"]
    (bucket,) = [
        n for n, r in resources.items() if r["Type"] == "AWS::S3::Bucket" and "Snapshot" in n
    ]
    (key,) = [n for n, r in resources.items() if r["Type"] == "AWS::KMS::Key" and "Fleet" in n]
    return (
        role_statements(template, role["Ref"]),
        render({"Fn::GetAtt": [bucket, "Arn"]}),
        render({"Fn::GetAtt": [key, "Arn"]}),
    )


VIA_S3 = {"kms:ViaService": f"s3.{PSEUDO['AWS::Region']}.amazonaws.com"}


def test_servers_may_upload_a_snapshot_larger_than_one_part(template: dict[str, Any]) -> None:
    # GIVEN a Consul server's role, the snapshot bucket and its KMS key
    statements, bucket, key = _fleet(template)
    snapshot = f"{bucket}/snapshots/dc1/20260101T000000Z.snap"
    # WHEN `aws s3 cp --sse aws:kms` uploads a snapshot above the CLI's 8 MB multipart
    # threshold: S3 asks KMS for a data key, and for Decrypt of it on every part after the
    # first (S3 docs: uploads to SSE-KMS need kms:GenerateDataKey and kms:Decrypt)
    requests = [
        ("s3:PutObject", snapshot, {}),
        ("kms:GenerateDataKey", key, VIA_S3),
        ("kms:Decrypt", key, VIA_S3),
    ]
    # THEN every request is allowed
    for action, resource, context in requests:
        assert allows(statements, action, resource, context), action


def test_servers_may_restore_a_snapshot_as_docs_operations_says(template: dict[str, Any]) -> None:
    # GIVEN a Consul server's role (docs/operations.md restores as root on a server)
    statements, bucket, key = _fleet(template)
    # WHEN the runbook lists the snapshots and downloads one
    listing = allows(statements, "s3:ListBucket", bucket, {"s3:prefix": "snapshots/dc1/"})
    download = allows(statements, "s3:GetObject", f"{bucket}/snapshots/dc1/x.snap")
    decrypt = allows(statements, "kms:Decrypt", key, VIA_S3)
    # THEN each step is allowed, and nothing outside the snapshot prefix is readable
    assert listing
    assert download
    assert decrypt
    assert not allows(statements, "s3:GetObject", f"{bucket}/other/x")
    assert not allows(statements, "s3:ListBucket", bucket, {"s3:prefix": "other/"})


def _key_statements_for(template: dict[str, Any], service: str) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::KMS::Key":
            continue
        for statement in resource["Properties"]["KeyPolicy"]["Statement"]:
            principal = statement.get("Principal", {})
            if isinstance(principal, dict) and principal.get("Service") == service:
                statements.append(statement)
    return statements


def test_eventbridge_uses_the_queue_key_only_for_this_account(template: dict[str, Any]) -> None:
    # GIVEN the key policies' statements for EventBridge (it encrypts what it sends the queue)
    statements = _key_statements_for(template, "events.amazonaws.com")
    ours = {"aws:SourceAccount": PSEUDO["AWS::AccountId"]}
    # WHEN EventBridge asks for a data key on behalf of a rule of this account, or another one
    for_us = allows(statements, "kms:GenerateDataKey", "*", ours)
    for_others = allows(statements, "kms:GenerateDataKey", "*", {"aws:SourceAccount": "999"})
    # THEN only this account's rules may use the key (no confused deputy)
    assert for_us
    assert not for_others
