"""What makes a policy statement broad, judged on review.json facts: wildcards, privilege
escalation, conditions.

Used by the diff (`compare_access`) to decide whether an added or changed Allow statement
broadens access, independently of cdk-nag: a cdk-nag IAM5 finding id is per policy and value
(`Resource::*`), so an acknowledgement written for one statement silently covers any later
statement with the same value. The diff therefore judges the statement itself:

- a wildcard statement: an action or resource containing `*` or `?`, or `NotAction` /
  `NotResource` (IAM User Guide, "IAM JSON policy elements": `*` and `?` match in actions and
  ARNs; NotAction/NotResource allow everything they do not list);
- a privilege-escalation-capable action on any resource (ESCALATION below);
- a condition removed or weakened: a condition key that was there and is gone, or a key whose
  allowed values grew (an Allow's condition only ever restricts it).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from typing import Any

Facts = dict[str, Any]

# Actions that let a principal raise its own privileges or run code as someone else, on any
# resource: the classes the review of issues 18/14 listed (PassRole, policy edits, role
# creation and trust edits, SSM command/session, Lambda code, AssumeRole, KMS grants, secret
# resource policies, security group rules), completed with the other members of each class
# (e.g. every `iam:*Policy*` edit, Lambda configuration/layers, ECS exec, EC2 user data).
ESCALATION = (
    "iam:PassRole",
    "iam:*Policy*",
    "iam:*PermissionsBoundary*",
    "iam:CreateRole",
    "iam:UpdateAssumeRolePolicy",
    "iam:CreateAccessKey",
    "iam:CreateLoginProfile",
    "iam:UpdateLoginProfile",
    "iam:AddUserToGroup",
    "sts:AssumeRole",
    "ssm:SendCommand",
    "ssm:StartSession",
    "ssm:CreateAssociation",
    "ssm:StartAutomationExecution",
    "lambda:UpdateFunctionCode",
    "lambda:UpdateFunctionConfiguration",
    "lambda:CreateFunction",
    "lambda:AddPermission",
    "kms:CreateGrant",
    "kms:PutKeyPolicy",
    "secretsmanager:PutResourcePolicy",
    "ec2:AuthorizeSecurityGroup*",
    "ec2:ModifyInstanceAttribute",
    "ecs:ExecuteCommand",
    "ecs:RegisterTaskDefinition",
    "s3:PutBucketPolicy",
)
# A concrete member of each pattern, so a statement's own wildcard (`iam:*`, `*`) is tested
# against something it would really grant.
_ESCALATION_SAMPLES = {
    "iam:*Policy*": ("iam:PutRolePolicy", "iam:AttachRolePolicy", "iam:CreatePolicyVersion"),
    "iam:*PermissionsBoundary*": ("iam:DeleteRolePermissionsBoundary",),
    "ec2:AuthorizeSecurityGroup*": ("ec2:AuthorizeSecurityGroupIngress",),
}


def is_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def wildcard_parts(statement: Facts) -> list[str]:
    """The parts that make a statement a wildcard statement (empty: none)."""
    parts: list[str] = []
    if statement.get("not_action"):
        parts.append("NotAction " + ",".join(statement.get("actions") or []))
    else:
        parts += [a for a in statement.get("actions") or [] if is_wildcard(a)]
    if statement.get("not_resource"):
        parts.append("NotResource " + ",".join(statement.get("resources") or []))
    else:
        parts += [r for r in statement.get("resources") or [] if is_wildcard(r)]
    return parts


def _matches(action: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in patterns)


def escalations(statement: Facts) -> list[str]:
    """The escalation-capable actions (ESCALATION entries) an Allow statement grants."""
    if statement.get("effect") != "Allow":
        return []
    actions = [str(a) for a in statement.get("actions") or []]
    found: list[str] = []
    for entry in ESCALATION:
        samples = _ESCALATION_SAMPLES.get(entry, (entry,))
        granted = any(_matches(sample, actions) for sample in samples) or any(
            fnmatch.fnmatchcase(action.lower(), entry.lower()) for action in actions
        )
        if statement.get("not_action"):
            granted = not all(_matches(sample, actions) for sample in samples)
        if granted:
            found.append(entry)
    return found


# --- conditions -----------------------------------------------------------------------------


def condition_pairs(condition: Any) -> dict[tuple[str, str], frozenset[str]]:
    """`{(operator, key): values}` from a condition as review.json holds it: the JSON text of
    an IAM statement's Condition, the `Operator key=v1,v2; ...` text of key, resource and
    secret-grant conditions, or a dict."""
    if isinstance(condition, str) and condition.strip().startswith("{"):
        try:
            condition = json.loads(condition)
        except json.JSONDecodeError:
            return {("?", condition): frozenset()}
    if isinstance(condition, dict):
        pairs: dict[tuple[str, str], frozenset[str]] = {}
        for operator, keys in condition.items():
            if not isinstance(keys, dict):
                pairs[(str(operator), "")] = frozenset([json.dumps(keys, sort_keys=True)])
                continue
            for key, values in keys.items():
                listed = values if isinstance(values, list) else [values]
                pairs[(str(operator), str(key).lower())] = frozenset(
                    json.dumps(v, sort_keys=True) for v in listed
                )
        return pairs
    found: dict[tuple[str, str], frozenset[str]] = {}
    for part in str(condition or "").split("; "):
        if not part.strip():
            continue
        operator, _, rest = part.partition(" ")
        key, _, values = rest.partition("=")
        found[(operator, key.lower())] = frozenset(values.split(","))
    return found


def condition_weakened(was: Any, now: Any) -> list[str]:
    """What an Allow's condition lost: keys removed, or keys whose values grew ([]: none)."""
    before, after = condition_pairs(was), condition_pairs(now)
    lost: list[str] = []
    for (operator, key), values in sorted(before.items()):
        name = f"{operator} {key}".strip()
        if (operator, key) not in after:
            lost.append(f"lost {name}")
        elif not after[(operator, key)] <= values:
            lost.append(f"{name} allows more values")
    return lost


def narrowing(was: Facts, now: Facts) -> bool:
    """True when `now` grants a subset of what `was` granted: fewer actions or resources, the
    same negations, a condition at least as strict."""
    same_negation = bool(was.get("not_action")) == bool(now.get("not_action")) and bool(
        was.get("not_resource")
    ) == bool(now.get("not_resource"))
    if not same_negation or was.get("effect") != now.get("effect"):
        return False
    inner = "not_action", "not_resource"
    fewer_actions = set(now.get("actions") or []) <= set(was.get("actions") or [])
    fewer_resources = set(now.get("resources") or []) <= set(was.get("resources") or [])
    if now.get(inner[0]):
        fewer_actions = set(now.get("actions") or []) >= set(was.get("actions") or [])
    if now.get(inner[1]):
        fewer_resources = set(now.get("resources") or []) >= set(was.get("resources") or [])
    return (
        fewer_actions
        and fewer_resources
        and not condition_weakened(was.get("condition"), now.get("condition"))
    )
