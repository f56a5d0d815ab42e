"""What is weaker than the secure default: plaintext listeners, open ingress, wide intentions."""

from __future__ import annotations

import json
from pathlib import Path

from tests.review.builder import getatt, ref, resource, write_assembly
from tools.review.collect import build_review
from tools.review.posture import weaknesses


def test_plaintext_consul_port_open_ingress_and_wildcard_allow_are_weaker(tmp_path: Path) -> None:
    # GIVEN an internal NLB whose group lets on-prem reach Consul's plaintext HTTP port 8500,
    # a group open to the internet, and an intention allowing every service to reach `web`
    template = {
        "Resources": {
            "Vpc": resource("AWS::EC2::VPC", "App/Vpc/Resource", CidrBlock="10.0.0.0/16"),
            "LbSg": resource(
                "AWS::EC2::SecurityGroup",
                "App/LbSg/Resource",
                GroupDescription="lb",
                VpcId=ref("Vpc"),
                SecurityGroupIngress=[
                    {"IpProtocol": "tcp", "FromPort": 8500, "ToPort": 8500, "CidrIp": cidr}
                    for cidr in ("192.168.0.0/16", "172.16.0.0/12")
                ],
            ),
            "Lb": resource(
                "AWS::ElasticLoadBalancingV2::LoadBalancer",
                "App/Lb/Resource",
                Type="network",
                Scheme="internal",
                SecurityGroups=[getatt("LbSg", "GroupId")],
            ),
            "Open": resource(
                "AWS::EC2::SecurityGroup",
                "App/Open/Resource",
                GroupDescription="open",
                VpcId=ref("Vpc"),
                SecurityGroupIngress=[
                    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0"}
                ],
            ),
            "Intentions": resource(
                "Custom::ConsulConfigEntry",
                "App/WebIntentions/Default",
                Entry=json.dumps(
                    {
                        "Kind": "service-intentions",
                        "Name": "web",
                        "Sources": [{"Name": "*", "Action": "allow"}],
                    }
                ),
            ),
        }
    }
    review = build_review(write_assembly(tmp_path, {"App": template}), linter=None)
    # WHEN the posture is judged
    found = {(w.kind, w.subject.logical_id if w.subject else "") for w in weaknesses(review)}
    # THEN each departure from the secure default is listed with where it is
    assert {
        ("plaintext-listener", "LbSg"),
        ("ingress-anywhere", "Open"),
        ("intention-wildcard", "Intentions"),
    } <= found
    paths = [p for p in review.reachability if p.plaintext]
    assert [(p.ports, p.listens, [r.logical_id for r in p.behind]) for p in paths] == [
        ("8500", "8500 HTTP API, plaintext", ["Lb"])
    ] * 2
    # review m2: one row per plaintext port of a target, naming its sources
    [row] = [w for w in weaknesses(review) if w.kind == "plaintext-listener"]
    assert row.what == (
        "tcp 8500 (8500 HTTP API, plaintext) from 2 sources: 172.16.0.0/12, 192.168.0.0/16"
    )
