"""ConsulObjects: the provider Lambda, its permissions, and the Consul objects it declares."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from mesh_stack.consul_objects import ConsulObjects, operator_rules, registrar_rules
from tools.nag_gate import unacknowledged

ADDRESS = "https://consul-nlb.example.internal:8501"
SERVER_NAME = "consul-nlb.example.internal"


class Env:
    """A stack with the inputs the mesh stack passes (VPC, key, fleet secrets) and the objects."""

    registrar_secret: secretsmanager.ISecret

    def __init__(self, app: cdk.App | None = None, **kwargs: Any) -> None:
        self.app = app or cdk.App()
        self.stack = cdk.Stack(self.app, "Mesh", env=cdk.Environment(region="us-east-1"))
        self.vpc = ec2.Vpc(self.stack, "Vpc", max_azs=2, nat_gateways=1)
        self.key = kms.Key(self.stack, "Key", enable_key_rotation=True)
        self.management = secretsmanager.Secret(self.stack, "Management", encryption_key=self.key)
        self.ca = secretsmanager.Secret(self.stack, "CaCert", encryption_key=self.key)
        self.objects = ConsulObjects(
            self.stack,
            "ConsulObjects",
            vpc=self.vpc,
            management_token_secret=self.management,
            ca_cert_secret=self.ca,
            kms_key=self.key,
            **{"consul_https_address": ADDRESS, "tls_server_name": SERVER_NAME, **kwargs},
        )

    def template(self) -> Template:
        return Template.from_stack(self.stack)

    def ref(self, construct: Any) -> dict[str, str]:
        return {"Ref": self.stack.get_logical_id(construct.node.default_child)}

    def resolve(self, value: Any) -> Any:
        return self.stack.resolve(value)


def _full(env: Env) -> Env:
    env.registrar_secret = env.objects.registrar_token()
    env.objects.service_token("frontend")
    env.objects.intention("frontend", "backend")
    env.objects.intention("admin", "backend", "deny")
    return env


@pytest.fixture(scope="module")
def env() -> Env:
    return _full(Env())


@pytest.fixture(scope="module")
def template(env: Env) -> Template:
    return env.template()


def _custom(template: Template, resource_type: str) -> dict[str, dict[str, Any]]:
    return template.find_resources(resource_type)


def _entries(template: Template) -> dict[tuple[str, str], dict[str, Any]]:
    entries = {}
    for resource in _custom(template, "Custom::ConsulConfigEntry").values():
        entry = json.loads(resource["Properties"]["Entry"])
        entries[(entry["Kind"], entry["Name"])] = entry
    return entries


# ------------------------------------------------------------------------------ the provider


def test_provider_functions_are_arm64_python_3_14_in_private_subnets(
    env: Env, template: Template
) -> None:
    private = [env.resolve(s.subnet_id) for s in env.vpc.private_subnets]
    for handler in ("provider.on_event", "provider.is_complete"):
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": handler,
                "Runtime": "python3.14",
                "Architectures": ["arm64"],
                "VpcConfig": {
                    "SubnetIds": Match.array_with(private),
                    "SecurityGroupIds": [
                        {
                            "Fn::GetAtt": [
                                Match.string_like_regexp("ConsulObjectsSecurityGroup"),
                                "GroupId",
                            ]
                        }
                    ],
                },
                "LoggingConfig": {
                    "LogGroup": {"Ref": Match.string_like_regexp("ConsulObjectsLogs")}
                },
            },
        )


def test_provider_code_is_the_plain_lambda_directory(template: Template) -> None:
    # No Docker bundling: the asset is lambda/consul_config as is (an S3 zip of the directory)
    functions = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": "provider.on_event"}}
    )
    (function,) = functions.values()
    assert set(function["Properties"]["Code"]) == {"S3Bucket", "S3Key"}


def test_provider_logs_are_kept_a_year_and_encrypted_with_the_key(
    env: Env, template: Template
) -> None:
    key = {"Fn::GetAtt": [env.stack.get_logical_id(env.key.node.default_child), "Arn"]}
    groups = template.find_resources("AWS::Logs::LogGroup")
    ours = {k: v for k, v in groups.items() if k.startswith("ConsulObjects")}
    assert len(ours) == 2  # provider functions, framework + waiter
    for group in ours.values():
        assert group["Properties"]["RetentionInDays"] == 365
        assert group["Properties"]["KmsKeyId"] == key


def test_provider_security_group_has_no_ingress_and_only_https_egress(template: Template) -> None:
    groups = template.find_resources(
        "AWS::EC2::SecurityGroup",
        {"Properties": {"GroupDescription": Match.string_like_regexp("Consul config provider")}},
    )
    (group,) = groups.values()
    assert "SecurityGroupIngress" not in group["Properties"]
    egress = [(r["FromPort"], r["CidrIp"]) for r in group["Properties"]["SecurityGroupEgress"]]
    assert egress == [(443, "0.0.0.0/0")]


def test_fleet_wiring_opens_exactly_the_consul_port_to_the_provider() -> None:
    # GIVEN the stack's wiring, here against a stand-in for the fleet's NLB security group
    env = Env()
    nlb = ec2.SecurityGroup(env.stack, "Nlb", vpc=env.vpc, allow_all_outbound=False)
    ec2.Connections(security_groups=[nlb]).allow_from(env.objects, ec2.Port.tcp(8501))
    template = env.template()
    provider_sg = env.stack.get_logical_id(env.objects.security_group.node.default_child)
    nlb_sg = env.stack.get_logical_id(nlb.node.default_child)
    # THEN the provider may leave on 8501 towards the NLB group only, and the NLB admits it
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupEgress",
        {
            "GroupId": {"Fn::GetAtt": [provider_sg, "GroupId"]},
            "DestinationSecurityGroupId": {"Fn::GetAtt": [nlb_sg, "GroupId"]},
            "FromPort": 8501,
            "ToPort": 8501,
        },
    )
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "GroupId": {"Fn::GetAtt": [nlb_sg, "GroupId"]},
            "SourceSecurityGroupId": {"Fn::GetAtt": [provider_sg, "GroupId"]},
            "FromPort": 8501,
        },
    )


def test_connections_let_the_stack_open_the_fleet_to_the_provider(env: Env) -> None:
    assert env.objects.connections.security_groups == [env.objects.security_group]


def test_waiter_retries_for_up_to_30_minutes(template: Template) -> None:
    machines = template.find_resources("AWS::StepFunctions::StateMachine")
    (machine,) = machines.values()
    definition = json.dumps(machine["Properties"]["DefinitionString"])
    assert '\\"IntervalSeconds\\":10' in definition
    assert '\\"MaxAttempts\\":180' in definition


# ------------------------------------------------------------------------------ permissions


def _role_statements(env: Env, template: Template) -> list[dict[str, Any]]:
    role = env.stack.get_logical_id(env.objects.role.node.default_child)
    policies = template.find_resources(
        "AWS::IAM::Policy", {"Properties": {"Roles": [{"Ref": role}]}}
    )
    return [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]


def _resources(statement: dict[str, Any]) -> list[Any]:
    resource = statement["Resource"]
    return resource if isinstance(resource, list) else [resource]


def _actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return set(action if isinstance(action, list) else [action])


def test_provider_reads_only_the_management_token_and_the_ca(env: Env, template: Template) -> None:
    readers = [
        s for s in _role_statements(env, template) if "secretsmanager:GetSecretValue" in _actions(s)
    ]
    read = [r for s in readers for r in _resources(s)]
    assert sorted(read, key=json.dumps) == sorted(
        [env.ref(env.management), env.ref(env.ca)], key=json.dumps
    )


def test_provider_writes_only_the_token_secrets_it_fills(env: Env, template: Template) -> None:
    statements = _role_statements(env, template)
    writers = [
        s for s in statements if any(a.startswith("secretsmanager:Put") for a in _actions(s))
    ]
    assert all(_actions(s) == {"secretsmanager:PutSecretValue"} for s in writers)
    written = sorted(json.dumps(r) for s in writers for r in _resources(s))
    token_secrets = template.find_resources(
        "AWS::SecretsManager::Secret",
        {"Properties": {"Description": Match.string_like_regexp("^Consul ACL token")}},
    )
    assert written == sorted(json.dumps({"Ref": logical}) for logical in token_secrets)
    assert len(written) == 2  # registrar + frontend sidecar


def test_provider_kms_use_is_scoped_to_the_key_through_secrets_manager(
    env: Env, template: Template
) -> None:
    key = {"Fn::GetAtt": [env.stack.get_logical_id(env.key.node.default_child), "Arn"]}
    statements = _role_statements(env, template)
    kms_statements = [s for s in statements if any(a.startswith("kms:") for a in _actions(s))]
    assert kms_statements, "the provider needs KMS to read and write the secrets"
    for statement in kms_statements:
        assert _resources(statement) == [key]
        assert _actions(statement) <= {"kms:Decrypt", "kms:GenerateDataKey"}
        assert "kms:ViaService" in json.dumps(statement["Condition"])
    assert all("*" not in _resources(s) for s in statements)


def test_token_secrets_are_encrypted_with_the_key(env: Env, template: Template) -> None:
    key = {"Fn::GetAtt": [env.stack.get_logical_id(env.key.node.default_child), "Arn"]}
    token_secrets = template.find_resources(
        "AWS::SecretsManager::Secret",
        {"Properties": {"Description": Match.string_like_regexp("^Consul ACL token")}},
    )
    assert len(token_secrets) == 2
    for secret in token_secrets.values():
        assert secret["Properties"]["KmsKeyId"] == key


def test_a_reader_of_a_token_secret_waits_for_the_token() -> None:
    # GIVEN something (the registrar, an ECS task) granted the returned secret
    env = _full(Env())
    reader = iam.Role(
        env.stack, "Reader", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com")
    )
    env.registrar_secret.grant_read(reader)
    template = env.template()
    policy = template.find_resources(
        "AWS::IAM::Policy", {"Properties": {"Roles": [env.ref(reader)]}}
    )
    (document,) = [p["Properties"]["PolicyDocument"] for p in policy.values()]
    # THEN its ARN comes from the token custom resource, so CloudFormation orders it after
    token = env.stack.get_logical_id(
        env.objects.node.find_child("RegistrarToken").node.default_child
    )
    assert {"Fn::GetAtt": [token, "TokenSecretArn"]} in [
        r for s in document["Statement"] for r in _resources(s)
    ]


# ------------------------------------------------------------------------------ Consul objects


def test_every_object_carries_the_connection_and_never_a_secret_value(
    env: Env, template: Template
) -> None:
    for kind in ("Custom::ConsulAclPolicy", "Custom::ConsulAclToken", "Custom::ConsulConfigEntry"):
        for resource in _custom(template, kind).values():
            props = resource["Properties"]
            assert props["ConsulHttpAddr"] == ADDRESS
            assert props["TlsServerName"] == SERVER_NAME
            assert props["ManagementTokenSecretArn"] == env.ref(env.management)
            assert props["CaCertSecretArn"] == env.ref(env.ca)
            assert "SecretID" not in json.dumps(props)


def test_default_posture_is_tcp_proxy_defaults_and_deny_all_intentions(template: Template) -> None:
    entries = _entries(template)
    assert entries[("proxy-defaults", "global")]["Config"] == {"protocol": "tcp"}
    assert entries[("service-intentions", "*")]["Sources"] == [{"Name": "*", "Action": "deny"}]


def test_intentions_to_one_destination_share_one_entry(template: Template) -> None:
    entries = _entries(template)
    assert entries[("service-intentions", "backend")]["Sources"] == [
        {"Name": "admin", "Action": "deny"},
        {"Name": "frontend", "Action": "allow"},
    ]
    assert len(_custom(template, "Custom::ConsulConfigEntry")) == 3


def test_proxy_protocol_is_configurable() -> None:
    entries = _entries(Env(proxy_protocol="http").template())
    assert entries[("proxy-defaults", "global")]["Config"] == {"protocol": "http"}


def test_registrar_token_links_its_least_privilege_policy(env: Env, template: Template) -> None:
    ((policy_id, policy),) = _custom(template, "Custom::ConsulAclPolicy").items()
    assert policy["Properties"]["Name"] == "ecs-registrar"
    assert policy["Properties"]["Rules"] == registrar_rules()
    tokens = _custom(template, "Custom::ConsulAclToken")
    registrar = next(t for t in tokens.values() if t["Properties"]["Policies"])
    assert registrar["Properties"]["Policies"] == [{"Ref": policy_id}]
    assert registrar["Properties"]["ServiceIdentities"] == []


def test_registrar_rules_grant_task_nodes_services_and_its_kv_prefix_only() -> None:
    assert registrar_rules() == (
        'node_prefix "ecs-task-" {\n  policy = "write"\n}\n'
        'service_prefix "" {\n  policy = "write"\n}\n'
        'key_prefix "ecs-registrar/" {\n  policy = "write"\n}\n'
    )


def test_registrar_rules_narrow_to_named_services_and_their_sidecars() -> None:
    rules = registrar_rules(["frontend"])
    assert 'service_prefix ""' not in rules
    assert 'service "frontend" {\n  policy = "write"\n}' in rules
    assert 'service "frontend-sidecar-proxy" {\n  policy = "write"\n}' in rules


def test_service_token_is_the_service_identity_of_its_sidecar(template: Template) -> None:
    tokens = _custom(template, "Custom::ConsulAclToken")
    sidecar = next(t for t in tokens.values() if t["Properties"]["ServiceIdentities"])
    assert sidecar["Properties"]["ServiceIdentities"] == ["frontend"]
    assert sidecar["Properties"]["Policies"] == []


def test_depend_on_orders_every_object_after_the_fleet() -> None:
    env = Env()
    fleet = cdk.CfnResource(env.stack, "Fleet", type="AWS::CloudFormation::WaitConditionHandle")
    env.objects.depend_on(fleet)
    env.objects.registrar_token()
    resources = env.template().to_json()["Resources"]
    consul_objects = {k: v for k, v in resources.items() if v["Type"].startswith("Custom::Consul")}
    assert len(consul_objects) == 4  # proxy-defaults, deny-all, registrar policy and token
    assert all("Fleet" in v.get("DependsOn", []) for v in consul_objects.values())


def test_construct_ids_of_stateful_resources_are_stable(env: Env) -> None:
    # Renaming these replaces the Consul object or the secret running tasks read.
    children = {child.node.id for child in env.objects.node.children}
    assert {
        "ProxyDefaults",
        "WildcardIntentions",
        "BackendIntentions",
        "RegistrarPolicy",
        "RegistrarToken",
        "RegistrarTokenSecret",
        "FrontendSidecarToken",
        "FrontendSidecarTokenSecret",
    } <= children


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proxy_protocol": "udp"}, "proxy_protocol must be one of tcp, http, http2, grpc"),
        ({"consul_https_address": "http://consul:8500"}, "consul_https_address must be https://"),
    ],
)
def test_fails_when_the_construct_gets_a_bad_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Env(**kwargs)


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda o: o.service_token("Front_End"), "service_name must be a DNS label"),
        (lambda o: o.intention("frontend", "backend", "maybe"), "action must be allow or deny"),
        (lambda o: o.intention("*", "*", "deny"), r"intention \* -> \* is already declared"),
        (lambda o: o.add_policy("P", "bad name", ""), "ACL policy name must be letters"),
        (lambda o: o.add_token("T", "nothing", []), "needs at least one policy or service"),
        (lambda o: o.add_config_entry("E", {"Kind": "service-defaults"}), "needs Kind and Name"),
        (
            lambda o: o.add_config_entry("Again", {"Kind": "proxy-defaults", "Name": "global"}),
            "config/proxy-defaults/global is already declared by ProxyDefaults",
        ),
        (lambda o: o.service_defaults("web", "udp"), "protocol must be one of"),
    ],
)
def test_fails_when_an_object_is_declared_badly(
    declare: Callable[[ConsulObjects], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        declare(Env().objects)


# ------------------------------------------------------------------------------ cdk-nag


def test_no_unacknowledged_nag_findings_in_the_construct(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path))
    _full(Env(app))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), NIST80053R5Checks(app))
    # The bare test VPC has findings of its own (synth raises); only ours are checked below.
    with contextlib.suppress(RuntimeError):
        app.synth()
    ours = [f for f in unacknowledged(tmp_path) if "/ConsulObjects/" in f.path]
    assert ours == [], "\n".join(f"{f.rule} at {f.path}" for f in ours)


def _consul_objects(template: Template) -> dict[str, dict[str, Any]]:
    return {
        lid: r
        for lid, r in template.to_json()["Resources"].items()
        if r["Type"].startswith("Custom::Consul")
    }


def test_bumping_the_generation_sends_every_object_an_update(template: Template) -> None:
    # GIVEN the same declarations, once at generation 0 and once bumped to 3
    bumped = _full(Env(apply_generation=3)).template()
    before, after = _consul_objects(template), _consul_objects(bumped)
    # THEN the same objects (same logical IDs: nothing is replaced), each with one property
    # changed, so CloudFormation sends each an Update and the provider re-applies it
    assert before.keys() == after.keys()
    assert len(before) >= 5
    for lid, resource in after.items():
        assert resource["Properties"]["ApplyGeneration"] == "3", lid
        assert "ApplyGeneration" not in before[lid]["Properties"], lid
        rest = {k: v for k, v in resource["Properties"].items() if k != "ApplyGeneration"}
        assert rest == before[lid]["Properties"], lid


def test_fails_when_the_generation_is_negative() -> None:
    with pytest.raises(ValueError, match="apply_generation must be 0 or more, got -1"):
        Env(apply_generation=-1)


def test_the_token_secrets_say_how_rotation_really_works(synthesized: Any) -> None:
    # The construct ID of a token comes from the service name (service_token): a "new
    # construct ID" is not how its SecretID changes. The reason names the real procedure.
    from tools.nag_gate import acknowledged

    reasons = {f.reason for f in acknowledged(synthesized.outdir) if "Token" in f.path}
    token_reasons = {r for r in reasons if "SecretID" in r}
    assert token_reasons
    assert not {r for r in token_reasons if "new construct ID" in r or "in CDK;" in r}
    assert all("consul_objects_generation" in r for r in token_reasons), token_reasons


# Every disposition an operator-token rule may carry, and the rule kinds Consul knows
# (hashicorp/consul website/content/docs/reference/acl/rule.mdx, "Overview").
_RULE = re.compile(r'^(\w+)(?: "([^"]*)")? (?:= "(\w+)"|\{)$')


def _rules(hcl: str) -> list[tuple[str, str | None, dict[str, str]]]:
    """(resource, label, {field: disposition}) of each rule of the flat HCL we write."""
    parsed: list[tuple[str, str | None, dict[str, str]]] = []
    lines = iter(hcl.splitlines())
    for line in lines:
        found = _RULE.match(line)
        assert found, line
        kind, label, value = found.groups()
        if value is not None:
            parsed.append((kind, label, {"policy": value}))
            continue
        fields: dict[str, str] = {}
        for inner in lines:
            if inner == "}":
                break
            name, _, disposition = inner.strip().partition(" = ")
            fields[name] = disposition.strip('"')
        parsed.append((kind, label, fields))
    return parsed


def test_operator_rules_read_and_never_write() -> None:
    # GIVEN the operators' policy WHEN it is parsed THEN every disposition is read, there is
    # no acl rule (token listing, snapshots), and KV is limited to the registrar's records
    rules = _rules(operator_rules())
    assert {d for _, _, fields in rules for d in fields.values()} == {"read"}
    kinds = {(kind, label) for kind, label, _ in rules}
    assert kinds == {
        ("node_prefix", ""),
        ("service_prefix", ""),
        ("agent_prefix", ""),
        ("key_prefix", "ecs-registrar/"),
        ("operator", None),
        ("mesh", None),
    }
    assert "write" not in operator_rules()
    assert not any(kind in ("acl", "keyring") for kind, _ in kinds)


def test_operator_token_has_its_own_policy_and_secret() -> None:
    env = Env()
    secret = env.objects.operator_token()
    template = env.template()
    policies = _custom(template, "Custom::ConsulAclPolicy")
    ((policy_id, policy),) = policies.items()
    assert policy["Properties"]["Name"] == "operator-read-only"
    assert policy["Properties"]["Rules"] == operator_rules()
    ((token_id, token),) = _custom(template, "Custom::ConsulAclToken").items()
    assert token["Properties"]["Policies"] == [{"Ref": policy_id}]
    assert token["Properties"]["ServiceIdentities"] == []
    assert env.resolve(secret.secret_arn) == {"Fn::GetAtt": [token_id, "TokenSecretArn"]}
