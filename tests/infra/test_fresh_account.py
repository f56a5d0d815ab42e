"""The default app on a fresh AWS account: what would fail or hang there, read from the template.

A new account has a low Lambda concurrency quota and eventually consistent IAM; a custom
resource whose function dies holds the stack for an hour; a scanner reviews the template. Each
test reads the synthesized default app (one synthesis per session).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ROOT
from tests.infra.cfn_graph import prerequisites
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


def test_hosts_are_deregistered_before_the_cluster_and_its_services_are_deleted(
    template: Template,
) -> None:
    # ECS refuses to delete a cluster with registered container instances, and a service's
    # deletion waits for its tasks, which never stop on a host that is gone.
    (teardown,) = of_type(template, "Custom::EcsAnywhereTeardown")
    before = prerequisites(template, teardown)
    clusters = set(of_type(template, "AWS::ECS::Cluster"))
    services = set(of_type(template, "AWS::ECS::Service"))
    assert clusters
    assert services
    # CloudFormation deletes a resource before everything it depends on
    assert clusters <= before
    assert services <= before


def test_the_operations_guide_names_the_ami_parameter_the_fleet_resolves(
    template: Template,
) -> None:
    # An operator watching for new AMIs (each one rolls the fleet at the next deploy) must
    # watch the parameter the template really resolves.
    amis = [
        p["Default"]
        for p in template["Parameters"].values()
        if str(p.get("Default", "")).startswith("/aws/service/ami-amazon-linux-latest/")
    ]
    assert len(amis) == 1
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert f"`{amis[0]}`" in guide
    assert "al2023-ami-kernel-default" not in guide


def test_no_custom_resource_can_hold_the_stack_for_an_hour(template: Template) -> None:
    # CloudFormation waits an hour for a custom resource's answer unless ServiceTimeout says
    # otherwise; a function that dies without answering would hold the deploy that long.
    resources = template["Resources"]
    custom = {
        name: r["Properties"]
        for name, r in resources.items()
        if r["Type"].startswith("Custom::") or r["Type"] == "AWS::CloudFormation::CustomResource"
    }
    assert len(custom) >= 5
    for name, props in custom.items():
        assert "ServiceTimeout" in props, f"{name} waits the default hour"
        service_timeout = int(props["ServiceTimeout"])
        function = resources[props["ServiceToken"]["Fn::GetAtt"][0]]
        handler_timeout = int(function["Properties"].get("Timeout", 3))
        # Never before the function that answers could have answered, never an hour
        assert handler_timeout < service_timeout < 3600, name
        if function["Properties"].get("Handler") == "handler.handler":  # our direct ones
            assert service_timeout <= 300, f"{name}: a direct-Lambda resource waits 5 minutes"
