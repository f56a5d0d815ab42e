"""Network exposure: ingress rules and listeners, with their reach judged against the VPC."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.review.builder import getatt, ref, resource, write_assembly
from tools.review.exposure import Reach, exposure, ingress_rules, listeners, port_range
from tools.review.load import load_assembly

VPC = resource("AWS::EC2::VPC", "App/Vpc/Resource", CidrBlock="10.0.0.0/16")


def _group(*rules: dict[str, object], path: str = "App/Sg/Resource") -> dict[str, object]:
    return resource(
        "AWS::EC2::SecurityGroup",
        path,
        GroupDescription="probe",
        VpcId=ref("Vpc"),
        SecurityGroupIngress=list(rules),
    )


def _rules(tmp_path: Path, **resources: dict[str, object]) -> dict[str, Reach]:
    template = {"Resources": {"Vpc": VPC, **resources}}
    assembly = load_assembly(write_assembly(tmp_path, {"App": template}))
    return {rule.source: rule.reach for rule in ingress_rules(assembly)}


def test_ingress_from_anywhere_is_critical(tmp_path: Path) -> None:
    # GIVEN SSH open to every IPv4 address and HTTPS to every IPv6 address
    group = _group(
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0"},
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIpv6": "::/0"},
    )
    # WHEN the exposure is evaluated
    assembly = load_assembly(write_assembly(tmp_path, {"App": {"Resources": {"Sg": group}}}))
    found = exposure(assembly)
    # THEN both rules are CRITICAL, with their ports and the group's construct path
    assert [(r.source, r.ports, r.reach) for r in found.critical] == [
        ("0.0.0.0/0", "22", Reach.ANYWHERE),
        ("::/0", "443", Reach.ANYWHERE),
    ]
    assert found.critical[0].group_label == "`Sg` (App/Sg/Resource)"


def test_cidr_outside_the_vpc_is_reachable_from_outside(tmp_path: Path) -> None:
    # GIVEN one rule from on-premises, one from a subnet of the VPC, one from the VPC itself
    reach = _rules(
        tmp_path,
        Sg=_group(
            {"IpProtocol": "tcp", "FromPort": 8501, "ToPort": 8501, "CidrIp": "192.168.0.0/16"},
            {"IpProtocol": "tcp", "FromPort": 8501, "ToPort": 8501, "CidrIp": "10.0.3.0/24"},
            {
                "IpProtocol": "tcp",
                "FromPort": 8300,
                "ToPort": 8300,
                "CidrIp": getatt("Vpc", "CidrBlock"),
            },
        ),
    )
    # THEN only the on-premises range counts as outside; the VPC's own block resolves to it
    assert reach == {
        "192.168.0.0/16": Reach.OUTSIDE_VPC,
        "10.0.3.0/24": Reach.INSIDE_VPC,
        "10.0.0.0/16": Reach.INSIDE_VPC,
    }


def test_unresolvable_source_counts_as_outside(tmp_path: Path) -> None:
    reach = _rules(
        tmp_path,
        Sg=_group({"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIp": ref("Param")}),
    )
    assert reach == {"?": Reach.UNRESOLVED}
    assert Reach.UNRESOLVED.external


def test_imported_vpc_cidr_given_on_the_command_line(tmp_path: Path) -> None:
    # GIVEN a group in a VPC the app imports (no VPC resource), and a rule from a subnet of it
    group = resource(
        "AWS::EC2::SecurityGroup",
        GroupDescription="probe",
        VpcId="vpc-0123",
        SecurityGroupIngress=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "CidrIp": "172.16.4.0/24"}
        ],
    )
    assembly = load_assembly(write_assembly(tmp_path, {"App": {"Resources": {"Sg": group}}}))
    # WHEN the VPC's CIDR is unknown, THEN the rule counts as outside; WHEN given, inside
    assert ingress_rules(assembly)[0].reach is Reach.OUTSIDE_VPC
    assert ingress_rules(assembly, vpc_cidrs=["172.16.0.0/16"])[0].reach is Reach.INSIDE_VPC


def test_standalone_rule_resolves_groups_to_logical_ids_and_paths(tmp_path: Path) -> None:
    ingress = resource(
        "AWS::EC2::SecurityGroupIngress",
        "App/Server/from Client:8300",
        GroupId=getatt("ServerSg", "GroupId"),
        SourceSecurityGroupId=getatt("ClientSg", "GroupId"),
        IpProtocol="tcp",
        FromPort=8300,
        ToPort=8302,
        Description="Consul RPC",
    )
    template = {
        "Resources": {
            "Vpc": VPC,
            "ServerSg": _group(path="App/Server/Sg/Resource"),
            "ClientSg": _group(path="App/Client/Sg/Resource"),
            "Rule": ingress,
        }
    }
    [rule] = ingress_rules(load_assembly(write_assembly(tmp_path, {"App": template})))
    assert (rule.group, rule.source, rule.ports, rule.reach) == (
        "ServerSg",
        "ClientSg",
        "8300-8302",
        Reach.GROUP,
    )
    assert rule.group_label == "`ServerSg` (App/Server/Sg/Resource)"
    assert rule.source_label == "`ClientSg` (App/Client/Sg/Resource)"
    assert (rule.declared_by, rule.description) == ("Rule", "Consul RPC")


@pytest.mark.parametrize(
    "import_",
    [
        {"Fn::ImportValue": "Producer:ExportsOutputFnGetAttServerSgGroupId"},
        {
            "Fn::GetStackOutput": {
                "StackName": "Producer",
                "Region": "us-east-1",
                "OutputName": "PublishServerSgGroupId",
            }
        },
    ],
    ids=["strong-reference", "weak-reference"],
)
def test_source_group_in_another_stack_resolves_through_the_export(
    tmp_path: Path, import_: dict[str, object]
) -> None:
    # GIVEN the consumer's rule names the producer's group the two ways CDK references stacks
    producer = {
        "Resources": {"Vpc": VPC, "ServerSg": _group(path="Producer/ServerSg/Resource")},
        "Outputs": {
            "ExportsOutputFnGetAttServerSgGroupId": {
                "Value": getatt("ServerSg", "GroupId"),
                "Export": {"Name": "Producer:ExportsOutputFnGetAttServerSgGroupId"},
            },
            "PublishServerSgGroupId": {"Value": getatt("ServerSg", "GroupId")},
        },
    }
    consumer = {
        "Resources": {
            "ClientSg": resource(
                "AWS::EC2::SecurityGroup",
                "Consumer/ClientSg/Resource",
                GroupDescription="probe",
                SecurityGroupIngress=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 8500,
                        "ToPort": 8500,
                        "SourceSecurityGroupId": import_,
                    }
                ],
            )
        }
    }
    assembly = load_assembly(write_assembly(tmp_path, {"Producer": producer, "Consumer": consumer}))
    # WHEN the rules are read
    [rule] = ingress_rules(assembly)
    # THEN the source is the producer's group, labelled with its path and stack
    assert (rule.stack, rule.group, rule.source) == ("Consumer", "ClientSg", "ServerSg")
    assert rule.source_label == "`ServerSg` (Producer/ServerSg/Resource) in Producer"


def test_listener_reach_follows_the_load_balancer_scheme(tmp_path: Path) -> None:
    template = {
        "Resources": {
            "Internal": resource(
                "AWS::ElasticLoadBalancingV2::LoadBalancer",
                Scheme="internal",
                Type="network",
                SecurityGroups=["sg-0123456789abcdef0"],
            ),
            "Public": resource("AWS::ElasticLoadBalancingV2::LoadBalancer"),  # CFN defaults
            "Tcp": resource(
                "AWS::ElasticLoadBalancingV2::Listener",
                LoadBalancerArn=ref("Internal"),
                Port=8501,
                Protocol="TCP",
            ),
            "Http": resource(
                "AWS::ElasticLoadBalancingV2::Listener",
                LoadBalancerArn=ref("Public"),
                Port=80,
                Protocol="HTTP",
            ),
        }
    }
    found = listeners(load_assembly(write_assembly(tmp_path, {"App": template})))
    summary = [(x.port, x.load_balancer_type, x.scheme, x.reach) for x in found]
    assert summary == [
        ("8501", "network", "internal", Reach.INSIDE_VPC),
        ("80", "application", "internet-facing", Reach.OUTSIDE_VPC),
    ]


@pytest.mark.parametrize(
    ("protocol", "low", "high", "expected"),
    [
        ("all", None, None, "all"),
        ("tcp", 0, 65535, "all"),
        ("tcp", 443, 443, "443"),
        ("udp", 8301, 8302, "8301-8302"),
        ("icmp", 8, -1, "type 8"),
        ("icmp", -1, -1, "all"),
    ],
)
def test_port_ranges_read_like_the_console(
    protocol: str, low: int | None, high: int | None, expected: str
) -> None:
    assert port_range(protocol, low, high) == expected
