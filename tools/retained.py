"""What `make destroy` leaves behind on purpose, and the command that deletes it.

    python -m tools.retained record [-c key=value ...]   # before `cdk destroy` (make destroy)
    python -m tools.retained purge RETAINED_FILE          # later, once nothing there is needed

Resources with `DeletionPolicy: Retain` (or `RetainExceptOnCreate`) outlive the stack: the KMS
keys, the Consul fleet's secrets (the CA private key, the management token, ...), the snapshot
bucket and its access-log bucket, the log groups. Once the stack is gone CloudFormation no
longer lists them, so `record` (run by `make destroy` before the deletion) reads the *deployed*
template (GetTemplate: what CloudFormation will act on, not the checkout's synthesis, which may
retain more or less than what runs) for the retained logical IDs, asks CloudFormation for their
physical IDs (ListStackResources) and writes them to `retained-<stack>.json`, with the stack's
ID.

`purge` first asks CloudFormation about that stack ID (DescribeStacks by ID also answers for a
deleted stack; by name it would say "does not exist") and refuses unless it is DELETE_COMPLETE:
the file is written before `cdk destroy` asks for confirmation, and a "no" or a DELETE_FAILED
leaves the fleet running on these very keys, secrets and snapshots.

`purge` deletes them: every object version and delete marker, then the buckets; the secrets
without a recovery window (ForceDeleteWithoutRecovery: the CA key and the management token
must not linger); the log groups; and last it schedules the KMS keys' deletion after the
minimum 7-day waiting period (KMS never deletes a key at once). Both need AWS credentials.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3

from mesh_stack.config import MeshConfig
from mesh_stack.config_errors import ConfigError
from tools.preflight import CDK_JSON, context_from

# The order of `purge`: the keys last, since the buckets' and secrets' data is encrypted with
# them; deleting a bucket's objects needs no decryption, so nothing depends on them before.
ORDER = ("AWS::S3::Bucket", "AWS::SecretsManager::Secret", "AWS::Logs::LogGroup", "AWS::KMS::Key")
# Both keep the resource when the stack is deleted (mesh_stack/retention.py).
RETAINING = ("Retain", "RetainExceptOnCreate")
KEY_WAITING_DAYS = 7  # KMS ScheduleKeyDeletion PendingWindowInDays: 7-30


def retained_logical_ids(template: dict[str, Any]) -> dict[str, str]:
    """Logical ID -> resource type of every resource the stack keeps when it is deleted."""
    return {
        logical_id: resource["Type"]
        for logical_id, resource in template.get("Resources", {}).items()
        if resource.get("DeletionPolicy") in RETAINING and resource["Type"] in ORDER
    }


def stack_id(stack_name: str, cloudformation: Any) -> str:
    """The deployed stack's ID (its ARN), which names it even after it is deleted."""
    found: str = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]["StackId"]
    return found


def refusal(stack: str, cloudformation: Any) -> str | None:
    """Why `purge` must not run now (the stack still exists, or is still being deleted)."""
    (described,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    status = described["StackStatus"]
    if status == "DELETE_COMPLETE":
        return None
    return (
        f"stack {described['StackName']} ({stack}) is {status}, not DELETE_COMPLETE: its "
        "fleet may still use these keys, secrets and snapshots; purge only after "
        "`make destroy` finished"
    )


def deployed_template(stack_name: str, cloudformation: Any) -> dict[str, Any]:
    """The template the deployed stack runs on. GetTemplate's default stage, `Processed`, is
    the one CloudFormation acts on (the same as `Original` without transforms; API reference,
    GetTemplate TemplateStage). botocore hands a JSON body over parsed; a YAML one stays text."""
    body = cloudformation.get_template(StackName=stack_name)["TemplateBody"]
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"the deployed template of {stack_name} is not JSON (a CDK deployment is): {err}"
            ) from err
    return dict(body)


def record(template: dict[str, Any], stack_name: str, cloudformation: Any) -> list[dict[str, str]]:
    """The retained resources of the deployed stack: type, logical and physical ID."""
    wanted = retained_logical_ids(template)
    found = []
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name):
        for summary in page["StackResourceSummaries"]:
            logical_id = summary["LogicalResourceId"]
            if logical_id in wanted and summary.get("PhysicalResourceId"):
                found.append(
                    {
                        "type": wanted[logical_id],
                        "logical_id": logical_id,
                        "physical_id": summary["PhysicalResourceId"],
                    }
                )
    return sorted(found, key=lambda r: (ORDER.index(r["type"]), r["logical_id"]))


def _empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


def _gone(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
    # KMSInvalidStateException: the key is already pending deletion (an earlier purge).
    return code in ("NoSuchBucket", "ResourceNotFoundException", "KMSInvalidStateException")


def _stop_access_logs(s3: Any, buckets: Sequence[str]) -> set[str]:
    """Turn off server access logging of `buckets`; returns the log targets among them.

    S3 delivers access logs late (best effort, usually within hours: S3 User Guide, "Logging
    requests with server access logging"): the purge's own ListObjectVersions/DeleteObjects
    calls on a logged bucket would refill its log bucket after that was emptied.
    """
    targets = set()
    for bucket in buckets:
        try:
            logging = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled")
            if logging:
                targets.add(logging["TargetBucket"])
                s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})
        except Exception as err:
            if not _gone(err):
                raise
    return targets & set(buckets)


def _delete_bucket(s3: Any, bucket: str) -> None:
    _empty_bucket(s3, bucket)
    try:
        s3.delete_bucket(Bucket=bucket)
    except Exception as err:  # a log delivered between the emptying and the delete
        if getattr(err, "response", {}).get("Error", {}).get("Code") != "BucketNotEmpty":
            raise
        _empty_bucket(s3, bucket)
        s3.delete_bucket(Bucket=bucket)


def purge(resources: Sequence[dict[str, str]], clients: dict[str, Any]) -> list[str]:
    """Delete what `record` listed, in ORDER; returns one line per resource. Idempotent.

    Access logging is turned off first and log target buckets go after the buckets they log.
    """
    buckets = [r["physical_id"] for r in resources if r["type"] == "AWS::S3::Bucket"]
    log_targets = _stop_access_logs(clients["s3"], buckets) if buckets else set()
    lines = []
    for resource in sorted(
        resources,
        key=lambda r: (ORDER.index(r["type"]), r["physical_id"] in log_targets),
    ):
        kind, physical = resource["type"], resource["physical_id"]
        try:
            if kind == "AWS::S3::Bucket":
                _delete_bucket(clients["s3"], physical)
                lines.append(f"deleted bucket {physical}")
            elif kind == "AWS::SecretsManager::Secret":
                clients["secretsmanager"].delete_secret(
                    SecretId=physical, ForceDeleteWithoutRecovery=True
                )
                lines.append(f"deleted secret {physical} (no recovery window)")
            elif kind == "AWS::Logs::LogGroup":
                clients["logs"].delete_log_group(logGroupName=physical)
                lines.append(f"deleted log group {physical}")
            else:
                clients["kms"].schedule_key_deletion(
                    KeyId=physical, PendingWindowInDays=KEY_WAITING_DAYS
                )
                lines.append(f"scheduled deletion of KMS key {physical} in {KEY_WAITING_DAYS} days")
        except Exception as err:  # one line per resource, then the next one
            if not _gone(err):
                raise
            lines.append(f"already gone: {kind} {physical}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.retained", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("-c", "--context", action="append", default=[], dest="context")
    rec.add_argument("--cdk-json", type=Path, default=CDK_JSON)
    pur = sub.add_parser("purge")
    pur.add_argument("file", type=Path)
    pur.add_argument(
        "--stack-id",
        help="the deleted stack's ID, for a file written without one "
        "(aws cloudformation list-stacks --stack-status-filter DELETE_COMPLETE)",
    )
    args, _ = parser.parse_known_args(argv)

    if args.command == "record":
        try:
            config = MeshConfig.from_context(context_from(args.context, args.cdk_json))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        cloudformation = boto3.client("cloudformation", region_name=config.region)
        template = deployed_template(config.stack_name, cloudformation)
        resources = record(template, config.stack_name, cloudformation)
        out = Path(f"retained-{config.stack_name}.json")
        listing = {
            "region": config.region,
            "stack_id": stack_id(config.stack_name, cloudformation),
            "resources": resources,
        }
        out.write_text(json.dumps(listing, indent=2) + "\n")
        print(f"{len(resources)} retained resources listed in {out}; delete them later with")
        print(f"  python -m tools.retained purge {out}")
        return 0
    data = json.loads(args.file.read_text())
    session = boto3.Session(region_name=data["region"])
    stack = args.stack_id or data.get("stack_id")
    if not stack:
        print(
            f"error: {args.file} names no stack_id: pass --stack-id with the deleted stack's ID",
            file=sys.stderr,
        )
        return 1
    refused = refusal(stack, session.client("cloudformation"))
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    clients = {name: session.client(name) for name in ("s3", "secretsmanager", "logs", "kms")}
    for line in purge(data["resources"], clients):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
