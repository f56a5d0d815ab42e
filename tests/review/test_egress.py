"""Egress: written rules, EC2's implicit default, CDK's placeholder, and the reason for 443."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import getatt, ref, resource, write_assembly
from tools.review.egress import Egress, egress_rules
from tools.review.load import load_assembly

VPC = resource("AWS::EC2::VPC", "App/Vpc/Resource", CidrBlock="10.0.0.0/16")
HTTPS_OUT = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0"}
NO_TRAFFIC = {  # what CDK writes for allow_all_outbound=False before any rule is added
    "CidrIp": "255.255.255.255/32",
    "Description": "Disallow all traffic",
    "FromPort": 252,
    "IpProtocol": "icmp",
    "ToPort": 86,
}


def _group(name: str, egress: list[dict[str, Any]] | None) -> dict[str, Any]:
    props: dict[str, Any] = {"GroupDescription": name, "VpcId": ref("Vpc")}
    if egress is not None:
        props["SecurityGroupEgress"] = egress
    return resource("AWS::EC2::SecurityGroup", f"App/{name}/Resource", **props)


def _egress(tmp_path: Path, **resources: dict[str, Any]) -> Egress:
    template = {"Resources": {"Vpc": VPC, **resources}}
    return egress_rules(load_assembly(write_assembly(tmp_path, {"App": template})))


def _rows(found: Egress) -> list[tuple[str, str, str, str, bool]]:
    return [
        (r.group.logical_id if r.group else "?", r.protocol, r.ports, r.destination, r.implicit)
        for r in found.rules
    ]


def test_a_group_without_egress_rules_keeps_the_default_allow_all(tmp_path: Path) -> None:
    # GIVEN one group with no egress at all, and one with only CDK's "no traffic" placeholder
    found = _egress(tmp_path, Open=_group("Open", None), Closed=_group("Closed", [NO_TRAFFIC]))
    # THEN the first may send anything anywhere (IPv4 and IPv6), the second nothing
    assert _rows(found) == [
        ("Open", "all", "all", "0.0.0.0/0", True),
        ("Open", "all", "all", "::/0", True),
    ]
    assert all(rule.reason.startswith("no egress rule in the template") for rule in found.rules)


def test_a_standalone_egress_rule_replaces_the_default(tmp_path: Path) -> None:
    # GIVEN a group whose only egress is a standalone rule to another group (how CDK wires
    # connections between groups)
    rule = resource(
        "AWS::EC2::SecurityGroupEgress",
        "App/Lb/to Servers:8501",
        GroupId=getatt("Lb", "GroupId"),
        DestinationSecurityGroupId=getatt("Servers", "GroupId"),
        IpProtocol="tcp",
        FromPort=8501,
        ToPort=8501,
        Description="Consul 8501 to the servers",
    )
    found = _egress(
        tmp_path,
        Lb=_group("Lb", None),
        Servers=_group("Servers", [NO_TRAFFIC]),
        LbToServers=rule,
    )
    # THEN the group reaches exactly the servers' group, with no implicit allow-all
    [only] = found.rules
    assert (only.group and only.group.logical_id, only.ports, only.destination) == (
        "Lb",
        "8501",
        "Servers",
    )
    assert only.destination_res is not None
    assert only.description == "Consul 8501 to the servers"
    assert found.to_anywhere == []


def test_https_to_any_address_says_whether_vpc_endpoints_exist(tmp_path: Path) -> None:
    without = _egress(tmp_path / "a", Fn=_group("Fn", [{**HTTPS_OUT, "Description": "AWS APIs"}]))
    [rule] = without.to_anywhere
    assert rule.description == "AWS APIs"
    assert rule.reason.startswith("AWS APIs, no VPC endpoint in the templates")
    endpoint = resource(
        "AWS::EC2::VPCEndpoint",
        VpcId=ref("Vpc"),
        ServiceName="com.amazonaws.us-east-1.secretsmanager",
    )
    with_endpoint = _egress(tmp_path / "b", Fn=_group("Fn", [HTTPS_OUT]), Endpoint=endpoint)
    [rule] = with_endpoint.to_anywhere
    assert rule.reason == (
        "HTTPS to any address although the VPC has endpoints: "
        "com.amazonaws.us-east-1.secretsmanager"
    )
