"""Monitoring: the alarms that page, on an encrypted topic, and the dashboard's metrics."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import handler
import host_state
import metrics
import pytest
import reconcile
from aws_cdk.assertions import Match, Template

from mesh_stack import consul_fleet, monitoring
from tests.infra.anti_entropy_stack import build
from tests.infra.conftest import Synthesized
from tests.infra.fleet_user_data import render
from tests.infra.nag_util import open_findings


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    parts = build(
        tmp_path_factory.mktemp("monitoring"),
        monitoring={"alarm_email": "ops@example.com", "drift_threshold": 7},
    )
    return Template.from_stack(parts.stack)


def alarms(template: Template) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template.find_resources("AWS::CloudWatch::Alarm").items()
    }


def alarm(template: Template, metric: str, **match: Any) -> dict[str, Any]:
    found = [
        p
        for p in alarms(template).values()
        if p["MetricName"] == metric and all(p.get(k) == v for k, v in match.items())
    ]
    assert len(found) >= 1, f"no alarm on {metric} {match}"
    return found[0]


def test_dead_letter_queues_page_on_the_first_message(template: Template) -> None:
    dlq_alarms = [
        p
        for p in alarms(template).values()
        if p["MetricName"] == "ApproximateNumberOfMessagesVisible"
    ]
    queues = {json.dumps(p["Dimensions"]) for p in dlq_alarms}
    assert len(queues) == 2, "both DLQs: the registrar's and the rule target's"
    for p in dlq_alarms:
        assert (p["Threshold"], p["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_errors_oldest_message_drift_and_the_cap_raise_alarms(template: Template) -> None:
    assert len([p for p in alarms(template).values() if p["MetricName"] == "Errors"]) == 2
    assert alarm(template, "ApproximateAgeOfOldestMessage")["Threshold"] == 900
    drift = alarm(template, "DriftRepaired", Namespace=monitoring.NAMESPACE)
    assert (drift["Threshold"], drift["Period"]) == (7, 300)
    assert [d["Name"] for d in drift["Dimensions"]] == ["ClusterName"]
    assert alarm(template, "DeletionsHeldBack")["Threshold"] == 0


def test_a_refused_host_address_pages(template: Template) -> None:
    refused = alarm(template, "HostAddressRefused", Namespace=monitoring.NAMESPACE)
    assert (refused["Threshold"], refused["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert "consul-mesh.address" in refused["AlarmDescription"]


def test_a_task_registered_again_after_missing_pages(template: Template) -> None:
    again = alarm(template, "DriftResurrected", Namespace=monitoring.NAMESPACE)
    assert (again["Threshold"], again["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert [d["Name"] for d in again["Dimensions"]] == ["ClusterName"]
    assert "MISSING" in again["AlarmDescription"]


def test_fewer_healthy_consul_servers_than_a_quorum_pages(template: Template) -> None:
    quorum = [p for p in alarms(template).values() if p["MetricName"] == "HealthyHostCount"]
    assert len(quorum) == 2, "one per Consul listener"
    for p in quorum:
        assert (p["Threshold"], p["ComparisonOperator"]) == (2, "LessThanThreshold")
        assert p["TreatMissingData"] == "breaching"


def test_three_intervals_without_a_consul_snapshot_page(synthesized: Synthesized) -> None:
    # GIVEN the default app (hourly snapshots)
    (template,) = synthesized.templates().values()
    (props,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("MetricName") == consul_fleet.SNAPSHOT_METRIC
    ]
    # THEN no snapshot for three hours pages, and a job that sends nothing counts as failing
    assert props["Namespace"] == consul_fleet.METRIC_NAMESPACE
    assert (props["Period"], props["EvaluationPeriods"], props["DatapointsToAlarm"]) == (3600, 3, 3)
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "LessThanThreshold")
    assert props["TreatMissingData"] == "breaching"
    assert props["Statistic"] == "Sum"
    # AND its dimension is the one the servers' snapshot job publishes under (fleet.env)
    user_data = render(template)
    fleet_id = re.search(r"^FLEET_ID=(\S+)$", user_data, re.MULTILINE)
    assert fleet_id is not None
    assert props["Dimensions"] == [{"Name": "Fleet", "Value": fleet_id.group(1)}]
    assert f"METRIC_NAMESPACE={props['Namespace']}" in user_data
    assert props["AlarmActions"]
    assert props["OKActions"]


def test_five_servers_need_three_healthy(tmp_path: Path) -> None:
    parts = build(tmp_path, monitoring={"consul_server_count": 5})
    assert parts.monitoring is not None
    assert parts.monitoring.quorum == 3


def test_every_alarm_notifies_the_encrypted_topic(template: Template) -> None:
    (topic_id,) = template.find_resources("AWS::SNS::Topic").keys()
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    for props in alarms(template).values():
        assert props["AlarmActions"] == [{"Ref": topic_id}]
        assert props["OKActions"] == [{"Ref": topic_id}]
    template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"}
    )
    # CloudWatch may use the key to publish to the encrypted topic
    key = next(iter(template.find_resources("AWS::KMS::Key").values()))
    principals = [s["Principal"] for s in key["Properties"]["KeyPolicy"]["Statement"]]
    assert {"Service": "cloudwatch.amazonaws.com"} in principals


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cloudwatch_may_publish_every_alarm_to_its_topic(synthesized: Synthesized) -> None:
    (template,) = synthesized.templates().values()
    resources = template["Resources"]
    # GIVEN every topic any alarm notifies
    topics = {
        action["Ref"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        for field in ("AlarmActions", "OKActions", "InsufficientDataActions")
        for action in r["Properties"].get(field, [])
    }
    assert topics
    for topic in topics:
        statements = [
            st
            for r in resources.values()
            if r["Type"] == "AWS::SNS::TopicPolicy" and {"Ref": topic} in r["Properties"]["Topics"]
            for st in r["Properties"]["PolicyDocument"]["Statement"]
        ]
        # THEN its policy lets CloudWatch alarms of this account and region publish
        allows = [
            st
            for st in statements
            if st["Effect"] == "Allow"
            and st["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
            and "sns:Publish" in _as_list(st["Action"])
        ]
        assert len(allows) == 1, f"nothing lets CloudWatch publish to {topic}"
        condition = allows[0]["Condition"]
        assert condition["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
        source_arn = json.dumps(condition["ArnLike"]["aws:SourceArn"])
        assert ":cloudwatch:" in source_arn
        assert ":alarm:*" in source_arn
        assert "AWS::AccountId" in source_arn
        # AND it still refuses anything but TLS
        assert any(
            st["Effect"] == "Deny"
            and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
            for st in statements
        )
        # AND the topic's key lets CloudWatch encrypt the message it publishes
        key_ref = resources[topic]["Properties"]["KmsMasterKeyId"]
        key = resources[key_ref["Fn::GetAtt"][0]]["Properties"]["KeyPolicy"]["Statement"]
        actions = {
            action
            for st in key
            if st["Effect"] == "Allow"
            and st["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
            for action in _as_list(st["Action"])
        }
        assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= actions


def test_no_subscription_without_an_address(tmp_path: Path) -> None:
    parts = build(tmp_path)
    Template.from_stack(parts.stack).resource_count_is("AWS::SNS::Subscription", 0)


def test_dashboard_graphs_what_the_operators_need(template: Template) -> None:
    body = json.dumps(next(iter(template.find_resources("AWS::CloudWatch::Dashboard").values())))
    for needle in (
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "Registered",
        "Deregistered",
        "Failed",
        "EventToCatalogLagMs",
        "DriftRepaired",
        "HealthyHostCount",
    ):
        assert needle in body, needle


def test_metric_names_are_the_ones_the_lambda_code_emits() -> None:
    emitted = (
        set(handler._METRIC.values())
        | set(host_state._METRIC.values())
        | set(reconcile.PassReport().metrics())
        | {metrics.LAG}
        | set(re.findall(r'metrics\.count\("(\w+)"', inspect.getsource(handler)))
    )
    used = {
        *monitoring.EVENT_METRICS,
        *monitoring.HOST_METRICS,
        monitoring.LAG_METRIC,
        *monitoring.DRIFT_METRICS,
        monitoring.DRIFT_TOTAL,
        *monitoring.RECONCILE_METRICS,
    }
    assert used - emitted == set()
    assert monitoring.NAMESPACE == metrics.DEFAULT_NAMESPACE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"consul_server_count": 4}, "consul_server_count must be 3 or 5, got 4"),
        ({"drift_threshold": 0}, "drift_threshold must be >= 1, got 0"),
    ],
)
def test_fails_when_a_setting_is_invalid(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(tmp_path, monitoring=options)


def test_monitoring_has_no_open_nag_findings(tmp_path: Path) -> None:
    parts = build(tmp_path, monitoring={"alarm_email": "ops@example.com"})
    findings = [f for f in open_findings(parts.app) if "/Monitoring/" in f.path]
    assert findings == [], "\n".join(f"{f.rule} at {f.path}" for f in findings)
