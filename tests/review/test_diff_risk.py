"""The diff judges an IAM statement by itself, not by which cdk-nag finding id it raises.

GIVEN the mini app of test_diff.py whose role also holds an acknowledged `*` statement (the
X-Ray writes every Lambda role has, acknowledged as `AwsSolutions-IAM5[Resource::*]`)
WHEN a change adds or widens a statement, or removes a condition
THEN the change is broadening, and says why: a wildcard statement not in the baseline (and that
the acknowledgement it shelters under was written for another statement), a
privilege-escalation action, a resource widened to `*`, a condition lost — in identity, trust,
key and secret grants alike. A narrowing change is not broadening.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.review.builder import allow, getatt, ref
from tests.review.test_diff import BASE_ACKS, Template, _base, _one, _props, _review
from tools.review.compare import Change
from tools.review.diff import diff

XRAY = allow(["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "*")
ACKS = {
    **BASE_ACKS,
    "App/Role": {
        "AwsSolutions::AwsSolutions-IAM5[Resource::*]": "X-Ray writes support no resource ARN"
    },
}


def _risk_base() -> Template:
    template = _base()
    statements = _props(template, "RolePolicy")["PolicyDocument"]["Statement"]
    statements.append(copy.deepcopy(XRAY))
    statements[0]["Condition"] = {"StringEquals": {"aws:PrincipalTag/team": "mesh"}}
    trust = _props(template, "Role")["AssumeRolePolicyDocument"]["Statement"][0]
    trust["Condition"] = {"StringEquals": {"aws:SourceAccount": "111111111111"}}
    _props(template, "Key")["KeyPolicy"]["Statement"].append(
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": "sqs.us-east-1.amazonaws.com"}},
        }
    )
    return template


@pytest.fixture(scope="module")
def risk_base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _review(tmp_path_factory.mktemp("risk-base"), _risk_base(), ACKS)


def _changes(base: dict[str, Any], tmp_path: Path, edit: Any) -> list[Change]:
    template = _risk_base()
    edit(template)
    return diff(base, _review(tmp_path, template, ACKS))


def _statements(template: Template) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _props(template, "RolePolicy")["PolicyDocument"]["Statement"]
    return found


def test_actions_added_to_an_acknowledged_star_statement_are_broadening(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    # the `grant_cluster_reads` variant of the review: PassRole + SendCommand join the X-Ray `*`
    def edit(template: Template) -> None:
        _statements(template)[2]["Action"] += ["iam:PassRole", "ssm:SendCommand"]

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert change.action == "changed"
    assert change.what.endswith("(actions +iam:PassRole +ssm:SendCommand)")
    assert "a wildcard statement not in the baseline (*)" in change.broadening
    assert (
        "`Resource::*` covered only by an acknowledgement written for another statement "
        "(“X-Ray writes support no resource ARN”): re-judge" in change.broadening
    )
    assert "privilege escalation: iam:PassRole, ssm:SendCommand on *" in change.broadening


def test_a_new_star_statement_under_an_existing_acknowledgement_is_broadening(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _statements(template).append(allow(["lambda:UpdateFunctionCode"], "*"))

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert change.action == "added"
    assert "re-judge" in change.broadening
    assert "privilege escalation: lambda:UpdateFunctionCode on *" in change.broadening


def test_a_resource_widened_from_an_arn_to_star_is_broadening(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _statements(template)[1]["Resource"] = "*"

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert change.what.endswith("(resources +* -<Queue.Arn>)")
    assert change.broadening.startswith("a wildcard statement not in the baseline (*)")


def test_pass_role_on_one_role_is_broadening_without_any_wildcard(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _statements(template).append(allow("iam:PassRole", getatt("Role", "Arn")))

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert change.broadening == "privilege escalation: iam:PassRole on <Role.Arn>"


def test_a_not_action_statement_is_broadening_and_grants_escalation(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _statements(template).append(
            {"Effect": "Allow", "NotAction": "iam:*", "Resource": ref("Queue")}
        )

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert "a wildcard statement not in the baseline (NotAction iam:*)" in change.broadening
    assert "ssm:SendCommand" in change.broadening  # not excluded by NotAction iam:*
    assert "iam:PassRole" not in change.broadening


def test_removing_an_action_from_a_star_statement_is_not_broadening(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _statements(template)[2]["Action"] = ["xray:PutTraceSegments"]

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert (change.action, change.broadening) == ("changed", "")


def test_a_condition_removed_from_a_secret_grant_is_broadening_twice(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        del _statements(template)[0]["Condition"]

    changes = _changes(risk_base, tmp_path, edit)
    iam = [c for c in changes if c.category == "iam"]
    secrets = [c for c in changes if c.category == "secrets"]
    assert [c.broadening for c in iam] == [
        "condition weakened: lost StringEquals aws:principaltag/team"
    ]
    assert [c.broadening for c in secrets] == [
        "condition weakened: lost StringEquals aws:principaltag/team"
    ]
    assert {c.category for c in changes} == {"iam", "secrets"}


def test_a_trust_policy_losing_its_confused_deputy_guard_is_broadening(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        del _props(template, "Role")["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert change.what.startswith("role Role/Resource trust of Service lambda.amazonaws.com")
    assert change.broadening == "trust condition weakened: lost StringEquals aws:sourceaccount"


def test_a_key_policy_statement_for_an_account_losing_its_condition_is_broadening(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        del _props(template, "Key")["KeyPolicy"]["Statement"][1]["Condition"]

    change = _one(_changes(risk_base, tmp_path, edit), "policies")
    assert change.action == "changed"
    assert change.broadening == "condition weakened: lost StringEquals kms:viaservice"


def test_a_condition_value_widened_is_broadening(risk_base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        condition = _props(template, "Role")["AssumeRolePolicyDocument"]["Statement"][0]
        condition["Condition"]["StringEquals"]["aws:SourceAccount"] = [
            "111111111111",
            "333333333333",
        ]

    change = _one(_changes(risk_base, tmp_path, edit), "iam")
    assert change.broadening == (
        "trust condition weakened: StringEquals aws:sourceaccount allows more values"
    )


def test_a_role_that_decrypts_through_its_own_policy_is_a_new_decrypter(
    risk_base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _statements(template).append(allow("kms:Decrypt", getatt("Key", "Arn")))

    changes = _changes(risk_base, tmp_path, edit)
    [grant] = [c for c in changes if c.category == "policies"]
    assert grant.broadening == "a new principal may decrypt with the key"
