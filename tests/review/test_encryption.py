"""Encryption at rest and in transit for each store and queue, and which KMS key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import getatt, policy, ref, resource, write_assembly
from tools.review.encryption import StoreEncryption, stores
from tools.review.load import load_assembly

KEY = resource("AWS::KMS::Key", "App/Key/Resource", EnableKeyRotation=True, KeyPolicy={})
KEY_LABEL = "`Key` (App/Key/Resource), rotation on"
DENY_PLAIN_HTTP = {
    "Effect": "Deny",
    "Principal": {"AWS": "*"},
    "Action": "*",
    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
}


def _stores(tmp_path: Path, **resources: dict[str, Any]) -> dict[str, StoreEncryption]:
    template = {"Resources": {"Key": KEY, **resources}}
    found = stores(load_assembly(write_assembly(tmp_path, {"App": template})))
    return {row.label.split("`")[1]: row for row in found}


def test_bucket_with_kms_and_tls_policy_is_encrypted_both_ways(tmp_path: Path) -> None:
    rows = _stores(
        tmp_path,
        Bucket=resource(
            "AWS::S3::Bucket",
            BucketEncryption={
                "ServerSideEncryptionConfiguration": [
                    {
                        "ServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": getatt("Key", "Arn"),
                        }
                    }
                ]
            },
        ),
        BucketPolicy=resource(
            "AWS::S3::BucketPolicy", Bucket=ref("Bucket"), PolicyDocument=policy(DENY_PLAIN_HTTP)
        ),
        Plain=resource("AWS::S3::Bucket"),
    )
    bucket = rows["Bucket"]
    assert (bucket.at_rest, bucket.key, bucket.at_rest_ok) == ("SSE-KMS", KEY_LABEL, True)
    assert bucket.in_transit_ok
    # GIVEN a bucket with no policy: S3's default encryption, but plain HTTP is not denied
    plain = rows["Plain"]
    assert plain.at_rest_ok
    assert not plain.in_transit_ok
    assert "not enforced" in plain.in_transit


def test_queues_and_topics_without_keys_are_flagged(tmp_path: Path) -> None:
    rows = _stores(
        tmp_path,
        Queue=resource("AWS::SQS::Queue", KmsMasterKeyId=ref("Alias")),
        Alias=resource("AWS::KMS::Alias", AliasName="alias/app", TargetKeyId=ref("Key")),
        SqsManaged=resource("AWS::SQS::Queue", SqsManagedSseEnabled=True),
        Unset=resource("AWS::SQS::Queue"),
        Topic=resource("AWS::SNS::Topic"),
        AwsKeyTopic=resource("AWS::SNS::Topic", KmsMasterKeyId="alias/aws/sns"),
    )
    # THEN an alias resolves to the key it targets
    assert (rows["Queue"].at_rest, rows["Queue"].key) == ("SSE-KMS", KEY_LABEL)
    assert rows["SqsManaged"].at_rest_ok
    assert not rows["Unset"].at_rest_ok
    assert not rows["Topic"].at_rest_ok
    assert rows["AwsKeyTopic"].key == "AWS managed key `alias/aws/sns`"


def test_launch_template_volume_without_encryption_is_flagged(tmp_path: Path) -> None:
    rows = _stores(
        tmp_path,
        Encrypted=resource(
            "AWS::EC2::LaunchTemplate",
            LaunchTemplateData={
                "BlockDeviceMappings": [
                    {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": ref("Key")}}
                ]
            },
        ),
        Plain=resource(
            "AWS::EC2::LaunchTemplate",
            LaunchTemplateData={"BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {}}]},
        ),
        NoMappings=resource("AWS::EC2::LaunchTemplate", LaunchTemplateData={}),
    )
    assert (rows["Encrypted"].at_rest_ok, rows["Encrypted"].key) == (True, KEY_LABEL)
    assert not rows["Plain"].at_rest_ok
    assert not rows["NoMappings"].at_rest_ok


def test_secrets_logs_and_tables_default_to_service_keys(tmp_path: Path) -> None:
    rows = _stores(
        tmp_path,
        Secret=resource("AWS::SecretsManager::Secret"),
        Logs=resource("AWS::Logs::LogGroup", KmsKeyId=getatt("Key", "Arn")),
        Table=resource("AWS::DynamoDB::Table"),
    )
    assert rows["Secret"].key == "AWS managed key `aws/secretsmanager`"
    assert rows["Logs"].key == KEY_LABEL
    assert rows["Table"].key == "AWS owned key"
    assert all(row.at_rest_ok and row.in_transit_ok for row in rows.values())
