"""The default app on a fresh AWS account: what would fail or hang there, read from the template.

A new account has a low Lambda concurrency quota and eventually consistent IAM; a custom
resource whose function dies holds the stack for an hour; a scanner reviews the template. Each
test reads the synthesized default app (one synthesis per session); the guarantees that every
mesh service needs (teardown order, key policies) also read the app with configured services.
"""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template as CdkTemplate

from mesh_stack import server_image
from mesh_stack.config import MeshConfig
from mesh_stack.stack import MeshStack
from tests.conftest import ROOT, cdk_json_context
from tests.infra.cfn_graph import prerequisites, references
from tests.infra.conftest import Synthesized

Template = dict[str, Any]


@pytest.fixture(scope="module")
def template(synthesized: Synthesized) -> Template:
    (only,) = synthesized.templates().values()
    return only


# Two configured services beside the demo: one DAEMON (deleted only once its tasks stopped),
# one reading an app secret encrypted with a customer-managed key of another stack.
CONFIGURED = {
    "orders": {
        "image": "ghcr.io/acme/orders:1.4.2",
        "port": 8080,
        "app_user": "1000",
        "health_check_path": "/healthz",
        "daemon": True,
        "upstreams": {"payments": 9001},
        "secrets": {
            "STRIPE_KEY": {
                "arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:stripe-XyZ789",
                "kms_key_arn": (
                    "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                ),
            }
        },
    },
    "payments": {
        "image": "ghcr.io/acme/payments:2.0.1",
        "port": 8081,
        "app_user": "1000",
        "health_check_path": "/healthz",
        "allow_from": ["orders"],
        "count": 0,
    },
}


@pytest.fixture(scope="module")
def configured() -> Template:
    """The default app plus CONFIGURED (no nag: the nag tests cover configured services)."""
    context = {**cdk_json_context(), "services": CONFIGURED}
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        cdk.App(context=context),
        config.stack_name,
        config=config,
        env=cdk.Environment(region=config.region),
    )
    found: Template = CdkTemplate.from_stack(stack).to_json()
    return found


# The templates the service-wide guarantees are checked on (fixture names).
APPS = ["template", "configured"]


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


@pytest.mark.parametrize("app", APPS)
def test_hosts_are_deregistered_before_the_cluster_and_its_services_are_deleted(
    app: str, request: pytest.FixtureRequest
) -> None:
    # ECS refuses to delete a cluster with registered container instances, and a service's
    # deletion waits for its tasks, which never stop on a host that is gone.
    template = request.getfixturevalue(app)
    (teardown,) = of_type(template, "Custom::EcsAnywhereTeardown")
    before = prerequisites(template, teardown)
    clusters = set(of_type(template, "AWS::ECS::Cluster"))
    services = set(of_type(template, "AWS::ECS::Service"))
    assert clusters
    assert len(services) == {"template": 2, "configured": 4}[app]  # the demo's, and ours
    # CloudFormation deletes a resource before everything it depends on
    assert clusters <= before
    assert services <= before


def test_with_nothing_recorded_the_servers_launch_from_the_deploy_time_parameter(
    template: Template,
) -> None:
    # DESIGN §2.6: `cdk deploy` of the default configuration succeeds on a new account. With
    # server-ami.json empty (as committed) the launch template must name a real image: the
    # public AL2023 parameter `make refresh-ami` reads, resolved by CloudFormation at deploy
    # time, never a placeholder ID that CreateAutoScalingGroup rejects minutes in.
    assert server_image.load_record() == {}, "the committed record is empty on main"
    (lt,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"]
    image = lt["Properties"]["LaunchTemplateData"]["ImageId"]
    assert isinstance(image, dict), image
    assert set(image) == {"Ref"}, image
    parameter = template["Parameters"][image["Ref"]]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert parameter["Default"] == server_image.parameter_name(arm64=True)
    assert "ami-00000000000000000" not in json.dumps(template)
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert f"`{server_image.parameter_name(arm64=True)}`" in guide


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


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("app", APPS)
def test_no_key_policy_names_a_role_this_stack_creates(
    app: str, request: pytest.FixtureRequest
) -> None:
    # A key policy naming a role created in the same deployment can be rejected ("invalid
    # principals") while IAM propagates the role: grant the key in the role's own policy.
    template = request.getfixturevalue(app)
    roles = set(of_type(template, "AWS::IAM::Role"))
    for name, key in of_type(template, "AWS::KMS::Key").items():
        for statement in key["Properties"]["KeyPolicy"]["Statement"]:
            named = set(references(statement.get("Principal", {}))) & roles
            assert not named, f"{name}'s policy names {sorted(named)}"


def _secret_behind(template: Template, value: Any) -> str | None:
    """The secret a policy resource points at: a Ref to it, or a custom resource's attribute
    that echoes one of its properties (the Consul token secrets)."""
    resources = template["Resources"]
    if isinstance(value, dict) and "Ref" in value:
        name = value["Ref"]
        return (
            name if resources.get(name, {}).get("Type") == "AWS::SecretsManager::Secret" else None
        )
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        owner, attribute = value["Fn::GetAtt"]
        echoed = resources[owner].get("Properties", {}).get(attribute)
        return _secret_behind(template, echoed) if echoed is not None else None
    return None


@pytest.mark.parametrize("app", APPS)
def test_every_reader_of_an_encrypted_secret_may_decrypt_it_through_secrets_manager(
    app: str, request: pytest.FixtureRequest
) -> None:
    template = request.getfixturevalue(app)
    resources = template["Resources"]
    readable: dict[str, set[str]] = {}  # role -> secrets it may read
    decryptable: dict[str, set[str]] = {}  # role -> keys it may decrypt via Secrets Manager
    for policy in resources.values():
        if policy["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            continue
        props = policy["Properties"]
        for role in (r["Ref"] for r in props.get("Roles", [])):
            for statement in props["PolicyDocument"]["Statement"]:
                actions = _list(statement["Action"])
                targets = _list(statement["Resource"])
                if "secretsmanager:GetSecretValue" in actions:
                    secrets = {_secret_behind(template, t) for t in targets} - {None}
                    readable.setdefault(role, set()).update(s for s in secrets if s)
                via = statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                if "kms:Decrypt" in actions and via and "secretsmanager" in json.dumps(via):
                    decryptable.setdefault(role, set()).update(
                        t["Fn::GetAtt"][0] for t in targets if "Fn::GetAtt" in t
                    )
    assert len(readable) >= {"template": 6, "configured": 8}[app], (
        "fleet, objects, registrar functions, demo tasks (and the configured services' tasks)"
    )
    for role, secrets in readable.items():
        for secret in secrets:
            key = resources[secret]["Properties"].get("KmsKeyId")
            if key is None:
                continue
            assert key["Fn::GetAtt"][0] in decryptable.get(role, set()), (
                f"{role} reads {secret} but may not decrypt it"
            )


def test_every_function_environment_is_encrypted_with_the_stack_key(template: Template) -> None:
    resources = template["Resources"]
    (stack_key,) = [n for n in of_type(template, "AWS::KMS::Key") if n.startswith("KeysKey")]
    functions = {
        name: r["Properties"]
        for name, r in of_type(template, "AWS::Lambda::Function").items()
        if r["Properties"].get("Environment", {}).get("Variables")
    }
    assert len(functions) >= 8
    for name, props in functions.items():
        assert props.get("KmsKeyArn") == {"Fn::GetAtt": [stack_key, "Arn"]}, name
        # AND its role may decrypt it (through Lambda only)
        role = props["Role"]["Fn::GetAtt"][0]
        statements = [
            s
            for p in resources.values()
            if p["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
            and {"Ref": role} in p["Properties"].get("Roles", [])
            for s in p["Properties"]["PolicyDocument"]["Statement"]
        ]
        assert any(
            "kms:Decrypt" in _list(s["Action"])
            and {"Fn::GetAtt": [stack_key, "Arn"]} in _list(s["Resource"])
            and "lambda." in json.dumps(s.get("Condition", {}))
            for s in statements
        ), f"{name}'s role may not decrypt its environment"


def test_the_server_group_name_is_a_stack_output(template: Template) -> None:
    # docs/operations.md suspends and resumes this group by the output's value.
    (group,) = of_type(template, "AWS::AutoScaling::AutoScalingGroup")
    assert template["Outputs"]["ConsulServerGroupName"]["Value"] == {"Ref": group}


def test_every_function_logs_to_a_log_group_the_stack_keeps(template: Template) -> None:
    # A function without LoggingConfig writes to /aws/lambda/<name>, which Lambda creates on
    # first use: unencrypted by the stack's key, never expiring, and left behind by
    # `cdk destroy` outside what `make destroy` records. CDK's default-security-group handler
    # did (mesh_stack/default_sg_handler.py).
    resources = template["Resources"]
    for name, function in of_type(template, "AWS::Lambda::Function").items():
        group = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
        assert isinstance(group, dict), f"{name} logs outside the template"
        assert "Ref" in group, f"{name} logs to a group named outside the template"
        log_group = resources[group["Ref"]]
        assert log_group["Type"] == "AWS::Logs::LogGroup", name
        assert {"KmsKeyId", "RetentionInDays"} <= set(log_group["Properties"]), name


def test_cdk_default_sg_handler_writes_only_its_own_log_group(template: Template) -> None:
    resources = template["Resources"]
    (token,) = [
        r["Properties"]["ServiceToken"]
        for r in resources.values()
        if r["Type"] == "Custom::VpcRestrictDefaultSG"
    ]
    handler_name = token["Fn::GetAtt"][0]
    handler = resources[handler_name]
    role_name = handler["Properties"]["Role"]["Fn::GetAtt"][0]
    role = resources[role_name]["Properties"]
    # No AWS-managed policy: AWSLambdaBasicExecutionRole writes to every log group.
    assert "ManagedPolicyArns" not in role
    group = handler["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    log_statements = [
        statement
        for policy in of_type(template, "AWS::IAM::Policy").values()
        if {"Ref": role_name} in policy["Properties"]["Roles"]
        for statement in _list(policy["Properties"]["PolicyDocument"]["Statement"])
    ]
    assert log_statements == [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [group, "Arn"]},
        }
    ]
    inline = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    assert all(not a.startswith("logs:") for s in inline for a in _list(s["Action"]))
    # Its first invocation (the custom resource's Create) comes after the grant exists.
    (policy_name,) = [
        name
        for name, policy in of_type(template, "AWS::IAM::Policy").items()
        if {"Ref": role_name} in policy["Properties"]["Roles"]
    ]
    assert policy_name in prerequisites(template, handler_name)
