"""What `make destroy` keeps, and the command that deletes it afterwards (tools/retained.py).

`record` runs against a botocore Stubber of CloudFormation ListStackResources (API reference:
`StackResourceSummaries[]` with `LogicalResourceId`, `PhysicalResourceId`, `ResourceType`);
`purge` against moto's S3, Secrets Manager, CloudWatch Logs and KMS, and its refusal against a
Stubber of CloudFormation DescribeStacks by stack ID (API reference, DescribeStacks StackName:
a deleted stack can be described only by its unique stack ID; StackStatus DELETE_COMPLETE).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tools import retained

REGION = "us-east-1"


def test_the_default_stack_retains_the_keys_fleet_secrets_buckets_and_log_groups(
    synthesized: Any,
) -> None:
    (template,) = [t for name, t in synthesized.templates().items() if "assets" not in name]
    kept = retained.retained_logical_ids(template)
    kinds = sorted(set(kept.values()))
    assert kinds == sorted(retained.ORDER)
    secrets = [lid for lid, kind in kept.items() if kind == "AWS::SecretsManager::Secret"]
    # the CA private key and the management token are among them
    assert any("CertificateAuthority" in lid for lid in secrets)
    assert any("ManagementToken" in lid for lid in secrets)
    # and a failed first create deletes them again (RetainExceptOnCreate): no orphans that no
    # stack lists, one more set per retried deploy
    policies = {template["Resources"][lid]["DeletionPolicy"] for lid in kept}
    assert policies == {"RetainExceptOnCreate"}
    plain = [lid for lid, r in template["Resources"].items() if r.get("DeletionPolicy") == "Retain"]
    assert plain == []


def test_record_maps_the_retained_logical_ids_to_what_was_deployed() -> None:
    template = {
        "Resources": {
            "CaSecret": {"Type": "AWS::SecretsManager::Secret", "DeletionPolicy": "Retain"},
            "Key": {"Type": "AWS::KMS::Key", "DeletionPolicy": "Retain"},
            "Queue": {"Type": "AWS::SQS::Queue", "DeletionPolicy": "Delete"},
            "TokenSecret": {"Type": "AWS::SecretsManager::Secret"},
        }
    }
    cfn = boto3.client(
        "cloudformation", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    stub = Stubber(cfn)
    summary = {"ResourceStatus": "CREATE_COMPLETE", "LastUpdatedTimestamp": "2026-01-01"}
    stub.add_response(
        "list_stack_resources",
        {
            "StackResourceSummaries": [
                {
                    "LogicalResourceId": "Key",
                    "PhysicalResourceId": "key-1",
                    "ResourceType": "AWS::KMS::Key",
                    **summary,
                },
                {
                    "LogicalResourceId": "Queue",
                    "PhysicalResourceId": "https://q",
                    "ResourceType": "AWS::SQS::Queue",
                    **summary,
                },
                {
                    "LogicalResourceId": "TokenSecret",
                    "PhysicalResourceId": "arn:token",
                    "ResourceType": "AWS::SecretsManager::Secret",
                    **summary,
                },
            ],
            "NextToken": "page-2",
        },
        {"StackName": "consul-mesh-dev"},
    )
    stub.add_response(
        "list_stack_resources",
        {
            "StackResourceSummaries": [
                {
                    "LogicalResourceId": "CaSecret",
                    "PhysicalResourceId": "arn:ca",
                    "ResourceType": "AWS::SecretsManager::Secret",
                    **summary,
                },
            ]
        },
        {"StackName": "consul-mesh-dev", "NextToken": "page-2"},
    )
    with stub:
        found = retained.record(template, "consul-mesh-dev", cfn)
    assert found == [
        {"type": "AWS::SecretsManager::Secret", "logical_id": "CaSecret", "physical_id": "arn:ca"},
        {"type": "AWS::KMS::Key", "logical_id": "Key", "physical_id": "key-1"},
    ]


def test_record_lists_what_the_deployed_stack_retains_not_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a checkout whose synthesis no longer retains the old key (or was never run) ...
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cdk.out").mkdir()
    checkout = {"Resources": {"OldKey": {"Type": "AWS::KMS::Key", "DeletionPolicy": "Delete"}}}
    (tmp_path / "cdk.out" / "consul-mesh-dev.template.json").write_text(json.dumps(checkout))
    # ... while the deployed stack still runs on a template that retains it
    deployed = {"Resources": {"OldKey": {"Type": "AWS::KMS::Key", "DeletionPolicy": "Retain"}}}
    cfn = boto3.client(
        "cloudformation", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    stub = Stubber(cfn)
    stack = {"StackName": "consul-mesh-dev"}
    stub.add_response("get_template", {"TemplateBody": json.dumps(deployed)}, stack)
    stub.add_response(
        "list_stack_resources",
        {
            "StackResourceSummaries": [
                {
                    "LogicalResourceId": "OldKey",
                    "PhysicalResourceId": "key-old",
                    "ResourceType": "AWS::KMS::Key",
                    "ResourceStatus": "UPDATE_COMPLETE",
                    "LastUpdatedTimestamp": "2026-01-01",
                }
            ]
        },
        stack,
    )
    stub.add_response(
        "describe_stacks",
        {
            "Stacks": [
                {
                    "StackName": "consul-mesh-dev",
                    "StackId": STACK_ID,
                    "CreationTime": "2026-01-01",
                    "StackStatus": "UPDATE_COMPLETE",
                }
            ]
        },
        stack,
    )
    monkeypatch.setattr(retained.boto3, "client", lambda *_, **__: cfn)
    # WHEN `make destroy` records what the deletion keeps
    with stub:
        assert retained.main(["record"]) == 0
    # THEN the file lists what the deletion will really keep
    listing = json.loads((tmp_path / "retained-consul-mesh-dev.json").read_text())
    assert listing["resources"] == [
        {"type": "AWS::KMS::Key", "logical_id": "OldKey", "physical_id": "key-old"}
    ]
    assert listing["stack_id"] == STACK_ID


@pytest.fixture
def account() -> Iterator[dict[str, Any]]:
    with mock_aws():
        session = boto3.Session(
            region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        yield {name: session.client(name) for name in ("s3", "secretsmanager", "logs", "kms")}


def test_purge_deletes_everything_listed_and_can_run_again(account: dict[str, Any]) -> None:
    # GIVEN what a destroyed stack left: a versioned bucket with snapshots, the CA secret,
    # a log group and the KMS key
    s3, sm, logs, kms = (account[n] for n in ("s3", "secretsmanager", "logs", "kms"))
    s3.create_bucket(Bucket="snapshots")
    s3.put_bucket_versioning(Bucket="snapshots", VersioningConfiguration={"Status": "Enabled"})
    for body in (b"one", b"two"):
        s3.put_object(Bucket="snapshots", Key="snapshots/dc1/a.snap", Body=body)
    s3.delete_object(Bucket="snapshots", Key="snapshots/dc1/a.snap")  # a delete marker
    ca = sm.create_secret(Name="ca", SecretString='{"cert": "c", "key": "k"}')["ARN"]
    logs.create_log_group(logGroupName="/aws/lambda/reg")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    resources = [
        {"type": "AWS::KMS::Key", "logical_id": "Key", "physical_id": key},
        {"type": "AWS::Logs::LogGroup", "logical_id": "Logs", "physical_id": "/aws/lambda/reg"},
        {"type": "AWS::SecretsManager::Secret", "logical_id": "Ca", "physical_id": ca},
        {"type": "AWS::S3::Bucket", "logical_id": "Bucket", "physical_id": "snapshots"},
    ]
    # WHEN the operator purges them
    lines = retained.purge(resources, account)
    # THEN nothing is left but the key, pending deletion after the minimum waiting period
    assert [line.split()[0] for line in lines] == ["deleted", "deleted", "deleted", "scheduled"]
    assert "snapshots" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.describe_secret(SecretId=ca)
    assert logs.describe_log_groups()["logGroups"] == []
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    # AND a second run (an interrupted purge, run again) finishes: what is gone is reported
    # (moto, like Secrets Manager, accepts a forced delete of a deleted secret)
    again = retained.purge(resources, account)
    assert len(again) == 4
    assert again[0] == "already gone: AWS::S3::Bucket snapshots"


STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/consul-mesh-dev/0a1b2c3d"


def described(status: str) -> dict[str, Any]:
    """DescribeStacks by stack ID (API reference: a deleted stack is described by its unique
    stack ID only, with StackStatus DELETE_COMPLETE)."""
    return {
        "Stacks": [
            {
                "StackName": "consul-mesh-dev",
                "StackId": STACK_ID,
                "CreationTime": "2026-01-01T00:00:00Z",
                "StackStatus": status,
            }
        ]
    }


def test_purge_refuses_while_the_recorded_stack_still_exists(
    tmp_path: Path,
    account: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `make destroy` writes the file before `cdk destroy` asks for confirmation: after a "no"
    # (or a DELETE_FAILED) the fleet still runs on the very secrets purge would delete.
    cfn = boto3.client(
        "cloudformation", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    stub = Stubber(cfn)
    for status in ("UPDATE_COMPLETE", "DELETE_FAILED", "DELETE_COMPLETE", "DELETE_COMPLETE"):
        stub.add_response("describe_stacks", described(status), {"StackName": STACK_ID})
    stub.activate()
    clients = {**account, "cloudformation": cfn}

    class Session:
        def __init__(self, region_name: str) -> None:
            assert region_name == REGION

        def client(self, name: str) -> Any:
            return clients[name]

    monkeypatch.setattr(retained.boto3, "Session", Session)
    sm = account["secretsmanager"]
    ca = sm.create_secret(Name="ca", SecretString='{"cert": "c", "key": "k"}')["ARN"]
    listing = tmp_path / "retained-consul-mesh-dev.json"
    resource = {"type": "AWS::SecretsManager::Secret", "logical_id": "Ca", "physical_id": ca}
    listing.write_text(
        json.dumps({"region": REGION, "stack_id": STACK_ID, "resources": [resource]})
    )
    # WHEN the stack still runs, or its deletion failed, THEN purge refuses and deletes nothing
    for status in ("UPDATE_COMPLETE", "DELETE_FAILED"):
        assert retained.main(["purge", str(listing)]) == 1
        err = capsys.readouterr().err
        assert f"consul-mesh-dev ({STACK_ID}) is {status}, not DELETE_COMPLETE" in err
        assert sm.describe_secret(SecretId=ca)["ARN"] == ca
    # WHEN the stack is deleted, THEN purge runs
    assert retained.main(["purge", str(listing)]) == 0
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.describe_secret(SecretId=ca)
    # A file without a stack ID (written by an older version) needs --stack-id
    listing.write_text(json.dumps({"region": REGION, "resources": [resource]}))
    assert retained.main(["purge", str(listing)]) == 1
    assert "--stack-id" in capsys.readouterr().err
    assert retained.main(["purge", str(listing), "--stack-id", STACK_ID]) == 0
    stub.assert_no_pending_responses()


def test_purge_stops_access_logs_and_deletes_the_log_bucket_last(
    account: dict[str, Any],
) -> None:
    # GIVEN the snapshot bucket logs to the access-log bucket, which the record lists first
    # (logical-ID order: ConsulFleetAccessLogs... < ConsulFleetSnapshotBucket...)
    s3 = account["s3"]
    for name in ("access-logs", "snapshots"):
        s3.create_bucket(Bucket=name)
    # the grant S3 log delivery needs on the target (S3 User Guide, "Permissions for log
    # delivery"; moto checks it too)
    s3.put_bucket_policy(
        Bucket="access-logs",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "logging.s3.amazonaws.com"},
                        "Action": "s3:PutObject",
                        "Resource": "arn:aws:s3:::access-logs/*",
                    }
                ],
            }
        ),
    )
    s3.put_bucket_logging(
        Bucket="snapshots",
        BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": "access-logs", "TargetPrefix": ""}},
    )
    s3.put_object(Bucket="access-logs", Key="2026-01-01-00-00-00-LOG", Body=b"log")
    resources = [
        {"type": "AWS::S3::Bucket", "logical_id": "AccessLogs", "physical_id": "access-logs"},
        {"type": "AWS::S3::Bucket", "logical_id": "Snapshots", "physical_id": "snapshots"},
    ]
    # WHEN purged, THEN the logged bucket stops logging and goes first; its late logs can no
    # longer land in a bucket that was already emptied
    assert retained.purge(resources, account) == [
        "deleted bucket snapshots",
        "deleted bucket access-logs",
    ]
    assert s3.list_buckets()["Buckets"] == []
