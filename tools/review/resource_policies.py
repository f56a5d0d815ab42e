"""Resource policies: who the buckets, queues, topics, secrets and functions let in.

Each policy resource names the resources it applies to (`Bucket`, `Queues`, `Topics`,
`SecretId`; a Lambda permission is one statement on one function). A statement that allows
anyone or a service principal without a condition is highlighted (`DocStatement.flag`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.policy import DocStatement, Principal, as_list, read_statements
from tools.review.refs import Resolver, flatten

# policy resource type -> (property naming what it applies to, property holding the document)
POLICY_TYPES = {
    "AWS::S3::BucketPolicy": ("Bucket", "PolicyDocument"),
    "AWS::SQS::QueuePolicy": ("Queues", "PolicyDocument"),
    "AWS::SNS::TopicPolicy": ("Topics", "PolicyDocument"),
    "AWS::SecretsManager::ResourcePolicy": ("SecretId", "ResourcePolicy"),
}
LAMBDA_PERMISSION = "AWS::Lambda::Permission"


@dataclass(frozen=True)
class ResourcePolicy:
    policy: Res
    applies_to: tuple[Res, ...]
    unresolved_targets: tuple[str, ...]  # targets outside the templates, flattened
    statements: tuple[DocStatement, ...]

    @property
    def flagged(self) -> list[DocStatement]:
        return [statement for statement in self.statements if statement.flag]


def _targets(resolver: Resolver, stack: StackTemplate, value: Json) -> tuple[list[Res], list[str]]:
    found: list[Res] = []
    other: list[str] = []
    for item in as_list(value):
        target = resolver.target(stack, item)
        if target is not None:
            found.append(target.res)
        else:
            other.append(flatten(resolver.producer(stack, item)[1]))
    return found, other


def _permission(resolver: Resolver, stack: StackTemplate, props: dict[str, Json]) -> DocStatement:
    """A Lambda permission as the one statement it adds to the function's policy."""
    raw = props.get("Principal")
    target = resolver.target(stack, raw)
    text = flatten(resolver.producer(stack, raw)[1])
    kind = "Service" if text.endswith(".amazonaws.com") else "AWS"
    conditions = [
        f"{key}={flatten(props[key])}"
        for key in ("SourceArn", "SourceAccount", "PrincipalOrgID", "FunctionUrlAuthType")
        # `FunctionUrlAuthType: NONE` restricts nothing: it is the URL without authentication
        if props.get(key) is not None
        and not (key == "FunctionUrlAuthType" and flatten(props[key]) == "NONE")
    ]
    return DocStatement(
        sid="",
        effect="Allow",
        principals=(Principal("*" if text == "*" else kind, text, target.res if target else None),),
        actions=(flatten(props.get("Action")),),
        not_action=False,
        resources=(flatten(props.get("FunctionName")),),
        condition="; ".join(conditions),
    )


def resource_policies(assembly: Assembly) -> list[ResourcePolicy]:
    resolver = Resolver(assembly)
    found: list[ResourcePolicy] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources.items():
            kind = resource.get("Type")
            props = resource.get("Properties") or {}
            if kind in POLICY_TYPES:
                target_key, document_key = POLICY_TYPES[str(kind)]
                targets, other = _targets(resolver, stack, props.get(target_key))
                statements = read_statements(resolver, stack, props.get(document_key))
            elif kind == LAMBDA_PERMISSION:
                targets, other = _targets(resolver, stack, props.get("FunctionName"))
                statements = [_permission(resolver, stack, props)]
            else:
                continue
            found.append(
                ResourcePolicy(
                    policy=stack.res(logical_id),
                    applies_to=tuple(targets),
                    unresolved_targets=tuple(other),
                    statements=tuple(statements),
                )
            )
    return found
