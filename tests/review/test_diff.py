"""The review diff on two small assemblies: each kind of change once, in its own category.

A base app (a VPC, a load-balanced server group, a function with a role reading a secret, a
queue, a key, a host-mode task, an intention, an acknowledgement) and, per test, the same app
with one change. Each test asserts the change is reported exactly once in the category it
belongs to, with what a reviewer needs (source, ports, reach; action and wildcard; reader),
whether it is broadening, and that no other category reports anything (resource counts
aside, which change whenever a resource is added).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.review.builder import allow, getatt, policy, ref, resource, write_assembly
from tools.review.collect import build_review
from tools.review.compare import Change
from tools.review.diff import diff
from tools.review.twin import facts

Template = dict[str, Any]
ACK = "AwsSolutions::AwsSolutions-IAM5[Resource::*]"
SERVICE_PRINCIPAL = {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {}}


def _trust(service: str) -> dict[str, Any]:
    return policy({**SERVICE_PRINCIPAL, "Principal": {"Service": service}})


def _base() -> Template:
    return {
        "Resources": {
            "Vpc": resource("AWS::EC2::VPC", "App/Vpc/Resource", CidrBlock="10.0.0.0/16"),
            "ServerGroup": resource(
                "AWS::EC2::SecurityGroup",
                "App/ServerGroup/Resource",
                GroupDescription="servers",
                VpcId=ref("Vpc"),
                SecurityGroupIngress=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 8501,
                        "ToPort": 8501,
                        "SourceSecurityGroupId": getatt("ClientGroup", "GroupId"),
                    }
                ],
                SecurityGroupEgress=[
                    {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0"}
                ],
            ),
            "ClientGroup": resource(
                "AWS::EC2::SecurityGroup",
                "App/ClientGroup/Resource",
                GroupDescription="clients",
                VpcId=ref("Vpc"),
                SecurityGroupEgress=[
                    {"IpProtocol": "tcp", "FromPort": 8501, "ToPort": 8501, "CidrIp": "10.0.0.0/16"}
                ],
            ),
            "LoadBalancer": resource(
                "AWS::ElasticLoadBalancingV2::LoadBalancer",
                "App/LoadBalancer/Resource",
                Scheme="internal",
                Type="network",
                SecurityGroups=[getatt("ServerGroup", "GroupId")],
            ),
            "Listener": resource(
                "AWS::ElasticLoadBalancingV2::Listener",
                "App/LoadBalancer/Listener/Resource",
                LoadBalancerArn=ref("LoadBalancer"),
                Port=8501,
                Protocol="TCP",
            ),
            "Role": resource(
                "AWS::IAM::Role",
                "App/Role/Resource",
                AssumeRolePolicyDocument=_trust("lambda.amazonaws.com"),
            ),
            "RolePolicy": resource(
                "AWS::IAM::Policy",
                "App/Role/DefaultPolicy/Resource",
                PolicyName="RoleDefaultPolicy",
                Roles=[ref("Role")],
                PolicyDocument=policy(
                    allow("secretsmanager:GetSecretValue", ref("Secret")),
                    allow("sqs:SendMessage", getatt("Queue", "Arn")),
                ),
            ),
            "Function": resource(
                "AWS::Lambda::Function",
                "App/Function/Resource",
                Role=getatt("Role", "Arn"),
                VpcConfig={"SecurityGroupIds": [getatt("ClientGroup", "GroupId")]},
                Environment={"Variables": {"SECRET_ARN": ref("Secret")}},
            ),
            "Secret": resource("AWS::SecretsManager::Secret", "App/Secret/Resource"),
            "Queue": resource("AWS::SQS::Queue", "App/Queue/Resource", SqsManagedSseEnabled=True),
            "Key": resource(
                "AWS::KMS::Key",
                "App/Key/Resource",
                EnableKeyRotation=True,
                KeyPolicy=policy(
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
                        "Action": "kms:*",
                        "Resource": "*",
                    }
                ),
            ),
            "Task": resource(
                "AWS::ECS::TaskDefinition",
                "App/Task/Resource",
                NetworkMode="host",
                RequiresCompatibilities=["EXTERNAL"],
                ContainerDefinitions=[
                    {"Name": "app", "DockerLabels": {"consul-mesh.enabled": "true"}},
                    {"Name": "envoy", "PortMappings": [{"ContainerPort": 20000}]},
                ],
            ),
            "Intentions": resource(
                "Custom::ConsulConfigEntry",
                "App/Intentions/Default",
                ServiceToken=getatt("Function", "Arn"),
                Entry=json.dumps(
                    {
                        "Kind": "service-intentions",
                        "Name": "backend",
                        "Sources": [{"Name": "frontend", "Action": "allow"}],
                    }
                ),
            ),
        }
    }


BASE_ACKS = {"App/Key": {"AwsSolutions::AwsSolutions-KMS5": "rotation is on"}}


def _review(
    folder: Path, template: Template, acks: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    outdir = write_assembly(
        folder, {"App": template}, acknowledgements=BASE_ACKS if acks is None else acks
    )
    return facts(build_review(outdir, linter=None))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _review(tmp_path_factory.mktemp("base"), _base())


Edit = Callable[[Template], None]


def _changes(
    base: dict[str, Any],
    tmp_path: Path,
    edit: Edit,
    acks: dict[str, dict[str, str]] | None = None,
) -> list[Change]:
    template = copy.deepcopy(_base())
    edit(template)
    return diff(base, _review(tmp_path, template, acks))


def _one(changes: list[Change], category: str) -> Change:
    """The single change in `category`; nothing in any other category but resource counts."""
    found = [c for c in changes if c.category == category]
    assert len(found) == 1, found
    others = [c for c in changes if c.category not in (category, "counts")]
    assert others == [], others
    return found[0]


def _props(template: Template, logical_id: str) -> dict[str, Any]:
    props: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return props


def test_the_same_app_has_no_changes(base: dict[str, Any], tmp_path: Path) -> None:
    assert _changes(base, tmp_path, lambda _: None) == []


def test_an_on_prem_cidr_on_two_ports_is_one_broadening_ingress_path(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _props(template, "ServerGroup")["SecurityGroupIngress"] += [
            {"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "CidrIp": "172.16.0.0/12"}
            for p in (8501, 8503)
        ]

    change = _one(_changes(base, tmp_path, edit), "ingress")
    assert change.action == "added"
    assert (
        change.what
        == "172.16.0.0/12 (outside the VPC) → LoadBalancer: tcp 8501 HTTPS API, 8503 gRPC-TLS"
    )
    assert change.broadening == "reachable from outside the VPC"
    assert [r["logical_id"] for r in change.where] == ["ServerGroup"]


def test_an_ingress_rule_from_a_group_inside_the_vpc_is_not_broadening(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        rule = {"IpProtocol": "tcp", "FromPort": 8503, "ToPort": 8503}
        rule["SourceSecurityGroupId"] = getatt("ClientGroup", "GroupId")
        _props(template, "ServerGroup")["SecurityGroupIngress"].append(rule)

    change = _one(_changes(base, tmp_path, edit), "ingress")
    assert (change.action, change.broadening) == ("added", "")
    assert change.what.startswith("security group ClientGroup → LoadBalancer: tcp 8503")


def test_an_internet_facing_listener_is_broadening(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        template["Resources"]["LoadBalancer"]["Properties"]["Scheme"] = "internet-facing"

    change = _one(_changes(base, tmp_path, edit), "ingress")
    assert change.action == "changed"
    assert "scheme internal → internet-facing" in change.what
    assert change.broadening == "now reachable from outside the VPC"


def test_egress_to_an_on_prem_cidr_is_broadening(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        _props(template, "ServerGroup")["SecurityGroupEgress"].append(
            {"IpProtocol": "tcp", "FromPort": 20000, "ToPort": 20999, "CidrIp": "192.168.0.0/16"}
        )

    change = _one(_changes(base, tmp_path, edit), "egress")
    assert change.action == "added"
    assert change.what == (
        "LoadBalancer (group ServerGroup) → 192.168.0.0/16 (outside the VPC): tcp 20000-20999"
    )
    assert change.broadening == "sends to outside the VPC"


def test_a_published_app_port_is_broadening_and_says_it_bypasses_the_mesh(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _props(template, "Task")["ContainerDefinitions"][0]["PortMappings"] = [
            {"ContainerPort": 9090}
        ]

    change = _one(_changes(base, tmp_path, edit), "host-ports")
    assert change.action == "added"
    assert change.what == (
        "Task (host mode): app 9090/tcp → host 9090 (app, no mTLS; binds unknown)"
    )
    assert "bypasses mTLS and intentions" in change.broadening


def _metrics_bound_to(address: str) -> Edit:
    """The base task with a sidecar metrics listener on 9102, bound where MeshService's init
    container says (ENVOY_PROMETHEUS_BIND)."""

    def edit(template: Template) -> None:
        app, envoy = _props(template, "Task")["ContainerDefinitions"]
        app["DockerLabels"]["consul-mesh.proxy-container"] = "envoy"
        envoy["PortMappings"] = [{"ContainerPort": 20000}, {"ContainerPort": 9102}]
        envoy["Environment"] = [{"Name": "ENVOY_PROMETHEUS_BIND", "Value": f"{address}:9102"}]

    return edit


def test_metrics_moved_to_every_host_interface_are_broadening(tmp_path: Path) -> None:
    # GIVEN a sidecar whose metrics listener is on the host's loopback (the default)
    loopback = copy.deepcopy(_base())
    _metrics_bound_to("127.0.0.1")(loopback)
    before = _review(tmp_path / "before", loopback)
    # WHEN prometheus_bind_address opens it to every interface of the host
    changes = _changes(before, tmp_path / "after", _metrics_bound_to("0.0.0.0"))
    # THEN one changed host port, broadening
    change = _one(changes, "host-ports")
    assert change.action == "changed"
    assert "bind loopback → all interfaces" in change.what
    assert change.broadening == (
        "no longer bound to loopback, now open to any client of the host: envoy 9102"
    )


def test_an_unacknowledged_wildcard_is_highlighted_and_broadening(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _props(template, "RolePolicy")["PolicyDocument"]["Statement"].append(
            allow("s3:GetObject", "*")
        )

    change = _one(_changes(base, tmp_path, edit), "iam")
    assert change.action == "added"
    assert (
        change.what
        == "Role/Resource: Allow s3:GetObject on * — wildcard `Resource::*` NOT acknowledged"
    )
    assert change.broadening == (
        "a wildcard statement not in the baseline (*): `Resource::*` NOT acknowledged"
    )


def test_an_acknowledged_wildcard_names_its_acknowledgement_which_is_itself_broadening(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _props(template, "RolePolicy")["PolicyDocument"]["Statement"].append(
            allow("s3:GetObject", "*")
        )

    acks = {**BASE_ACKS, "App/Role": {ACK: "reads any object of the data lake"}}
    changes = _changes(base, tmp_path, edit, acks)
    [iam] = [c for c in changes if c.category == "iam"]
    [ack] = [c for c in changes if c.category == "acknowledgements"]
    assert len(changes) == 2
    assert iam.what.endswith(
        "wildcard `Resource::*` acknowledged (AwsSolutions-IAM5[Resource::*] at App/Role)"
    )
    # a new wildcard statement is broadening even when acknowledged: the reviewer re-judges it
    assert iam.broadening == (
        "a wildcard statement not in the baseline (*): `Resource::*` covered by a new "
        "acknowledgement (“reads any object of the data lake”)"
    )
    assert ack.action == "added"
    assert ack.what == f"`{ACK}` at App/Role: reads any object of the data lake"
    assert ack.broadening.startswith("a new acknowledgement waives a cdk-nag finding")


def test_a_statement_that_gains_an_action_is_one_changed_statement(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        statement = _props(template, "RolePolicy")["PolicyDocument"]["Statement"][1]
        statement["Action"] = ["sqs:SendMessage", "sqs:DeleteQueue"]

    change = _one(_changes(base, tmp_path, edit), "iam")
    assert change.action == "changed"
    assert change.what.endswith("(actions +sqs:DeleteQueue)")
    assert change.broadening == ""


def test_a_new_reader_of_a_secret_is_broadening(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        template["Resources"]["OtherRole"] = resource(
            "AWS::IAM::Role",
            "App/OtherRole/Resource",
            AssumeRolePolicyDocument=_trust("ecs-tasks.amazonaws.com"),
            Policies=[
                {
                    "PolicyName": "read",
                    "PolicyDocument": policy(allow("secretsmanager:GetSecretValue", ref("Secret"))),
                }
            ],
        )

    changes = _changes(base, tmp_path, edit)
    [secret] = [c for c in changes if c.category == "secrets"]
    assert secret.action == "added"
    assert secret.what.startswith("OtherRole reads Secret (GetSecretValue")
    assert secret.broadening == "a new reader of a secret"
    # the role itself and its statement are IAM facts, each once
    assert [c.action for c in changes if c.category == "iam"] == ["added", "added"]
    assert {c.category for c in changes} == {"secrets", "iam", "counts"}


def test_a_new_writer_of_a_secret_is_broadening(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        statement = _props(template, "RolePolicy")["PolicyDocument"]["Statement"][0]
        statement["Action"] = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]

    changes = _changes(base, tmp_path, edit)
    [secret] = [c for c in changes if c.category == "secrets"]
    assert secret.what == "Role/Resource writes Secret (PutSecretValue, names it)"
    assert secret.broadening == "a new writer of a secret"
    assert [c.action for c in changes if c.category == "iam"] == ["changed"]


def test_a_store_that_loses_encryption_is_broadening(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        _props(template, "Queue")["SqsManagedSseEnabled"] = False

    change = _one(_changes(base, tmp_path, edit), "encryption")
    assert change.action == "changed"
    assert change.what.startswith("SQS queue Queue: at rest none (SqsManagedSseEnabled is false)")
    assert change.broadening == "not encrypted at rest"


def test_a_key_policy_statement_for_a_service_without_condition_is_broadening(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        _props(template, "Key")["KeyPolicy"]["Statement"].append(
            {
                "Effect": "Allow",
                "Principal": {"Service": "logs.amazonaws.com"},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                "Resource": "*",
            }
        )

    change = _one(_changes(base, tmp_path, edit), "policies")
    assert change.action == "added"
    assert (
        change.what
        == "key Key: Allow Service logs.amazonaws.com: kms:Decrypt, kms:GenerateDataKey*"
    )
    assert "without a condition" in change.broadening


def test_an_acknowledgement_moved_with_its_construct_is_a_move(
    base: dict[str, Any], tmp_path: Path
) -> None:
    acks = {"App/Keys/Key": BASE_ACKS["App/Key"]}
    change = _one(_changes(base, tmp_path, lambda _: None, acks), "acknowledgements")
    assert (change.action, change.broadening) == ("moved", "")
    assert change.what.endswith("(was at App/Key)")


def test_an_allow_intention_is_broadening(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        entry = {
            "Kind": "service-intentions",
            "Name": "backend",
            "Sources": [
                {"Name": "frontend", "Action": "allow"},
                {"Name": "batch", "Action": "allow"},
            ],
        }
        _props(template, "Intentions")["Entry"] = json.dumps(entry)

    change = _one(_changes(base, tmp_path, edit), "consul")
    assert (change.action, change.what) == ("added", "intention batch → backend: allow")
    assert change.broadening == "opens a mesh path"


def test_a_new_logical_id_for_the_same_construct_is_one_move(
    base: dict[str, Any], tmp_path: Path
) -> None:
    def edit(template: Template) -> None:
        # the group is named by the load balancer, the function and the other group's rule
        text = json.dumps(template).replace('"ClientGroup"', '"ClientGroupRenamed"')
        template.clear()
        template.update(json.loads(text))

    changes = _changes(base, tmp_path, edit)
    assert [(c.category, c.action) for c in changes] == [("moves", "moved")]
    assert "`ClientGroup` → `ClientGroupRenamed`" in changes[0].what
    assert changes[0].where == (
        {"stack": "App", "logical_id": "ClientGroupRenamed", "path": "App/ClientGroup/Resource"},
    )


def test_resource_counts_change_by_type(base: dict[str, Any], tmp_path: Path) -> None:
    def edit(template: Template) -> None:
        template["Resources"]["Topic"] = resource("AWS::SNS::Topic", "App/Topic/Resource")

    changes = _changes(base, tmp_path, edit)
    [count] = [c for c in changes if c.category == "counts"]
    assert count.what == "AWS::SNS::Topic: 0 → 1 (+1) in App"
    # a new topic is a new store: its encryption is reported once, and is weaker than default
    [store] = [c for c in changes if c.category == "encryption"]
    assert store.broadening == "not encrypted at rest; no TLS enforced"
    assert len(changes) == 2


def test_a_vpn_into_the_vpc_is_a_broadening_network_path(
    base: dict[str, Any], tmp_path: Path
) -> None:
    # review M3: `onprem_connectivity=vpn` was "8 changes, 0 broadening", counts only
    def edit(template: Template) -> None:
        template["Resources"]["Vpn"] = resource(
            "AWS::EC2::VPNConnection",
            "App/Vpn/Resource",
            CustomerGatewayId="cgw-0123",
            VpnGatewayId="vgw-0123",
            Type="ipsec.1",
        )
        template["Resources"]["ToOnPrem"] = resource(
            "AWS::EC2::Route",
            "App/Vpc/Private/ToOnPrem",
            DestinationCidrBlock="192.168.0.0/16",
            GatewayId="vgw-0123",
            RouteTableId="rtb-0123",
        )
        template["Resources"]["ToNat"] = resource(
            "AWS::EC2::Route",
            "App/Vpc/Private/ToNat",
            DestinationCidrBlock="0.0.0.0/0",
            NatGatewayId="nat-0123",
            RouteTableId="rtb-0123",
        )

    paths = sorted(
        (c.what, bool(c.broadening))
        for c in _changes(base, tmp_path, edit)
        if c.category == "paths"
    )
    assert paths == [
        ("VPN connection Vpn: customer gateway cgw-0123 ↔ vgw-0123", True),
        ("route ToNat: 0.0.0.0/0 → NAT gateway nat-0123", False),
        ("route ToOnPrem: 192.168.0.0/16 → gateway vgw-0123", True),
    ]


def test_removing_a_groups_egress_rules_says_what_an_update_does(
    base: dict[str, Any], tmp_path: Path
) -> None:
    # review m1: reported only as "EC2's default rule, all traffic", true only on a fresh deploy
    def edit(template: Template) -> None:
        del _props(template, "ServerGroup")["SecurityGroupEgress"]

    added = [
        c for c in _changes(base, tmp_path, edit) if c.category == "egress" and c.action == "added"
    ]
    assert len(added) == 2, added  # 0.0.0.0/0 and ::/0
    for change in added:
        assert "on an update of the deployed group CloudFormation adds none" in change.what
        assert change.broadening  # a fresh deploy still gets allow-all


def test_a_management_token_newly_injected_is_marked(base: dict[str, Any], tmp_path: Path) -> None:
    # review m5: the ARN is not the value, but a management token's deserves a second look
    def edit(template: Template) -> None:
        template["Resources"]["Secret"]["Properties"] = {
            "Description": "Consul initial management ACL token"
        }
        _props(template, "Function")["Environment"]["Variables"]["ADMIN_ARN"] = ref("Secret")

    [injected] = [
        c for c in _changes(base, tmp_path, edit) if c.category == "secrets" and c.action == "added"
    ]
    assert "ADMIN_ARN" in injected.what
    assert "a management token" in injected.what
