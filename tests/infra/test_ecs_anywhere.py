"""EcsAnywhere: the cluster, the hosts' role and an activation whose code stays secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Match, Template

from mesh_stack.ecs_anywhere import EcsAnywhere
from tests.infra.nag_util import open_findings


def build(outdir: Path, **kwargs: Any) -> tuple[cdk.App, cdk.Stack, EcsAnywhere]:
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    anywhere = EcsAnywhere(stack, "EcsAnywhere", vpc=vpc, key=key, **kwargs)
    return app, stack, anywhere


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Template, EcsAnywhere]:
    _, stack, anywhere = build(
        tmp_path_factory.mktemp("ecs-anywhere"), registration_limit=25, expiry_days=14
    )
    return Template.from_stack(stack), anywhere


@pytest.fixture(scope="module")
def template(built: tuple[Template, EcsAnywhere]) -> Template:
    return built[0]


def only(template: Template, resource_type: str, name_prefix: str) -> tuple[str, dict[str, Any]]:
    matches = {
        k: v for k, v in template.find_resources(resource_type).items() if k.startswith(name_prefix)
    }
    assert len(matches) == 1, sorted(matches)
    return next(iter(matches.items()))


def test_cluster_has_container_insights(template: Template) -> None:
    template.has_resource_properties(
        "AWS::ECS::Cluster",
        {"ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}]},
    )


def test_host_role_is_assumed_only_by_ssm_of_this_account(template: Template) -> None:
    _, role = only(template, "AWS::IAM::Role", "EcsAnywhereHostRole")
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "ssm.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_host_role_is_narrower_than_the_ec2_container_policy(template: Template) -> None:
    _, role = only(template, "AWS::IAM::Role", "EcsAnywhereHostRole")
    managed = json.dumps(role["Properties"]["ManagedPolicyArns"])
    assert "AmazonSSMManagedInstanceCore" in managed
    assert "AmazonEC2ContainerServiceforEC2Role" not in managed
    _, policy = only(template, "AWS::IAM::ManagedPolicy", "EcsAnywhereEcsAgentPolicy")
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in _actions(s)}
    assert "ecs:CreateCluster" not in actions
    assert not any(a.startswith(("ecr:", "ec2:", "logs:")) for a in actions)
    for statement in statements:
        if statement["Resource"] == "*":
            # only DiscoverPollEndpoint is unscoped; Poll/Telemetry carry an ecs:cluster condition
            condition = statement.get("Condition", {}).get("ArnEquals", {}).get("ecs:cluster")
            assert _actions(statement) == ["ecs:DiscoverPollEndpoint"] or condition, statement
            if condition:
                assert condition["Fn::GetAtt"][0].startswith("EcsAnywhereCluster")
        else:
            assert statement["Resource"]["Fn::GetAtt"][0].startswith("EcsAnywhereCluster")


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_activation_uses_the_configured_limit_and_expiry(template: Template) -> None:
    _, activation = only(template, "Custom::SsmActivation", "EcsAnywhereActivation")
    assert activation["Properties"]["RegistrationLimit"] == 25
    assert activation["Properties"]["ExpiryDays"] == 14


def test_activation_code_lives_only_in_a_kms_encrypted_secret(template: Template) -> None:
    logical, secret = only(template, "AWS::SecretsManager::Secret", "EcsAnywhereActivationSecret")
    assert "Fn::GetAtt" in secret["Properties"]["KmsKeyId"]
    text = json.dumps(template.to_json())
    # nothing reads an activation code attribute; no output or env var carries one
    assert "ActivationCode" not in text
    outputs = template.to_json().get("Outputs", {})
    for output in outputs.values():
        assert "Fn::GetAtt" not in json.dumps(output["Value"])
    _, function = only(template, "AWS::Lambda::Function", "EcsAnywhereActivationFunction")
    env = function["Properties"]["Environment"]["Variables"]
    assert set(env) == {
        "SECRET_ARN",
        "ROLE_NAME",
        "CLUSTER_NAME",
        "REGISTRATION_LIMIT",
        "EXPIRY_DAYS",
    }
    assert env["SECRET_ARN"] == {"Ref": logical}


def test_registration_command_reads_the_secret_and_runs_the_installer(
    tmp_path: Path,
) -> None:
    _, stack, anywhere = build(tmp_path)
    parts = stack.resolve(anywhere.registration_command)["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)
    assert "aws secretsmanager get-secret-value" in text
    assert '{"Ref": "EcsAnywhereActivationSecret' in text
    assert "ecs-anywhere-install" in text
    for flag in ("--region", "--cluster", "--activation-id", "--activation-code"):
        assert flag in text
    assert '--activation-code "$ACTIVATION_CODE"' in text
    assert '{"Ref": "EcsAnywhereCluster' in text


def test_activation_function_may_pass_only_the_host_role(template: Template) -> None:
    _, policy = only(template, "AWS::IAM::ManagedPolicy", "EcsAnywhereActivationPolicy")
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    (pass_role,) = [s for s in statements if s["Action"] == "iam:PassRole"]
    assert pass_role["Resource"]["Fn::GetAtt"][0].startswith("EcsAnywhereHostRole")
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}}
    secret_statements = [s for s in statements if "secretsmanager" in json.dumps(s["Action"])]
    for statement in secret_statements:
        assert statement["Resource"]["Ref"].startswith("EcsAnywhereActivationSecret")


def test_stateful_construct_ids_are_stable(built: tuple[Template, EcsAnywhere]) -> None:
    _, anywhere = built
    assert anywhere.cluster.node.path == "Test/EcsAnywhere/Cluster"
    assert anywhere.activation_secret.node.path == "Test/EcsAnywhere/ActivationSecret"
    assert anywhere.activation.node.path == "Test/EcsAnywhere/Activation"


def test_grant_read_activation_lets_an_operator_read_the_secret(tmp_path: Path) -> None:
    _, stack, anywhere = build(tmp_path)
    operator = iam.Role(stack, "Operator", assumed_by=iam.AccountRootPrincipal())
    anywhere.grant_read_activation(operator)
    Template.from_stack(stack).has_resource_properties(
        "AWS::IAM::Policy",
        {
            "Roles": [{"Ref": Match.string_like_regexp("^Operator")}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": Match.array_with(["secretsmanager:GetSecretValue"]),
                                "Resource": {
                                    "Ref": Match.string_like_regexp("EcsAnywhereActivationSecret")
                                },
                            }
                        )
                    ]
                )
            },
        },
    )


def test_constructs_are_nag_clean(tmp_path: Path) -> None:
    app, _, _ = build(tmp_path)
    mine = [f for f in open_findings(app) if f.path.startswith("Test/EcsAnywhere/")]
    assert mine == [], "\n".join(f"{f.rule} at {f.path}" for f in mine)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"registration_limit": 0}, r"registration_limit must be 1\.\.1000, got 0"),
        ({"expiry_days": 31}, r"expiry_days must be 1\.\.30 .*, got 31"),
    ],
)
def test_fails_when_activation_settings_are_out_of_range(
    tmp_path: Path, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(tmp_path, **kwargs)


def test_teardown_deregisters_the_hosts_of_this_cluster_only(template: Template) -> None:
    _, resource = only(template, "Custom::EcsAnywhereTeardown", "EcsAnywhereTeardown")
    props = resource["Properties"]
    cluster, _ = only(template, "AWS::ECS::Cluster", "EcsAnywhereCluster")
    host_role, _ = only(template, "AWS::IAM::Role", "EcsAnywhereHostRole")
    assert props["ClusterArn"] == {"Fn::GetAtt": [cluster, "Arn"]}
    assert props["HostRoleName"] == {"Ref": host_role}
    assert props["HostRoleArn"] == {"Fn::GetAtt": [host_role, "Arn"]}
    # served by the activation function, which CloudFormation waits for at most 5 minutes
    function, _ = only(template, "AWS::Lambda::Function", "EcsAnywhereActivationFunction")
    assert props["ServiceToken"] == {"Fn::GetAtt": [function, "Arn"]}
    assert int(props["ServiceTimeout"]) == 300
    _, policy = only(template, "AWS::IAM::ManagedPolicy", "EcsAnywhereActivationPolicy")
    statements = {s.get("Sid", ""): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert statements["TeardownListAndDeregisterHosts"]["Resource"] == {
        "Fn::GetAtt": [cluster, "Arn"]
    }
    assert "managed-instance/*" in json.dumps(
        statements["TeardownDeregisterManagedInstances"]["Resource"]
    )
    assert statements["TeardownDeregisterManagedInstances"]["Action"] == (
        "ssm:DeregisterManagedInstance"
    )


def test_a_dead_function_holds_the_stack_minutes_not_an_hour(template: Template) -> None:
    _, function = only(template, "AWS::Lambda::Function", "EcsAnywhereActivationFunction")
    timeout = function["Properties"]["Timeout"]
    for resource_type in ("Custom::SsmActivation", "Custom::EcsAnywhereTeardown"):
        (resource,) = template.find_resources(resource_type).values()
        # long enough for the function's own retries, far below CloudFormation's default hour
        assert timeout < int(resource["Properties"]["ServiceTimeout"]) <= 300
