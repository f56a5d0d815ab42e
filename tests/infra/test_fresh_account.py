"""The default app on a fresh AWS account: what would fail or hang there, read from the template.

A new account has a low Lambda concurrency quota and eventually consistent IAM; a custom
resource whose function dies holds the stack for an hour; a scanner reviews the template. Each
test reads the synthesized default app (one synthesis per session).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import Synthesized

Template = dict[str, Any]


@pytest.fixture(scope="module")
def template(synthesized: Synthesized) -> Template:
    (only,) = synthesized.templates().values()
    return only


def of_type(template: Template, kind: str) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in template["Resources"].items() if r["Type"] == kind}


def test_no_function_reserves_concurrency_by_default(template: Template) -> None:
    # Lambda keeps 100 of the account's quota unreserved, and new accounts start with a quota
    # of 10 or 50: any reservation would fail the deploy about 25 minutes in.
    reserving = {
        name: r["Properties"]["ReservedConcurrentExecutions"]
        for name, r in of_type(template, "AWS::Lambda::Function").items()
        if "ReservedConcurrentExecutions" in r["Properties"]
    }
    assert reserving == {}
