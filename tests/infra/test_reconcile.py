"""Reconciler: the scheduled pass and the drain on delete, next to the registrar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match, Template

from tests.infra.anti_entropy_stack import build
from tests.infra.nag_util import open_findings


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    parts = build(
        tmp_path_factory.mktemp("reconcile"),
        reconciler={
            "interval_minutes": 7,
            "max_deletions": 25,
            "host_disconnect_grace_minutes": 9,
        },
        with_monitoring=False,
    )
    return Template.from_stack(parts.stack)


def functions(template: Template) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template.find_resources("AWS::Lambda::Function").items()
        if resource["Properties"].get("Handler") in ("reconcile.handler", "drain.on_event")
    }


def test_the_pass_runs_on_the_configured_schedule_one_at_a_time(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Events::Rule", {"ScheduleExpression": "rate(7 minutes)", "State": "ENABLED"}
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "reconcile.handler",
            "Runtime": "python3.14",
            "Architectures": ["arm64"],
            # nothing reserved by default: a pass ends (timeout) before the next one starts
            "ReservedConcurrentExecutions": Match.absent(),
            "Timeout": 300,
            "Environment": {
                "Variables": Match.object_like(
                    {"RECONCILE_MAX_DELETIONS": "25", "HOST_DISCONNECT_GRACE_MINUTES": "9"}
                ),
            },
        },
    )
    # a failed pass is not retried: the next scheduled one starts from a fresh difference
    template.has_resource_properties("AWS::Lambda::EventInvokeConfig", {"MaximumRetryAttempts": 0})


def test_a_pass_is_stopped_before_the_next_one_starts(tmp_path: Path) -> None:
    parts = build(tmp_path, reconciler={"interval_minutes": 2}, with_monitoring=False)
    Template.from_stack(parts.stack).has_resource_properties(
        "AWS::Lambda::Function", {"Handler": "reconcile.handler", "Timeout": 120}
    )


def test_reserving_concurrency_is_an_opt_in(tmp_path: Path) -> None:
    parts = build(tmp_path, reconciler={"reserve_concurrency": True}, with_monitoring=False)
    Template.from_stack(parts.stack).has_resource_properties(
        "AWS::Lambda::Function", {"Handler": "reconcile.handler", "ReservedConcurrentExecutions": 1}
    )


def test_both_functions_reuse_the_registrars_code_network_and_settings(
    template: Template,
) -> None:
    registrar = next(
        p
        for p in template.find_resources("AWS::Lambda::Function").values()
        if p["Properties"].get("Handler") == "handler.handler"
    )["Properties"]
    ours = functions(template)
    assert len(ours) == 2
    for props in ours.values():
        assert props["Code"] == registrar["Code"], "same asset as the registrar"
        assert props["VpcConfig"]["SecurityGroupIds"] == registrar["VpcConfig"]["SecurityGroupIds"]
        assert props["VpcConfig"]["SubnetIds"] == registrar["VpcConfig"]["SubnetIds"]
        variables = props["Environment"]["Variables"]
        for name in (
            "CONSUL_HTTP_ADDR",
            "CONSUL_TOKEN_SECRET_ARN",
            "CONSUL_CACERT_SECRET_ARN",
            "ECS_CLUSTER_ARN",
        ):
            assert variables[name] == registrar["Environment"]["Variables"][name]
        assert "CONSUL_HTTP_TOKEN" not in variables


def test_iam_allows_only_reads(template: Template) -> None:
    actions: set[str] = set()
    for name, policy in template.find_resources("AWS::IAM::Policy").items():
        if not name.startswith("Reconciler"):
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            found = statement["Action"]
            actions.update([found] if isinstance(found, str) else found)
    writes = {
        a
        for a in actions
        if not a.split(":")[1].startswith(("Describe", "List", "Get", "Decrypt"))
        and not a.startswith("xray:")
        and a != "lambda:InvokeFunction"  # the custom resource framework -> the drain function
    }
    assert writes == set(), f"unexpected write actions: {writes}"
    assert "ecs:ListTasks" in actions


def test_the_drain_carries_the_flag_and_runs_after_the_event_source_is_gone(
    template: Template,
) -> None:
    drains = template.find_resources("Custom::ConsulCatalogDrain")
    assert len(drains) == 1
    name, drain = next(iter(drains.items()))
    assert drain["Properties"]["Drain"] == "true"
    assert drain["Properties"]["ClusterArn"]["Fn::GetAtt"][1] == "Arn"
    # CloudFormation deletes dependents first: the SQS event source and the schedule go before
    # the drain runs, so nothing registers behind it
    (source,) = template.find_resources("AWS::Lambda::EventSourceMapping").values()
    assert name in source.get("DependsOn", [])
    schedule = template.find_resources(
        "AWS::Events::Rule", {"Properties": {"ScheduleExpression": Match.any_value()}}
    )
    (rule,) = schedule.values()
    assert name in rule.get("DependsOn", [])


def test_the_flag_off_keeps_the_resource_and_says_so(tmp_path: Path) -> None:
    parts = build(tmp_path, reconciler={"drain_on_delete": False}, with_monitoring=False)
    flag = Capture()
    Template.from_stack(parts.stack).has_resource_properties(
        "Custom::ConsulCatalogDrain", {"Drain": flag}
    )
    assert flag.as_string() == "false"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval_minutes": 0}, "interval_minutes must be from 1 to 1440, got 0"),
        ({"max_deletions": 0}, "max_deletions must be from 1 to 10000, got 0"),
        (
            {"host_disconnect_grace_minutes": 0},
            "host_disconnect_grace_minutes must be from 1 to 1440, got 0",
        ),
    ],
)
def test_fails_when_a_setting_is_out_of_range(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(tmp_path, reconciler=options, with_monitoring=False)


def test_reconciler_has_no_open_nag_findings(tmp_path: Path) -> None:
    parts = build(tmp_path, with_monitoring=False)
    findings = [f for f in open_findings(parts.app) if "/Reconciler/" in f.path]
    assert findings == [], "\n".join(f"{f.rule} at {f.path}" for f in findings)
