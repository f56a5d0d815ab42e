"""Encryption at rest and in transit for every data store and queue, and which KMS key.

"In transit" is what the template enforces: a resource policy denying requests without TLS
(`aws:SecureTransport` = false) for S3, SQS, SNS and EFS, whose endpoints also accept plain
HTTP or unencrypted mounts; the other services here only have HTTPS APIs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.refs import Resolver, Target, flatten

KMS_KEY = "AWS::KMS::Key"
KMS_ALIAS = "AWS::KMS::Alias"
HTTPS_ONLY = "HTTPS-only API"

_Row = tuple[str, str, bool]  # (at rest, key, at rest acceptable)


@dataclass(frozen=True)
class _Context:
    resolver: Resolver

    def key(self, stack: StackTemplate, value: Json) -> str:
        return key_label(self.resolver, stack, value)


_Rows = Callable[[_Context, StackTemplate, dict[str, Json]], Iterator[_Row]]


@dataclass(frozen=True)
class StoreEncryption:
    stack: str
    label: str
    kind: str
    at_rest: str
    key: str
    in_transit: str
    at_rest_ok: bool
    in_transit_ok: bool
    res: Res | None = None


def _through_aliases(
    resolver: Resolver, stack: StackTemplate, value: Json
) -> tuple[Target | None, StackTemplate, Json]:
    """What a key property names once aliases are followed (an alias names a key)."""
    for _ in range(3):
        found = resolver.target(stack, value)
        if found is None or found.type != KMS_ALIAS:
            return found, stack, value
        stack, value = found.stack, found.properties.get("TargetKeyId")
    return None, stack, value


def key_of(resolver: Resolver, stack: StackTemplate, value: Json) -> tuple[Res | None, str]:
    """The KMS key a property names (through an alias), or the plain text of what it names."""
    if value is None:
        return None, ""
    found, stack, value = _through_aliases(resolver, stack, value)
    if found is not None:
        return found.res, ""
    return None, flatten(resolver.producer(stack, value)[1])


def key_label(resolver: Resolver, stack: StackTemplate, value: Json) -> str:
    """The KMS key a property names: `Key` (path) with its rotation, or an AWS managed key."""
    if value is None:
        return ""
    home = stack
    found, stack, value = _through_aliases(resolver, stack, value)
    if found is not None and found.type == KMS_KEY:
        rotation = "on" if found.properties.get("EnableKeyRotation") else "off"
        return f"{found.label(home)}, rotation {rotation}"
    if found is not None:
        return found.label(home, attribute=True)
    _, literal = resolver.producer(stack, value)
    if isinstance(literal, str) and literal.startswith("alias/aws/"):
        return f"AWS managed key `{literal}`"
    return resolver.describe(stack, value)


def _denies_insecure_transport(document: Json) -> bool:
    statements = (document or {}).get("Statement") or []
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Deny":
            continue
        condition = (statement.get("Condition") or {}).get("Bool") or {}
        value = condition.get("aws:SecureTransport")
        if str(value).lower() in ("false", "['false']", "[false]"):
            return True
    return False


_POLICY_TARGETS = {
    "AWS::S3::BucketPolicy": "Bucket",
    "AWS::SQS::QueuePolicy": "Queues",
    "AWS::SNS::TopicPolicy": "Topics",
}


class _Policies:
    """The buckets, queues, topics and file systems whose policy denies requests without TLS."""

    def __init__(self, assembly: Assembly, resolver: Resolver) -> None:
        self.tls_enforced: set[tuple[str, str]] = set()
        for stack in assembly.stacks:
            for logical_id, resource in stack.resources_of("AWS::EFS::FileSystem"):
                policy = (resource.get("Properties") or {}).get("FileSystemPolicy")
                if _denies_insecure_transport(policy):
                    self.tls_enforced.add((stack.name, logical_id))
            for _, resource in stack.resources_of(*_POLICY_TARGETS):
                props = resource.get("Properties") or {}
                if not _denies_insecure_transport(props.get("PolicyDocument")):
                    continue
                targets = props.get(_POLICY_TARGETS[resource["Type"]])
                for value in targets if isinstance(targets, list) else [targets]:
                    found = resolver.target(stack, value)
                    if found is not None:
                        self.tls_enforced.add((found.stack.name, found.logical_id))

    def transit(self, stack: StackTemplate, logical_id: str) -> tuple[str, bool]:
        if (stack.name, logical_id) in self.tls_enforced:
            return "TLS enforced (policy denies aws:SecureTransport=false)", True
        return "TLS not enforced (no policy denying aws:SecureTransport=false)", False


def _s3(ctx: _Context, stack: StackTemplate, props: dict[str, Json]) -> Iterator[_Row]:
    rules = (props.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration") or []
    default = (rules[0].get("ServerSideEncryptionByDefault") or {}) if rules else {}
    algorithm = str(default.get("SSEAlgorithm", ""))
    if not algorithm:
        yield "SSE-S3 (S3 default for new objects since January 2023)", "S3 managed", True
    elif algorithm == "AES256":
        yield "SSE-S3", "S3 managed", True
    else:
        key = ctx.key(stack, default.get("KMSMasterKeyID")) or "AWS managed key `aws/s3`"
        yield ("DSSE-KMS" if "dsse" in algorithm else "SSE-KMS"), key, True


def _sqs(ctx: _Context, stack: StackTemplate, props: dict[str, Json]) -> Iterator[_Row]:
    if props.get("KmsMasterKeyId") is not None:
        yield "SSE-KMS", ctx.key(stack, props["KmsMasterKeyId"]), True
    elif str(props.get("SqsManagedSseEnabled")).lower() == "true":
        yield "SSE-SQS", "SQS owned", True
    elif str(props.get("SqsManagedSseEnabled")).lower() == "false":
        yield "none (SqsManagedSseEnabled is false)", "", False
    else:
        yield "not set in the template (KmsMasterKeyId / SqsManagedSseEnabled)", "", False


def _sns(ctx: _Context, stack: StackTemplate, props: dict[str, Json]) -> Iterator[_Row]:
    if props.get("KmsMasterKeyId") is not None:
        yield "SSE-KMS", ctx.key(stack, props["KmsMasterKeyId"]), True
    else:
        yield "none (SNS encrypts only with KmsMasterKeyId)", "", False


def _kms_or(default: str) -> _Rows:
    def rows(ctx: _Context, stack: StackTemplate, props: dict[str, Json]) -> Iterator[_Row]:
        key = props.get("KmsKeyId")
        if key is not None:
            yield "KMS", ctx.key(stack, key), True
        else:
            yield "service managed", default, True

    return rows


def _dynamodb(ctx: _Context, stack: StackTemplate, props: dict[str, Json]) -> Iterator[_Row]:
    sse = props.get("SSESpecification") or {}
    if str(sse.get("SSEEnabled")).lower() == "true":
        key = ctx.key(stack, sse.get("KMSMasterKeyId")) or "AWS managed key `aws/dynamodb`"
        yield "KMS", key, True
    else:
        yield "DynamoDB default", "AWS owned key", True


def _efs(ctx: _Context, stack: StackTemplate, props: dict[str, Json]) -> Iterator[_Row]:
    if str(props.get("Encrypted")).lower() == "true":
        key = ctx.key(stack, props.get("KmsKeyId")) or "AWS managed key `aws/elasticfilesystem`"
        yield "encrypted", key, True
    else:
        yield "not encrypted", "", False


def _ebs(ctx: _Context, stack: StackTemplate, mappings: Json) -> Iterator[_Row]:
    if not mappings:
        yield (
            "no block device mappings: the AMI's volumes, encrypted only if the account "
            "enables EBS encryption by default",
            "",
            False,
        )
        return
    for mapping in mappings:
        ebs = mapping.get("Ebs")
        if ebs is None:
            continue
        device = mapping.get("DeviceName", "?")
        if str(ebs.get("Encrypted")).lower() == "true":
            key = ctx.key(stack, ebs.get("KmsKeyId")) or "AWS managed key `aws/ebs`"
            yield f"`{device}` encrypted", key, True
        else:
            yield f"`{device}` Encrypted not set (account EBS default decides)", "", False


_STORES: dict[str, tuple[str, _Rows]] = {
    "AWS::S3::Bucket": ("S3 bucket", _s3),
    "AWS::SQS::Queue": ("SQS queue", _sqs),
    "AWS::SNS::Topic": ("SNS topic", _sns),
    "AWS::SecretsManager::Secret": (
        "Secrets Manager secret",
        _kms_or("AWS managed key `aws/secretsmanager`"),
    ),
    "AWS::Logs::LogGroup": ("CloudWatch log group", _kms_or("CloudWatch Logs managed")),
    "AWS::DynamoDB::Table": ("DynamoDB table", _dynamodb),
    "AWS::EFS::FileSystem": ("EFS file system", _efs),
    "AWS::EC2::LaunchTemplate": (
        "EBS (launch template)",
        lambda ctx, stack, props: _ebs(
            ctx, stack, (props.get("LaunchTemplateData") or {}).get("BlockDeviceMappings")
        ),
    ),
    "AWS::AutoScaling::LaunchConfiguration": (
        "EBS (launch configuration)",
        lambda ctx, stack, props: _ebs(ctx, stack, props.get("BlockDeviceMappings")),
    ),
    "AWS::EC2::Instance": (
        "EBS (instance)",
        lambda ctx, stack, props: _ebs(ctx, stack, props.get("BlockDeviceMappings")),
    ),
    "AWS::EC2::Volume": (
        "EBS volume",
        lambda ctx, stack, props: _ebs(ctx, stack, [{"Ebs": props}]),
    ),
}
_TLS_BY_POLICY = {"AWS::S3::Bucket", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::EFS::FileSystem"}
_BLOCK_DEVICES = {
    "AWS::EC2::LaunchTemplate",
    "AWS::AutoScaling::LaunchConfiguration",
    "AWS::EC2::Instance",
    "AWS::EC2::Volume",
}


def stores(assembly: Assembly) -> list[StoreEncryption]:
    """One row per store (per block device for EBS), in template order."""
    resolver = Resolver(assembly)
    ctx = _Context(resolver)
    policies = _Policies(assembly, resolver)
    found: list[StoreEncryption] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(*_STORES):
            kind, rows = _STORES[resource["Type"]]
            if resource["Type"] in _TLS_BY_POLICY:
                transit, transit_ok = policies.transit(stack, logical_id)
            elif resource["Type"] in _BLOCK_DEVICES:
                transit, transit_ok = "n/a (block device)", True
            else:
                transit, transit_ok = HTTPS_ONLY, True
            for at_rest, key, ok in rows(ctx, stack, resource.get("Properties") or {}):
                found.append(
                    StoreEncryption(
                        stack=stack.name,
                        label=stack.label(logical_id),
                        kind=kind,
                        at_rest=at_rest,
                        key=key,
                        in_transit=transit,
                        at_rest_ok=ok,
                        in_transit_ok=transit_ok,
                        res=stack.res(logical_id),
                    )
                )
    return found
