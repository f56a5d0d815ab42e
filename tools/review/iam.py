"""IAM per role: who assumes it, what it may do grouped by service, and every wildcard.

Wildcards are found the way cdk-nag's AwsSolutions-IAM5 finds them (an Allow statement whose
action or flattened resource contains `*`), so each one has the finding id an
acknowledgement must name, e.g. `AwsSolutions-IAM5[Resource::<LogGroup.Arn>:*]`. A wildcard
no acknowledgement covers is flagged, whether or not a pack ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.managed_policies import ManagedPolicy, known
from tools.review.model import Res
from tools.review.nag import NAG_PACKS, AckIndex, Cover
from tools.review.refs import Resolver, Target, flatten

ROLE = "AWS::IAM::Role"
POLICY = "AWS::IAM::Policy"
MANAGED_POLICY = "AWS::IAM::ManagedPolicy"


@dataclass(frozen=True)
class Statement:
    policy: str  # Markdown label of the policy document it comes from
    policy_res: Res  # the policy resource, or the role for an inline policy
    policy_name: str  # the inline policy's name, '' for a policy resource
    effect: str
    actions_by_service: dict[str, list[str]]
    not_action: bool
    resources: list[str]  # flattened, as cdk-nag spells them
    not_resource: bool
    condition: str
    stack: StackTemplate = field(repr=False, compare=False)  # where `raw` is evaluated
    raw: Json = field(repr=False, compare=False)  # the statement as synthesized

    @property
    def actions(self) -> list[str]:
        return [action for actions in self.actions_by_service.values() for action in actions]


@dataclass(frozen=True)
class TrustStatement:
    """One statement of a role's trust policy (AssumeRolePolicyDocument), condition kept:
    `aws:SourceAccount`/`aws:SourceArn` on a service principal is the confused-deputy guard."""

    effect: str
    principals: tuple[str, ...]  # `Kind value`, e.g. `Service ssm.amazonaws.com`
    actions: tuple[str, ...]
    condition: str  # the Condition as JSON, '' without one

    def json(self) -> dict[str, Json]:
        return {
            "effect": self.effect,
            "principals": list(self.principals),
            "actions": list(self.actions),
            "condition": self.condition,
        }


@dataclass(frozen=True)
class Wildcard:
    finding: str  # e.g. "Action::s3:*", "Resource::*"
    policy: str
    path: str  # construct path cdk-nag reports the finding on
    role: Res | None  # None for a role outside the templates
    covers: list[Cover]
    open_in_report: bool
    managed: str = ""  # the AWS managed policy granting it (pinned copy), '' for the templates'

    @property
    def rule(self) -> str:
        return f"AwsSolutions-IAM5[{self.finding}]"

    @property
    def acknowledged(self) -> bool:
        return bool(self.covers) and not self.open_in_report


@dataclass(frozen=True)
class ManagedPolicyArn:
    arn: str
    covers: list[Cover]  # AwsSolutions-IAM4 acknowledgements
    evaluated: str = ""  # `AmazonSSMManagedInstanceCore v2` when its pinned copy was read
    partial: str = ""  # what the pinned copy leaves out

    @property
    def name(self) -> str:
        return self.arn.rsplit("/", 1)[-1]


@dataclass
class RoleReview:
    stack: str
    label: str
    path: str
    res: Res | None = None  # None for a role outside the templates that a policy names
    name: str = ""  # the role name as given, for a role outside the templates
    assumed_by: list[str] = field(default_factory=list)
    trust: list[TrustStatement] = field(default_factory=list)
    managed: list[ManagedPolicyArn] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    wildcards: list[Wildcard] = field(default_factory=list)
    documents: set[tuple[str, str]] = field(default_factory=set, repr=False)

    @property
    def not_evaluated(self) -> list[ManagedPolicyArn]:
        """Managed policies whose statements the review does not know: never "no access"."""
        return [policy for policy in self.managed if not policy.evaluated]

    def actions_by_service(self) -> dict[str, list[str]]:
        merged: dict[str, set[str]] = {}
        for statement in self.statements:
            if statement.effect == "Allow" and not statement.not_action:
                for service, actions in statement.actions_by_service.items():
                    merged.setdefault(service, set()).update(actions)
        return {service: sorted(merged[service]) for service in sorted(merged)}


def _as_list(value: Json) -> list[Json]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _by_service(actions: list[Json]) -> dict[str, list[str]]:
    grouped: dict[str, set[str]] = {}
    for action in actions:
        text = flatten(action)
        service, sep, _ = text.partition(":")
        grouped.setdefault(service.lower() if sep else "*", set()).add(text)
    return {service: sorted(grouped[service]) for service in sorted(grouped)}


def _wildcard_rules(finding: str) -> list[str]:
    """Rules whose acknowledgement covers this wildcard: IAM5 by finding id, and for whole
    services the packs' full-access/admin-access rules, which flag the same statement."""
    rules = [f"AwsSolutions-IAM5[{finding}]"]
    if finding.startswith(("NotAction::", "NotResource::")):
        return [*rules, "AwsSolutions-IAM5"]
    action = finding.removeprefix("Action::")
    if finding.startswith("Action::") and (action == "*" or action.endswith(":*")):
        rules += [f"{pack}-IAMPolicyNoStatementsWithFullAccess" for pack in NAG_PACKS]
        if action == "*":
            rules += [f"{pack}-IAMPolicyNoStatementsWithAdminAccess" for pack in NAG_PACKS]
    return rules


def _trust(document: Json) -> list[TrustStatement]:
    found: list[TrustStatement] = []
    for statement in _as_list((document or {}).get("Statement")):
        principal = statement.get("Principal")
        if isinstance(principal, dict):
            who = [
                f"{kind} {flatten(value)}"
                for kind, values in principal.items()
                for value in _as_list(values)
            ]
        else:
            who = [flatten(principal)]
        condition = statement.get("Condition")
        found.append(
            TrustStatement(
                effect=str(statement.get("Effect", "")),
                principals=tuple(sorted(who)),
                actions=tuple(sorted(flatten(a) for a in _as_list(statement.get("Action")))),
                condition=json.dumps(condition, sort_keys=True, separators=(",", ":"))
                if condition
                else "",
            )
        )
    return found


def _principals(document: Json) -> list[str]:
    found: list[str] = []
    for statement in _as_list((document or {}).get("Statement")):
        principal = statement.get("Principal")
        if not isinstance(principal, dict):
            found.append(f"`{flatten(principal)}`")
            continue
        for kind, values in principal.items():
            found.extend(f"{kind} `{flatten(value)}`" for value in _as_list(values))
    return sorted(set(found))


class _Collector:
    def __init__(self, assembly: Assembly, acks: AckIndex) -> None:
        self.resolver = Resolver(assembly)
        self.acks = acks
        self.roles: dict[tuple[str, str], RoleReview] = {}

    def role(self, target: Target) -> RoleReview:
        key = (target.stack.name, target.logical_id)
        if key not in self.roles:
            props = target.properties
            self.roles[key] = RoleReview(
                stack=target.stack.name,
                label=target.label(),
                path=target.path,
                res=target.res,
                assumed_by=_principals(props.get("AssumeRolePolicyDocument")),
                trust=_trust(props.get("AssumeRolePolicyDocument")),
            )
        return self.roles[key]

    def imported_role(self, stack: StackTemplate, value: Json) -> RoleReview:
        name = flatten(self.resolver.producer(stack, value)[1])
        key = ("", name)
        if key not in self.roles:
            self.roles[key] = RoleReview(
                stack="", label=f"`{name}` (not in any template)", path="", name=name
            )
        return self.roles[key]

    def add_document(
        self,
        review: RoleReview,
        *,
        stack: StackTemplate,
        policy: str,
        policy_res: Res,
        policy_name: str = "",
        path: str,
        document: Json,
        key: tuple[str, str],
        managed: ManagedPolicy | None = None,
        managed_arn: str = "",
    ) -> None:
        if key in review.documents:
            return  # a managed policy both listed by the role and naming the role
        review.documents.add(key)
        findings: list[str] = []
        for statement in _as_list((document or {}).get("Statement")):
            effect = str(statement.get("Effect", ""))
            actions = _as_list(statement.get("Action", statement.get("NotAction")))
            resources = [
                flatten(value)
                for value in _as_list(statement.get("Resource", statement.get("NotResource")))
            ]
            condition = statement.get("Condition")
            review.statements.append(
                Statement(
                    policy=policy,
                    policy_res=policy_res,
                    policy_name=policy_name,
                    effect=effect,
                    actions_by_service=_by_service(actions),
                    not_action="NotAction" in statement,
                    resources=resources,
                    not_resource="NotResource" in statement,
                    condition=json.dumps(condition, separators=(",", ":")) if condition else "",
                    stack=stack,
                    raw=statement,
                )
            )
            if effect != "Allow":
                continue
            if "NotAction" in statement:
                findings.append(f"NotAction::{','.join(flatten(a) for a in actions)}")
            else:
                findings += [f"Action::{flatten(a)}" for a in actions if "*" in flatten(a)]
            if "NotResource" in statement:
                findings.append(f"NotResource::{','.join(resources)}")
            else:
                findings += [f"Resource::{r}" for r in resources if "*" in r]
        for finding in dict.fromkeys(findings):
            # cdk-nag reports an AWS managed policy once, as IAM4, not its statements as IAM5
            rules = (
                [f"AwsSolutions-IAM4[Policy::{managed_arn}]"]
                if managed
                else _wildcard_rules(finding)
            )
            review.wildcards.append(
                Wildcard(
                    finding=finding,
                    policy=policy,
                    path=path,
                    role=review.res,
                    covers=self.acks.covering(path, rules),
                    open_in_report=self.acks.is_open(path, rules),
                    managed=f"{managed.short} {managed.version}" if managed else "",
                )
            )

    def collect_role(self, stack: StackTemplate, logical_id: str) -> None:
        target = Target(stack, logical_id, None)
        review = self.role(target)
        for inline in _as_list(target.properties.get("Policies")):
            name = flatten(inline.get("PolicyName"))
            self.add_document(
                review,
                stack=stack,
                policy=f"inline `{name}`",
                policy_res=target.res,
                policy_name=name,
                path=target.path,
                document=inline.get("PolicyDocument"),
                key=(stack.name, f"{logical_id}#{name}"),
            )
        for value in _as_list(target.properties.get("ManagedPolicyArns")):
            policy = self.resolver.target(stack, value)
            if policy is not None and policy.type == MANAGED_POLICY:
                self.add_document(
                    review,
                    stack=policy.stack,
                    policy=policy.label(stack),
                    policy_res=policy.res,
                    path=policy.path,
                    document=policy.properties.get("PolicyDocument"),
                    key=(policy.stack.name, policy.logical_id),
                )
                continue
            arn = flatten(self.resolver.producer(stack, value)[1])
            covers = self.acks.covering(target.path, [f"AwsSolutions-IAM4[Policy::{arn}]"])
            pinned = known(arn)
            if pinned is not None:
                self.add_document(
                    review,
                    stack=stack,
                    policy=f"AWS managed `{pinned.short}` ({pinned.version}, pinned copy)",
                    policy_res=target.res,
                    policy_name=f"aws-managed/{pinned.short}",
                    path=target.path,
                    document=pinned.document(),
                    key=(stack.name, f"{logical_id}#aws-managed/{pinned.short}"),
                    managed=pinned,
                    managed_arn=arn,
                )
            review.managed.append(
                ManagedPolicyArn(
                    arn,
                    covers,
                    evaluated=f"{pinned.short} {pinned.version}" if pinned else "",
                    partial=pinned.partial if pinned else "",
                )
            )

    def collect_policy(self, stack: StackTemplate, logical_id: str) -> None:
        props = stack.properties(logical_id)
        for value in _as_list(props.get("Roles")):
            found = self.resolver.target(stack, value)
            review = (
                self.role(found)
                if found is not None and found.type == ROLE
                else self.imported_role(stack, value)
            )
            self.add_document(
                review,
                stack=stack,
                policy=stack.label(logical_id),
                policy_res=Target(stack, logical_id, None).res,
                path=stack.path_of(logical_id),
                document=props.get("PolicyDocument"),
                key=(stack.name, logical_id),
            )


def roles(assembly: Assembly, acks: AckIndex) -> list[RoleReview]:
    """Every role in the templates (and roles outside them that a template's policy names)."""
    collector = _Collector(assembly, acks)
    for stack in assembly.stacks:
        for logical_id, _ in stack.resources_of(ROLE):
            collector.collect_role(stack, logical_id)
    for stack in assembly.stacks:
        for logical_id, _ in stack.resources_of(POLICY, MANAGED_POLICY):
            collector.collect_policy(stack, logical_id)
    return list(collector.roles.values())
