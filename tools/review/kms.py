"""KMS keys: who may use each key, under which conditions, and what it encrypts.

Two places grant use of a customer-managed key: its key policy, and the IAM policies of roles
in the same account when the key policy lets the account's IAM decide (the `:root` principal;
AWS KMS Developer Guide, "Default key policy"). Both are listed. A key policy statement that
allows a service principal without any condition is highlighted: every caller of that service
(in any account, unless the service adds its own check) can then ask KMS to use the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.review.iam import RoleReview
from tools.review.load import Assembly
from tools.review.model import Res
from tools.review.policy import (
    DocStatement,
    Grant,
    allowed,
    arn_may_match,
    as_list,
    condition_text,
    read_statements,
)
from tools.review.refs import Resolver, Target, flatten

KMS_KEY = "AWS::KMS::Key"
KMS_ALIAS = "AWS::KMS::Alias"
# Every KMS action a role could be granted on a key (AWS KMS API reference, "Actions").
KEY_ACTIONS = (
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:ScheduleKeyDeletion",
    "kms:PutKeyPolicy",
)


@dataclass(frozen=True)
class KeyReview:
    res: Res
    rotation: bool
    aliases: tuple[str, ...]
    statements: tuple[DocStatement, ...]
    iam_grants: tuple[Grant, ...]  # roles' own policies allowing actions on the key
    used_by: tuple[Res, ...]  # resources whose properties name the key

    @property
    def flagged(self) -> list[DocStatement]:
        return [statement for statement in self.statements if statement.flag]


def _iam_grants(resolver: Resolver, roles: list[RoleReview], key: Target) -> list[Grant]:
    found: list[Grant] = []
    for role in roles:
        for statement in role.statements:
            actions = allowed(statement.raw, KEY_ACTIONS)
            if not actions:
                continue
            if statement.not_resource:
                raws = as_list(statement.raw.get("NotResource"))
                texts = [flatten(resolver.producer(statement.stack, r)[1]) for r in raws]
                if any(resolver.refers_to(statement.stack, r, key) for r in raws) or any(
                    arn_may_match(t, "kms", "key/") == "all" for t in texts
                ):
                    continue
                raws, texts = [None], [f"NotResource (every key but {', '.join(texts)})"]
            else:
                raws = as_list(statement.raw.get("Resource"))
                texts = [flatten(resolver.producer(statement.stack, r)[1]) for r in raws]
            for raw, text in zip(raws, texts, strict=True):
                if raw is None:
                    how = text
                elif resolver.refers_to(statement.stack, raw, key):
                    how = "names it"
                elif arn_may_match(text, "kms", "key/") in ("all", "unknown"):
                    how = f"wildcard {text}"
                else:
                    continue
                if statement.policy_name.startswith("aws-managed/"):
                    how += f" (AWS managed {statement.policy_name.split('/', 1)[1]})"
                found.append(
                    Grant(
                        principal=role.res,
                        principal_text=role.name,
                        policy=statement.policy_res,
                        actions=tuple(a.partition(":")[2] for a in actions),
                        condition=condition_text(statement.raw),
                        how=how,
                    )
                )
                break
    return found


def keys(assembly: Assembly, roles: list[RoleReview]) -> list[KeyReview]:
    resolver = Resolver(assembly)
    found: list[KeyReview] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(KMS_KEY):
            key = Target(stack, logical_id, None)
            props = resource.get("Properties") or {}
            aliases: list[str] = []
            users: list[Res] = []
            for other in assembly.stacks:
                for other_id, other_resource in other.resources.items():
                    other_props = other_resource.get("Properties") or {}
                    if other is stack and other_id == logical_id:
                        continue
                    if other_resource.get("Type") == KMS_ALIAS:
                        if resolver.refers_to(other, other_props.get("TargetKeyId"), key):
                            aliases.append(flatten(other_props.get("AliasName")))
                    elif other_resource.get("Type") not in (
                        "AWS::IAM::Policy",
                        "AWS::IAM::ManagedPolicy",
                        "AWS::IAM::Role",
                    ) and resolver.refers_to(other, other_props, key):
                        users.append(other.res(other_id))
            found.append(
                KeyReview(
                    res=key.res,
                    rotation=str(props.get("EnableKeyRotation")).lower() == "true",
                    aliases=tuple(sorted(aliases)),
                    statements=tuple(read_statements(resolver, stack, props.get("KeyPolicy"))),
                    iam_grants=tuple(_iam_grants(resolver, roles, key)),
                    used_by=tuple(sorted(users)),
                )
            )
    return found
