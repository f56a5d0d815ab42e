"""A small IAM evaluator for the synthesized template: does this role's policy allow a request?

Enough of IAM's rules to answer the questions the tests ask (Allow statements only, the stack
has no Deny in identity policies): action and resource patterns with `*`/`?`, and the
condition operators the stack uses (StringEquals, StringLike, ArnEquals, ArnLike). A request
names its action, the resource ARN IAM evaluates it against and its condition context. Tokens
(`{"Ref": ...}`, `Fn::Join`, `Fn::GetAtt`) are rendered as `<LogicalId>` / `<LogicalId.Attr>` on
both sides, so a test builds request ARNs with `render` from the same template values; pseudo
parameters render as the default app deploys them (`PSEUDO`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any

# What the pseudo parameters resolve to when the default app (cdk.json: us-east-1) deploys.
PSEUDO = {"AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::AccountId": "111111111111"}


def render(value: Any) -> str:
    """A CloudFormation value as text: `Ref X` -> `<X>`, `GetAtt X.A` -> `<X.A>`, joins joined;
    pseudo parameters as deployed (PSEUDO)."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return PSEUDO.get(value["Ref"], f"<{value['Ref']}>")
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(render(part) for part in parts)
    if "Fn::Sub" in value:
        text = str(value["Fn::Sub"])
        for name, resolved in PSEUDO.items():
            text = text.replace("${" + name + "}", resolved)
        return text
    raise ValueError(f"cannot render {value!r}")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    regex = fnmatch.translate(pattern)
    return re.match(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, checks in condition.items():
        for key, wanted in checks.items():
            actual = context.get(key)
            if actual is None:
                return False
            values = [render(w) for w in _as_list(wanted)]
            if operator in ("StringEquals", "ArnEquals"):
                ok = actual in values
            elif operator in ("StringLike", "ArnLike"):
                ok = any(_matches(v, actual) for v in values)
            else:
                raise ValueError(f"operator {operator} is not modelled")
            if not ok:
                return False
    return True


def role_statements(template: Mapping[str, Any], role_logical_id: str) -> list[dict[str, Any]]:
    """Every statement of every AWS::IAM::Policy attached to the role."""
    statements: list[dict[str, Any]] = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        if {"Ref": role_logical_id} in resource["Properties"].get("Roles", []):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def allows(
    statements: list[dict[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
) -> bool:
    """Whether an Allow statement covers `action` on `resource` with this condition context."""
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        if not any(_matches(a, action, ignore_case=True) for a in _as_list(statement["Action"])):
            continue
        if not any(_matches(render(r), resource) for r in _as_list(statement["Resource"])):
            continue
        if _condition_holds(statement.get("Condition", {}), context or {}):
            return True
    return False


def function_role(template: Mapping[str, Any], handler: str) -> str:
    """Logical ID of the role of the (single) Lambda function with this handler."""
    (role,) = [
        r["Properties"]["Role"]["Fn::GetAtt"][0]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler
    ]
    return str(role)
