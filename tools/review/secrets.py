"""Secrets: each Secrets Manager secret, who can read or write it, and where it is injected.

A reader (writer) is a role whose policy allows a read (write) action on a resource that names
the secret — through Ref, GetAtt, a Join around them, a cross-stack import, or the output of a
custom resource that echoes the secret's ARN (the Consul token resources do) — or on a wildcard
that may match it, or a principal the secret's resource policy allows. A resource the review
cannot resolve is an *unresolved* access of its role, listed apart: never "no reader".

Injection points are ECS container `Secrets`, Lambda environment variables holding its ARN,
and any other property that names it; `{{resolve:secretsmanager:...}}` dynamic references are
listed apart because CloudFormation puts the secret's value into the resource itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tools.review.encryption import key_label, key_of
from tools.review.iam import RoleReview, Statement
from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.policy import (
    Grant,
    Principal,
    allowed,
    arn_may_match,
    as_list,
    condition_text,
    principals,
    statements,
)
from tools.review.refs import Resolver, Target, flatten

SECRET_TYPE = "AWS::SecretsManager::Secret"  # noqa: S105 (a resource type)
RESOURCE_POLICY = "AWS::SecretsManager::ResourcePolicy"
DYNAMIC_REFERENCE = "{{resolve:secretsmanager:"
# Secrets Manager API reference, "Actions": reading the value, and every action that changes
# the value, which version is current, or who may read it.
READ_ACTIONS = ("secretsmanager:GetSecretValue",)
WRITE_ACTIONS = (
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecret",
    "secretsmanager:UpdateSecretVersionStage",
    "secretsmanager:RotateSecret",
    "secretsmanager:RestoreSecret",
    "secretsmanager:DeleteSecret",
    "secretsmanager:PutResourcePolicy",
    "secretsmanager:DeleteResourcePolicy",
    # copies the value into another Region, under a key the caller picks
    "secretsmanager:ReplicateSecretToRegions",
    # tags decide access only where policies use ABAC (aws:ResourceTag/secretsmanager:
    # ResourceTag conditions); listed so that such a policy is never silently widened
    "secretsmanager:TagResource",
    "secretsmanager:UntagResource",
)
NOT_EVALUATED = "not evaluated"
_NOT_INJECTION = {
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
    "AWS::IAM::Role",
    RESOURCE_POLICY,
    "AWS::SecretsManager::RotationSchedule",
    "AWS::SecretsManager::SecretTargetAttachment",
}


# A principal allowed some of READ_ACTIONS / WRITE_ACTIONS on one secret.
Access = Grant


@dataclass(frozen=True)
class Unresolved:
    """A read or write allowed on a resource value the review cannot resolve to a secret."""

    principal: Res | None
    principal_text: str
    policy: Res
    actions: tuple[str, ...]
    value: str  # the resource as cdk-nag flattens it
    why: tuple[str, ...]


@dataclass(frozen=True)
class Injection:
    where: Res
    kind: str  # ecs-secret, lambda-environment, property
    detail: str  # container and variable, variable, or property path
    via: tuple[str, ...] = ()  # custom resource outputs the reference went through


@dataclass(frozen=True)
class SecretReview:
    res: Res
    description: str
    key: str  # Markdown label of the KMS key
    key_res: Res | None  # the customer-managed key, None for an AWS managed key
    rotation: str
    readers: list[Access]
    writers: list[Access]
    injections: list[Injection]

    @property
    def stack(self) -> str:
        return self.res.stack

    @property
    def label(self) -> str:
        return self.res.markdown()


@dataclass(frozen=True)
class DynamicReference:
    """`{{resolve:secretsmanager:...}}` in a property: the secret's value is in the resource."""

    where: Res
    path: str

    def markdown(self) -> str:
        return f"{self.where.markdown()} at `{self.path}`"


@dataclass(frozen=True)
class Secrets:
    secrets: list[SecretReview]
    dynamic_references: list[DynamicReference]
    unresolved: list[Unresolved] = field(default_factory=list)


@dataclass(frozen=True)
class _Grant:
    """One statement's secret actions, from a role policy or a secret's resource policy."""

    principal: Res | None
    principal_text: str
    policy: Res
    stack: StackTemplate
    resources: list[Json]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    condition: str
    resource_policy_of: Target | None = None
    not_resource: bool = False
    managed: str = ""  # the AWS managed policy (pinned copy) the statement comes from


def _short(actions: list[str]) -> tuple[str, ...]:
    return tuple(action.partition(":")[2] for action in actions)


def _role_grants(roles: list[RoleReview]) -> Iterator[_Grant]:
    for role in roles:
        for statement in role.statements:
            reads, writes = _actions(statement.raw)
            if reads or writes:
                yield _grant(role, statement, reads, writes)


def _grant(
    role: RoleReview, statement: Statement, reads: tuple[str, ...], writes: tuple[str, ...]
) -> _Grant:
    return _Grant(
        principal=role.res,
        principal_text=role.name,
        policy=statement.policy_res,
        stack=statement.stack,
        resources=as_list(statement.raw.get("NotResource", statement.raw.get("Resource"))),
        reads=reads,
        writes=writes,
        condition=condition_text(statement.raw),
        not_resource=statement.not_resource,
        managed=statement.policy_name.removeprefix("aws-managed/")
        if statement.policy_name.startswith("aws-managed/")
        else "",
    )


def _actions(statement: dict[str, Json]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return _short(allowed(statement, READ_ACTIONS)), _short(allowed(statement, WRITE_ACTIONS))


def _policy_grants(resolver: Resolver) -> Iterator[_Grant]:
    for stack in resolver.assembly.stacks:
        for logical_id, resource in stack.resources_of(RESOURCE_POLICY):
            props = resource.get("Properties") or {}
            secret = resolver.target(stack, props.get("SecretId"))
            for statement in statements(props.get("ResourcePolicy")):
                reads, writes = _actions(statement)
                if not (reads or writes):
                    continue
                for principal in principals(resolver, stack, statement) or [Principal("*", "?")]:
                    yield _Grant(
                        principal=principal.res,
                        principal_text=principal.text(),
                        policy=stack.res(logical_id),
                        stack=stack,
                        resources=[props.get("SecretId")],
                        reads=reads,
                        writes=writes,
                        condition=condition_text(statement),
                        resource_policy_of=secret,
                    )


def _secret_name(secret: Target) -> str:
    """The name a template gives the secret ('' when CloudFormation generates it)."""
    name = secret.properties.get("Name")
    return f"{name}-AbCdEf" if isinstance(name, str) else ""


@dataclass
class _Ledger:
    readers: dict[tuple[str, str], list[Access]] = field(default_factory=dict)
    writers: dict[tuple[str, str], list[Access]] = field(default_factory=dict)
    unresolved: list[Unresolved] = field(default_factory=list)

    def add(self, grant: _Grant, secret: Res, how: str) -> None:
        key = (secret.stack, secret.logical_id)
        if grant.managed:
            how += f" (AWS managed {grant.managed}, pinned copy)"
        for actions, book in ((grant.reads, self.readers), (grant.writes, self.writers)):
            if actions:
                book.setdefault(key, []).append(
                    Access(
                        principal=grant.principal,
                        principal_text=grant.principal_text,
                        policy=grant.policy,
                        actions=actions,
                        how=how,
                        condition=grant.condition,
                    )
                )

    def unresolved_grant(self, grant: _Grant, text: str, why: tuple[str, ...]) -> None:
        self.unresolved.append(
            Unresolved(
                principal=grant.principal,
                principal_text=grant.principal_text,
                policy=grant.policy,
                actions=grant.reads + grant.writes,
                value=text,
                why=why,
            )
        )


_GENERATED = (
    "a pattern the review cannot match against the secrets' names, which CloudFormation "
    "generates at deploy"
)
_NOT_NAMED = "a secret ARN no template of this assembly names (another stack's, or created by hand)"


def _not_resource(
    resolver: Resolver, ledger: _Ledger, grant: _Grant, secrets: list[Target]
) -> None:
    """NotResource: every secret except those the statement names (or its patterns match)."""
    excluded: set[tuple[str, str]] = set()
    texts: list[str] = []
    for raw in grant.resources:
        for target in resolver.mentions(grant.stack, raw).targets:
            excluded.add((target.stack.name, target.logical_id))
        texts.append(flatten(resolver.producer(grant.stack, raw)[1]))
    for secret in secrets:
        key = (secret.stack.name, secret.logical_id)
        if key in excluded or any(
            arn_may_match(text, "secretsmanager", "secret:", _secret_name(secret))
            in ("all", "name")
            for text in texts
        ):
            continue
        ledger.add(grant, secret.res, f"NotResource (every secret but {', '.join(texts)})")


def _ledger(resolver: Resolver, grants: list[_Grant], secrets: list[Target]) -> _Ledger:
    ledger = _Ledger()
    for grant in grants:
        if grant.not_resource:
            _not_resource(resolver, ledger, grant, secrets)
            continue
        for raw in grant.resources:
            mentions = resolver.mentions(grant.stack, raw)
            named = [t for t in mentions.targets if t.type == SECRET_TYPE]
            for target in named:
                how = "resource policy" if grant.resource_policy_of else "names it"
                if target.via:
                    how += " via " + ", ".join(target.via)
                ledger.add(grant, target.res, how)
            text = flatten(resolver.producer(grant.stack, raw)[1])
            if named:
                continue
            found = [
                (secret, arn_may_match(text, "secretsmanager", "secret:", _secret_name(secret)))
                for secret in secrets
            ]
            matched = [secret for secret, how in found if how in ("all", "name")]
            for secret in matched:
                ledger.add(grant, secret.res, f"wildcard {text}")
            if matched:
                continue
            if mentions.unresolved:
                ledger.unresolved_grant(grant, text, tuple(mentions.unresolved))
            elif any(how == "unknown" for _, how in found):
                ledger.unresolved_grant(grant, text, (_GENERATED,))
            elif not mentions.targets and "secretsmanager" in text:
                ledger.unresolved_grant(grant, text, (_NOT_NAMED,))
    return ledger


def _not_evaluated(roles: list[RoleReview], secrets: list[Target], ledger: _Ledger) -> None:
    """A role with a managed policy the review cannot read may read and write every secret."""
    for role in roles:
        for policy in role.not_evaluated:
            for secret in secrets:
                for book, actions in ((ledger.readers, READ_ACTIONS), (ledger.writers, ())):
                    book.setdefault((secret.stack.name, secret.logical_id), []).append(
                        Access(
                            principal=role.res,
                            principal_text=role.name,
                            policy=role.res or secret.res,
                            actions=_short(list(actions)) or ("?",),
                            how=f"{NOT_EVALUATED}: managed policy {policy.name}",
                        )
                    )


def _property_paths(
    resolver: Resolver, stack: StackTemplate, value: Json, secret: Target, path: str
) -> Iterator[tuple[str, Target]]:
    if isinstance(value, dict):
        if any(key == "Ref" or key.startswith("Fn::") for key in value):
            found = resolver.naming(stack, value, secret)
            if found is not None:
                yield path, found
            return
        for key, item in value.items():
            yield from _property_paths(resolver, stack, item, secret, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _property_paths(resolver, stack, item, secret, f"{path}[{index}]")


def _injections(resolver: Resolver, secret: Target) -> list[Injection]:
    found: list[Injection] = []
    for stack in resolver.assembly.stacks:
        for logical_id, resource in stack.resources.items():
            kind = resource.get("Type", "")
            props = resource.get("Properties") or {}
            if kind in _NOT_INJECTION or (
                stack is secret.stack and logical_id == secret.logical_id
            ):
                continue
            where = stack.res(logical_id)
            if kind == "AWS::ECS::TaskDefinition":
                for container in props.get("ContainerDefinitions") or []:
                    for entry in container.get("Secrets") or []:
                        hit = resolver.naming(stack, entry.get("ValueFrom"), secret)
                        if hit is not None:
                            detail = (
                                f"container {flatten(container.get('Name'))}, "
                                f"environment {flatten(entry.get('Name'))}"
                            )
                            found.append(Injection(where, "ecs-secret", detail, hit.via))
                continue
            if kind == "AWS::Lambda::Function":
                variables = (props.get("Environment") or {}).get("Variables") or {}
                for name, value in variables.items():
                    hit = resolver.naming(stack, value, secret)
                    if hit is not None:
                        found.append(
                            Injection(where, "lambda-environment", f"{name} (its ARN)", hit.via)
                        )
                continue
            for path, hit in _property_paths(resolver, stack, props, secret, "Properties"):
                found.append(Injection(where, "property", path, hit.via))
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


def _dynamic_references(assembly: Assembly) -> list[DynamicReference]:
    found: list[DynamicReference] = []

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
                found.append(DynamicReference(stack.res(logical_id), path))
    return found


def secrets(assembly: Assembly, roles: list[RoleReview]) -> Secrets:
    resolver = Resolver(assembly)
    targets = [
        Target(stack, logical_id, None)
        for stack in assembly.stacks
        for logical_id, _ in stack.resources_of(SECRET_TYPE)
    ]
    ledger = _ledger(resolver, [*_role_grants(roles), *_policy_grants(resolver)], targets)
    _not_evaluated(roles, targets, ledger)
    found: list[SecretReview] = []
    for target in targets:
        props = target.properties
        key = (target.stack.name, target.logical_id)
        found.append(
            SecretReview(
                res=target.res,
                description=str(props.get("Description") or ""),
                key=key_label(resolver, target.stack, props.get("KmsKeyId"))
                or "AWS managed key `aws/secretsmanager`",
                key_res=key_of(resolver, target.stack, props.get("KmsKeyId"))[0],
                rotation=_rotation(resolver, target),
                readers=ledger.readers.get(key, []),
                writers=ledger.writers.get(key, []),
                injections=_injections(resolver, target),
            )
        )
    return Secrets(found, _dynamic_references(assembly), ledger.unresolved)
