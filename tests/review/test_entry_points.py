"""The internet row of page 1 covers public entry points, not only security groups.

GIVEN a function given a URL without authentication and a permission for anyone to invoke it
(review M6: the diff said 0 broadening and page 1 kept "the internet | nothing")
WHEN reviewed and diffed against the same app without them
THEN page 1 says the internet reaches the URL, the diff is broadening, and the permission for
`*` is not taken as restricted by `FunctionUrlAuthType=NONE`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.review.builder import getatt, ref, resource, write_assembly
from tools.review.collect import Review, build_review
from tools.review.diff import diff
from tools.review.page import first_page
from tools.review.twin import facts

BASE: dict[str, Any] = {
    "Resources": {
        "Role": resource("AWS::IAM::Role", "App/Role/Resource"),
        "Function": resource(
            "AWS::Lambda::Function", "App/Function/Resource", Role=getatt("Role", "Arn")
        ),
    }
}


def _with_url() -> dict[str, Any]:
    template = copy.deepcopy(BASE)
    template["Resources"]["Url"] = resource(
        "AWS::Lambda::Url",
        "App/Function/Url/Resource",
        AuthType="NONE",
        TargetFunctionArn=(getatt("Function", "Arn")),
    )
    template["Resources"]["Anyone"] = resource(
        "AWS::Lambda::Permission",
        "App/Function/Url/Anyone",
        Action="lambda:InvokeFunctionUrl",
        FunctionName=ref("Function"),
        Principal="*",
        FunctionUrlAuthType="NONE",
    )
    return template


def _review(tmp_path: Path, template: dict[str, Any]) -> Review:
    return build_review(write_assembly(tmp_path, {"App": copy.deepcopy(template)}), linter=None)


def _internet_rows(review: Review) -> list[str]:
    return [line for line in first_page(review) if "the internet" in line]


def test_without_entry_points_the_row_says_what_was_checked(tmp_path: Path) -> None:
    [row] = _internet_rows(_review(tmp_path, BASE))
    assert "nothing" in row
    assert "open function URL, API or CDN" in row


def test_a_function_url_without_auth_is_reached_by_the_internet(tmp_path: Path) -> None:
    review = _review(tmp_path, _with_url())
    [row] = _internet_rows(review)
    assert row.startswith("| **the internet** | Function/Url |")
    assert "AuthType NONE" in row
    [permission] = [p for p in review.resource_policies if p.statements]
    assert [s.flag for s in permission.statements if s.flag], permission


def test_adding_the_url_is_broadening(tmp_path: Path) -> None:
    was = facts(_review(tmp_path / "old", BASE))
    changes = diff(was, facts(_review(tmp_path / "new", _with_url())))
    [url] = [c for c in changes if c.category == "ingress"]
    assert url.what.startswith("the internet → ")
    assert url.broadening == "reachable from the internet, no security group in front"
