"""Secrets: each Secrets Manager secret, who can read it and where its value is injected.

A reader is a role whose policy allows `secretsmanager:GetSecretValue` on a resource that
names the secret (through Ref, GetAtt, a Join around them or a cross-stack import) or on a
wildcard that may match it, or a principal the secret's resource policy allows. Injection
points are ECS container `Secrets`, Lambda environment variables holding its ARN, and any
other property that names it; `{{resolve:secretsmanager:...}}` dynamic references are listed
apart because CloudFormation puts the secret's value into the resource itself.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass

from tools.review.encryption import key_label
from tools.review.iam import RoleReview, Statement
from tools.review.load import Assembly, Json, StackTemplate
from tools.review.refs import Resolver, Target, flatten

READ_ACTION = "secretsmanager:getsecretvalue"
DYNAMIC_REFERENCE = "{{resolve:secretsmanager:"
_NOT_INJECTION = {
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
    "AWS::IAM::Role",
    "AWS::SecretsManager::ResourcePolicy",
    "AWS::SecretsManager::RotationSchedule",
    "AWS::SecretsManager::SecretTargetAttachment",
}


@dataclass(frozen=True)
class Reader:
    principal: str
    policy: str
    how: str


@dataclass(frozen=True)
class SecretReview:
    stack: str
    label: str
    key: str
    rotation: str
    readers: list[Reader]
    injections: list[str]


@dataclass(frozen=True)
class Secrets:
    secrets: list[SecretReview]
    dynamic_references: list[str]  # resource label and property path of each


def _as_list(value: Json) -> list[Json]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _allows_read(statement: Statement) -> bool:
    if statement.effect != "Allow":
        return False
    matches = any(fnmatch.fnmatchcase(READ_ACTION, action.lower()) for action in statement.actions)
    return not matches if statement.not_action else matches


def _how(resolver: Resolver, statement: Statement, secret: Target) -> str | None:
    if statement.not_resource:
        return None  # rare enough to leave to the IAM section, which flags it as a wildcard
    for raw in _as_list(statement.raw.get("Resource")):
        if resolver.refers_to(statement.stack, raw, secret):
            return "names this secret"
        text = flatten(resolver.producer(statement.stack, raw)[1])
        if text == "*" or ("*" in text and "secretsmanager" in text):
            return f"wildcard resource `{text}`"
    return None


def _readers(resolver: Resolver, roles: list[RoleReview], secret: Target) -> list[Reader]:
    readers: list[Reader] = []
    for role in roles:
        for statement in role.statements:
            how = _how(resolver, statement, secret) if _allows_read(statement) else None
            if how is not None:
                readers.append(Reader(role.label, statement.policy, how))
    for stack in resolver.assembly.stacks:
        for logical_id, resource in stack.resources_of("AWS::SecretsManager::ResourcePolicy"):
            props = resource.get("Properties") or {}
            if not resolver.refers_to(stack, props.get("SecretId"), secret):
                continue
            for raw in _as_list((props.get("ResourcePolicy") or {}).get("Statement")):
                actions = [str(a).lower() for a in _as_list(raw.get("Action"))]
                if raw.get("Effect") == "Allow" and any(
                    fnmatch.fnmatchcase(READ_ACTION, action) for action in actions
                ):
                    principal = flatten(raw.get("Principal"))
                    readers.append(
                        Reader(f"`{principal}`", stack.label(logical_id), "resource policy")
                    )
    return readers


def _property_paths(
    resolver: Resolver, stack: StackTemplate, value: Json, secret: Target, path: str
) -> Iterator[str]:
    if isinstance(value, dict):
        if any(key == "Ref" or key.startswith("Fn::") for key in value):
            if resolver.refers_to(stack, value, secret):
                yield path
            return
        for key, item in value.items():
            yield from _property_paths(resolver, stack, item, secret, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _property_paths(resolver, stack, item, secret, f"{path}[{index}]")


def _injections(resolver: Resolver, secret: Target) -> list[str]:
    found: list[str] = []
    for stack in resolver.assembly.stacks:
        for logical_id, resource in stack.resources.items():
            kind = resource.get("Type", "")
            props = resource.get("Properties") or {}
            if kind in _NOT_INJECTION or (
                stack is secret.stack and logical_id == secret.logical_id
            ):
                continue
            label = stack.label(logical_id)
            if kind == "AWS::ECS::TaskDefinition":
                for container in props.get("ContainerDefinitions") or []:
                    for entry in container.get("Secrets") or []:
                        if resolver.refers_to(stack, entry.get("ValueFrom"), secret):
                            found.append(
                                f"task definition {label}, container "
                                f"`{flatten(container.get('Name'))}`, "
                                f"as environment `{flatten(entry.get('Name'))}`"
                            )
                continue
            if kind == "AWS::Lambda::Function":
                variables = (props.get("Environment") or {}).get("Variables") or {}
                for name, value in variables.items():
                    if resolver.refers_to(stack, value, secret):
                        found.append(
                            f"function {label}, environment `{name}` holds its ARN "
                            "(the function reads the value at run time)"
                        )
                continue
            for path in _property_paths(resolver, stack, props, secret, "Properties"):
                found.append(f"{label} ({kind}) at `{path}`")
    return found


def _rotation(resolver: Resolver, secret: Target) -> str:
    for stack in resolver.assembly.stacks:
        for _, resource in stack.resources_of("AWS::SecretsManager::RotationSchedule"):
            props = resource.get("Properties") or {}
            if resolver.refers_to(stack, props.get("SecretId"), secret):
                rules = props.get("RotationRules") or {}
                every = rules.get("AutomaticallyAfterDays") or rules.get("ScheduleExpression")
                return f"rotates ({flatten(every)})" if every else "rotation schedule"
    return "no rotation schedule"


def _dynamic_references(assembly: Assembly) -> list[str]:
    found: list[str] = []

    def walk(value: Json, path: str) -> Iterator[str]:
        if isinstance(value, str) and DYNAMIC_REFERENCE in value:
            yield path
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(item, f"{path}[{index}]")

    for stack in assembly.stacks:
        for logical_id, resource in stack.resources.items():
            for path in walk(resource.get("Properties"), "Properties"):
                found.append(f"{stack.label(logical_id)} at `{path}`")
    return found


def secrets(assembly: Assembly, roles: list[RoleReview]) -> Secrets:
    resolver = Resolver(assembly)
    found: list[SecretReview] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of("AWS::SecretsManager::Secret"):
            target = Target(stack, logical_id, None)
            found.append(
                SecretReview(
                    stack=stack.name,
                    label=stack.label(logical_id),
                    key=key_label(
                        resolver, stack, (resource.get("Properties") or {}).get("KmsKeyId")
                    )
                    or "AWS managed key `aws/secretsmanager`",
                    rotation=_rotation(resolver, target),
                    readers=_readers(resolver, roles, target),
                    injections=_injections(resolver, target),
                )
            )
    return Secrets(found, _dynamic_references(assembly))
