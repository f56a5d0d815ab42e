"""An internal NLB without security groups admits every network routed to the VPC.

A network load balancer created without `SecurityGroups` filters nothing, and with client IP
preservation off its targets see the load balancer's address, so a target rule admitting the
VPC CIDR admits every client of the load balancer: on-prem networks behind VPN or transit
gateway, peered VPCs (AWS re:Post knowledge center "security-group-load-balancer": "If the
setting is off and the target allowlists the load balancer's private IP addresses or security
groups, then all incoming traffic can access your service").

GIVEN the Consul servers' chain (on-prem CIDR -> LB security group -> NLB -> target group with
client IP preservation off -> servers admitting the VPC CIDR)
WHEN the NLB loses its security groups (review B3), or a rule names a group these templates do
not create or another account's group (review M5)
THEN the review says every routed network reaches the servers, and the diff is broadening.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.review.builder import getatt, ref, resource, write_assembly
from tools.review.collect import Review, build_review
from tools.review.diff import diff
from tools.review.network import Reach
from tools.review.page import first_page
from tools.review.twin import facts

VPC = "10.0.0.0/16"
ON_PREM = "192.168.0.0/16"


def _tcp(port: int, **peer: Any) -> dict[str, Any]:
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **peer}


def _app(*, lb_groups: bool = True, preserve: str = "false") -> dict[str, Any]:
    lb: dict[str, Any] = {"Scheme": "internal", "Type": "network"}
    if lb_groups:
        lb["SecurityGroups"] = [getatt("LbGroup", "GroupId")]
    return {
        "Resources": {
            "Vpc": resource("AWS::EC2::VPC", "App/Vpc/Resource", CidrBlock=VPC),
            "LbGroup": resource(
                "AWS::EC2::SecurityGroup",
                "App/LbGroup/Resource",
                GroupDescription="lb",
                VpcId=ref("Vpc"),
                SecurityGroupIngress=[_tcp(8501, CidrIp=ON_PREM)],
            ),
            "ServerGroup": resource(
                "AWS::EC2::SecurityGroup",
                "App/ServerGroup/Resource",
                GroupDescription="servers",
                VpcId=ref("Vpc"),
                SecurityGroupIngress=[_tcp(8501, CidrIp=getatt("Vpc", "CidrBlock"))],
            ),
            "LoadBalancer": resource(
                "AWS::ElasticLoadBalancingV2::LoadBalancer", "App/LoadBalancer/Resource", **lb
            ),
            "Targets": resource(
                "AWS::ElasticLoadBalancingV2::TargetGroup",
                "App/Targets/Resource",
                Port=8501,
                Protocol="TCP",
                TargetType="instance",
                TargetGroupAttributes=[{"Key": "preserve_client_ip.enabled", "Value": preserve}],
            ),
            "Listener": resource(
                "AWS::ElasticLoadBalancingV2::Listener",
                "App/LoadBalancer/Listener/Resource",
                LoadBalancerArn=ref("LoadBalancer"),
                Port=8501,
                Protocol="TCP",
                DefaultActions=[{"Type": "forward", "TargetGroupArn": ref("Targets")}],
            ),
            "Template": resource(
                "AWS::EC2::LaunchTemplate",
                "App/Template/Resource",
                LaunchTemplateData={"SecurityGroupIds": [getatt("ServerGroup", "GroupId")]},
            ),
            "Servers": resource(
                "AWS::AutoScaling::AutoScalingGroup",
                "App/Servers/ASG",
                LaunchTemplate={"LaunchTemplateId": ref("Template"), "Version": "1"},
                TargetGroupARNs=[ref("Targets")],
                MinSize="1",
                MaxSize="1",
            ),
        }
    }


def _review(tmp_path: Path, template: dict[str, Any]) -> Review:
    return build_review(write_assembly(tmp_path, {"App": copy.deepcopy(template)}), linter=None)


def _server_rule(review: Review) -> Reach:
    [rule] = [r for r in review.exposure.rules if r.group == "ServerGroup"]
    return rule.reach


def test_with_security_groups_the_vpc_rule_stays_inside(tmp_path: Path) -> None:
    review = _review(tmp_path, _app())
    assert _server_rule(review) is Reach.INSIDE_VPC
    [listener] = review.exposure.listeners
    assert not listener.reach.external


def test_without_security_groups_every_routed_network_reaches_the_servers(
    tmp_path: Path,
) -> None:
    review = _review(tmp_path, _app(lb_groups=False))
    [listener] = review.exposure.listeners
    assert listener.reach is Reach.ROUTED
    assert _server_rule(review) is Reach.ROUTED
    page = "\n".join(first_page(review))
    assert "every network routed to the VPC" in page
    # an internal load balancer is not an internet entry point, open as it is
    assert "**the internet**" not in page


def test_with_client_ip_preserved_the_targets_still_filter(tmp_path: Path) -> None:
    review = _review(tmp_path, _app(lb_groups=False, preserve="true"))
    assert _server_rule(review) is Reach.INSIDE_VPC


def test_dropping_the_load_balancers_security_groups_is_broadening(tmp_path: Path) -> None:
    was = facts(_review(tmp_path / "old", _app()))
    changes = diff(was, facts(_review(tmp_path / "new", _app(lb_groups=False))))
    broadening = [c for c in changes if c.broadening]
    assert {c.category for c in broadening} >= {"ingress"}, changes
    assert any("every network routed to the VPC" in c.broadening for c in broadening), changes


def test_a_group_these_templates_do_not_create_counts_as_outside(tmp_path: Path) -> None:
    template = _app()
    ingress = template["Resources"]["ServerGroup"]["Properties"]["SecurityGroupIngress"]
    ingress.append(_tcp(8500, SourceSecurityGroupId="sg-0123456789abcdef0"))
    ingress.append(
        _tcp(
            8502,
            SourceSecurityGroupId=getatt("LbGroup", "GroupId"),
            SourceSecurityGroupOwnerId="111122223333",
        )
    )
    was = facts(_review(tmp_path / "old", _app()))
    review = _review(tmp_path / "new", template)
    reach = {r.ports: r.reach for r in review.exposure.rules if r.group == "ServerGroup"}
    assert reach["8500"] is Reach.UNRESOLVED
    assert reach["8502"] is Reach.UNRESOLVED
    added = [c for c in diff(was, facts(review)) if c.category == "ingress"]
    assert len(added) == 2, added
    assert all(c.broadening for c in added), added
