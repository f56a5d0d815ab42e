"""Registrar plumbing: durable delivery, bounded concurrency, least privilege."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Capture, Match, Template

from mesh_stack.registrar import Registrar
from tests.infra.nag_util import open_findings


def build(tmp_path: Path, **kwargs: object) -> tuple[cdk.App, cdk.Stack, Registrar]:
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    cluster = ecs.Cluster(stack, "Cluster", vpc=vpc)
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    token = secretsmanager.Secret(stack, "Token", encryption_key=key)
    ca = secretsmanager.Secret(stack, "Ca", encryption_key=key)
    registrar = Registrar(
        stack,
        "Registrar",
        vpc=vpc,
        cluster=cluster,
        consul_http_addr="https://consul.internal:8501",
        token_secret=token,
        ca_secret=ca,
        key=key,
        **kwargs,  # type: ignore[arg-type]
    )
    return app, stack, registrar


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    _, stack, _ = build(tmp_path_factory.mktemp("registrar"), max_concurrency=7)
    return Template.from_stack(stack)


def test_rule_sends_only_this_clusters_task_events_to_the_queue(template: Template) -> None:
    target = Capture()
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.ecs"],
                "detail-type": ["ECS Task State Change", "ECS Container Instance State Change"],
                "detail": {"clusterArn": [Match.any_value()]},
            },
            "Targets": [target],
        },
    )
    assert "DeadLetterConfig" in target.as_object(), "rule target needs its own DLQ"
    assert target.as_object()["RetryPolicy"]["MaximumEventAgeInSeconds"] == 86400


def test_queue_is_encrypted_and_redrives_to_a_dlq(template: Template) -> None:
    template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "KmsMasterKeyId": Match.any_value(),
            "VisibilityTimeout": 360,  # 6 x the 60 s function timeout
            "RedrivePolicy": {"deadLetterTargetArn": Match.any_value(), "maxReceiveCount": 5},
        },
    )
    queues = template.find_resources("AWS::SQS::Queue")
    assert len(queues) == 3
    assert all("KmsMasterKeyId" in q["Properties"] for q in queues.values())
    template.resource_count_is("AWS::SQS::QueuePolicy", 3)  # TLS-only on every queue


def test_event_source_reports_partial_failures_with_bounded_concurrency(
    template: Template,
) -> None:
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": {"MaximumConcurrency": 7},
            "BatchSize": 10,
        },
    )


def test_nothing_is_reserved_unless_asked(template: Template, tmp_path: Path) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Handler": "handler.handler", "ReservedConcurrentExecutions": Match.absent()},
    )
    _, reserving, _ = build(tmp_path, max_concurrency=7, reserve_concurrency=True)
    Template.from_stack(reserving).has_resource_properties(
        "AWS::Lambda::Function", {"Handler": "handler.handler", "ReservedConcurrentExecutions": 9}
    )


def test_function_runs_arm64_newest_python_in_the_vpc(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Runtime": "python3.14",
            "Architectures": ["arm64"],
            "Handler": "handler.handler",
            "VpcConfig": {"SubnetIds": Match.any_value(), "SecurityGroupIds": Match.any_value()},
            "Environment": {
                "Variables": {
                    "CONSUL_HTTP_ADDR": "https://consul.internal:8501",
                    "CONSUL_TOKEN_SECRET_ARN": Match.any_value(),
                    "CONSUL_CACERT_SECRET_ARN": Match.any_value(),
                    "ECS_CLUSTER_ARN": Match.any_value(),
                }
            },
        },
    )


def test_no_secret_value_in_the_environment(template: Template) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    for function in functions.values():
        variables = function["Properties"].get("Environment", {}).get("Variables", {})
        assert "CONSUL_HTTP_TOKEN" not in variables


def test_iam_allows_only_describes_and_reading_its_secrets(template: Template) -> None:
    policies = template.find_resources("AWS::IAM::Policy")
    actions: set[str] = set()
    for policy in policies.values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            found = statement["Action"]
            actions.update([found] if isinstance(found, str) else found)
    writes = {
        a
        for a in actions
        if not a.split(":")[1].startswith(("Describe", "List", "Get", "Decrypt"))
        and not a.startswith(("xray:", "sqs:", "kms:"))
    }
    assert writes == set(), f"unexpected write actions: {writes}"


def test_fails_when_concurrency_is_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_concurrency must be from 2 to 1000, got 1"):
        build(tmp_path, max_concurrency=1)


def test_registrar_has_no_open_nag_findings(tmp_path: Path) -> None:
    app, _, _ = build(tmp_path)
    findings = [f for f in open_findings(app) if "/Registrar/" in f.path]
    assert findings == [], "\n".join(f"{f.rule} at {f.path}" for f in findings)


def _statements_of(template: Template, action: str) -> list[dict[str, Any]]:
    found = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            if action in ([actions] if isinstance(actions, str) else actions):
                found.append(statement)
    return found


def test_rechecks_go_to_its_own_queue_and_only_there(tmp_path: Path) -> None:
    _, stack, registrar = build(tmp_path)
    template = Template.from_stack(stack)
    queue = stack.get_logical_id(registrar.queue.node.default_child)  # type: ignore[arg-type]
    key = next(iter(template.find_resources("AWS::KMS::Key")))

    # the function knows its queue ...
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "handler.handler",
            "Environment": {"Variables": Match.object_like({"RECHECK_QUEUE_URL": {"Ref": queue}})},
        },
    )
    # ... may send to it and to no other queue ...
    (send,) = _statements_of(template, "sqs:SendMessage")
    assert send["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
    # ... and may have SQS encrypt with the queue's key on its behalf
    (generate,) = _statements_of(template, "kms:GenerateDataKey")
    assert generate["Resource"] == {"Fn::GetAtt": [key, "Arn"]}
    assert "kms:Decrypt" in generate["Action"]
    assert generate["Condition"]["StringEquals"]["kms:ViaService"] == {
        "Fn::Join": ["", ["sqs.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]
    }
