"""The requests the deployed code really makes are allowed by the synthesized IAM policies.

Each test names one request a component sends at run time (with the resource ARN and condition
context IAM evaluates it with) and asks the template's policies whether it is allowed, so a
policy that looks scoped but never matches the request fails here instead of in production.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import Synthesized
from tests.infra.iam_eval import allows, function_role, render, role_statements


@pytest.fixture(scope="module")
def template(synthesized: Synthesized) -> dict[str, Any]:
    (only,) = synthesized.templates().values()
    return only


def _cluster_arn(template: dict[str, Any]) -> str:
    (cluster,) = [
        name for name, r in template["Resources"].items() if r["Type"] == "AWS::ECS::Cluster"
    ]
    return render({"Fn::GetAtt": [cluster, "Arn"]})


def test_reconcile_pass_may_list_its_clusters_tasks(template: dict[str, Any]) -> None:
    # GIVEN the reconcile pass's role
    statements = role_statements(template, function_role(template, "reconcile.handler"))
    cluster = _cluster_arn(template)
    # WHEN it calls ListTasks(cluster=..., desiredStatus=RUNNING) without a container instance,
    # which IAM evaluates against resource "*" with the ecs:cluster condition key (AWS's own
    # example for "list tasks in a cluster": Resource "*", ArnEquals ecs:cluster)
    allowed = allows(statements, "ecs:ListTasks", "*", {"ecs:cluster": cluster})
    # THEN it is allowed, or the pass can never read ECS and repairs nothing
    assert allowed
    # AND only for this cluster
    assert not allows(statements, "ecs:ListTasks", "*", {"ecs:cluster": "arn:other"})
