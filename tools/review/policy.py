"""Reading IAM policy documents: statements, actions, principals and conditions.

Shared by every section that reads a policy: role policies (iam), key policies (kms), resource
policies (buckets, queues, topics, secrets) and the secrets' readers and writers. Matching
follows IAM's rules for what the template can show: actions are case-insensitive and `*`/`?`
wildcards match (IAM User Guide, "IAM JSON policy elements: Action"); `NotAction` allows
every action it does not list.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tools.review.load import Json, StackTemplate
from tools.review.model import Res
from tools.review.refs import Resolver, flatten

_ROOT = re.compile(r"^arn:[^:]+:iam::(.+):root$")


def as_list(value: Json) -> list[Json]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def statements(document: Json) -> list[dict[str, Json]]:
    """The statements of a policy document (a single statement object counts as one)."""
    found = as_list((document or {}).get("Statement") if isinstance(document, dict) else None)
    return [statement for statement in found if isinstance(statement, dict)]


def allowed(statement: dict[str, Json], candidates: Iterable[str]) -> list[str]:
    """The `candidates` (e.g. `secretsmanager:GetSecretValue`) an Allow statement grants."""
    if statement.get("Effect") != "Allow":
        return []
    negated = "NotAction" in statement
    patterns = [
        flatten(a).lower() for a in as_list(statement.get("NotAction" if negated else "Action"))
    ]
    return [
        action
        for action in candidates
        if any(fnmatch.fnmatchcase(action.lower(), pattern) for pattern in patterns) != negated
    ]


_TOKEN = re.compile(r"<AWS::[^<>]*>")  # pseudo parameters; `<Resource.Arn>` stays literal
_SAMPLE_NAMES = ("\x01qz-AbCdEf", "\x02wy.7x-123456")  # names no real pattern spells out


def arn_may_match(pattern: str, service: str, resource: str, name: str = "") -> str:
    """Whether an IAM resource pattern (as cdk-nag flattens it) can match a resource of
    `service` whose ARN resource part is `resource` + a name, e.g. `secret:` + name:

    - `"all"`: it matches whatever the name (`*`, `arn:*:secretsmanager:*`, `...:secret:*`);
    - `"name"`: it matches the resource's literal `name` (when the template gives one);
    - `"unknown"`: it might match a name the review cannot know (generated at deploy);
    - `""`: it cannot match (another service, or no wildcard and not this resource).

    Region and account are unknown before deploy, so any value there may match; intrinsics
    (`<AWS::Region>`) match anything; a reference to another resource (`<Queue.Arn>`) does
    not. `*` and `?` match as in IAM (IAM User Guide, "IAM JSON policy elements: Resource").
    """
    text = _TOKEN.sub("*", pattern)
    fields = text.split(":", 5)
    if len(fields) == 6:
        fields[3] = "*" if fields[3] else ""
        fields[4] = "*" if fields[4] else ""
        text = ":".join(fields)
    base = f"arn:aws:{service}:us-east-1:123456789012:{resource}"
    if all(fnmatch.fnmatchcase(base + sample, text) for sample in _SAMPLE_NAMES):
        return "all"
    if name and fnmatch.fnmatchcase(base + name, text):
        return "name"
    if len(fields) == 6 and ("*" in fields[5] or "?" in fields[5]):
        service_ok = fnmatch.fnmatchcase(service, fields[2])
        prefix = resource.rstrip(":/")
        if service_ok and fnmatch.fnmatchcase(prefix, fields[5][: len(prefix)]):
            return "unknown"
    return ""


def condition_text(statement: dict[str, Json]) -> str:
    """`Operator key=value; ...` with intrinsics flattened; '' without a condition."""
    condition = statement.get("Condition")
    if not isinstance(condition, dict):
        return ""
    parts: list[str] = []
    for operator, pairs in sorted(condition.items()):
        if not isinstance(pairs, dict):
            parts.append(f"{operator} {flatten(pairs)}")
            continue
        for key, value in sorted(pairs.items()):
            values = ",".join(flatten(v) for v in as_list(value))
            parts.append(f"{operator} {key}={values}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Grant:
    """A principal allowed some actions on one resource, and how the review knows it."""

    principal: Res | None  # the role (or resolved policy principal), None outside the templates
    principal_text: str  # how a principal outside the templates is named
    policy: Res  # the policy resource (or the role, for inline policies)
    actions: tuple[str, ...]  # the matched actions, without their service prefix
    how: str  # "names it", "names it via Token.TokenSecretArn", "wildcard *", ...
    condition: str = ""

    @property
    def wildcard(self) -> bool:
        return self.how.startswith("wildcard")


@dataclass(frozen=True, order=True)
class Principal:
    """One principal of a statement: its kind, its flattened value, the role it resolves to."""

    kind: str  # AWS, Service, Federated, CanonicalUser, or * for "Principal": "*"
    value: str
    res: Res | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "Service"

    @property
    def account(self) -> str:
        """The account whose IAM decides, for an account (root) principal; '' otherwise."""
        if self.kind != "AWS":
            return ""
        if self.value.isdigit() or self.value == "<AWS::AccountId>":
            return self.value
        found = _ROOT.match(self.value)  # the account may be `<AWS::AccountId>`, colons and all
        return found.group(1) if found else ""

    @property
    def is_anyone(self) -> bool:
        return self.value == "*"

    def text(self) -> str:
        """Plain text: a role by logical ID, a service by name, an account spelled out."""
        if self.res is not None:
            return self.res.logical_id
        if self.is_anyone:
            return "anyone (*)"
        if self.account == "<AWS::AccountId>":
            return "this account (IAM policies decide)"
        if self.account:
            return f"account {self.account} (its IAM policies decide)"
        return f"{self.kind} {self.value}"

    def json(self) -> dict[str, Json]:
        return {
            "kind": self.kind,
            "value": self.value,
            "resource": self.res.json() if self.res else None,
        }


def principals(
    resolver: Resolver, stack: StackTemplate, statement: dict[str, Json]
) -> list[Principal]:
    """Every principal a statement names (empty for identity policies, which have none)."""
    raw = statement.get("Principal")
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [Principal("*", flatten(raw))]
    found: list[Principal] = []
    for kind, values in raw.items():
        for value in as_list(values):
            target = resolver.target(stack, value)
            res = target.res if target is not None else None
            found.append(Principal(str(kind), flatten(resolver.producer(stack, value)[1]), res))
    return sorted(found)


@dataclass(frozen=True)
class DocStatement:
    """One statement of a key or resource policy, with the principals it names resolved."""

    sid: str
    effect: str
    principals: tuple[Principal, ...]
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    condition: str

    @property
    def flag(self) -> str:
        """Why a reviewer should look twice, or ''."""
        if self.effect != "Allow" or self.condition:
            return ""
        if any(principal.is_anyone for principal in self.principals):
            return "anyone, without a condition"
        if any(principal.is_service for principal in self.principals):
            return "service principal without a condition (any use of that service qualifies)"
        return ""

    def json(self) -> dict[str, Json]:
        return {
            "sid": self.sid,
            "effect": self.effect,
            "principals": [principal.json() for principal in self.principals],
            "actions": list(self.actions),
            "not_action": self.not_action,
            "resources": list(self.resources),
            "condition": self.condition,
            "flag": self.flag,
        }


def read_statements(resolver: Resolver, stack: StackTemplate, document: Json) -> list[DocStatement]:
    found: list[DocStatement] = []
    for statement in statements(document):
        negated = "NotAction" in statement
        found.append(
            DocStatement(
                sid=str(statement.get("Sid", "")),
                effect=str(statement.get("Effect", "")),
                principals=tuple(principals(resolver, stack, statement)),
                actions=tuple(
                    flatten(a) for a in as_list(statement.get("NotAction" if negated else "Action"))
                ),
                not_action=negated,
                resources=tuple(
                    flatten(r)
                    for r in as_list(statement.get("Resource", statement.get("NotResource")))
                ),
                condition=condition_text(statement),
            )
        )
    return found
