"""The Consul side: ACL policies and rules, the tokens holding them, intentions."""

from __future__ import annotations

import json
from pathlib import Path

from tests.review.builder import getatt, ref, resource, write_assembly
from tools.review.consul import AclRule, consul_side, parse_rules
from tools.review.load import load_assembly

PROVIDER = getatt("Provider", "Arn")


def test_rules_are_read_from_the_policy_hcl() -> None:
    hcl = (
        'node_prefix "ecs-task-" {\n  policy = "write"\n}\n'
        'service_prefix "" {\n  policy = "write"\n}\n'
        'operator = "read"\n'
    )
    assert parse_rules(hcl) == [
        AclRule("node_prefix", "ecs-task-", "write"),
        AclRule("operator", "", "read"),
        AclRule("service_prefix", "", "write"),
    ]
    assert [rule.text() for rule in parse_rules(hcl)] == [
        "node ecs-task-*:write",
        "operator:read",
        "service *:write",
    ]


def test_tokens_hold_their_policies_and_identities_and_name_their_secret(tmp_path: Path) -> None:
    template = {
        "Resources": {
            "Policy": resource(
                "Custom::ConsulAclPolicy",
                "App/Policy/Default",
                ServiceToken=PROVIDER,
                Name="ecs-registrar",
                Rules='key_prefix "ecs-registrar/" {\n  policy = "write"\n}\n',
            ),
            "Secret": resource("AWS::SecretsManager::Secret", "App/Secret/Resource"),
            "Token": resource(
                "Custom::ConsulAclToken",
                "App/Token/Default",
                ServiceToken=PROVIDER,
                Description="registrar",
                Policies=[ref("Policy"), "global-management"],
                ServiceIdentities=["web"],
                TokenSecretArn=ref("Secret"),
            ),
            "Intentions": resource(
                "Custom::ConsulConfigEntry",
                "App/WebIntentions/Default",
                ServiceToken=PROVIDER,
                Entry=json.dumps(
                    {
                        "Kind": "service-intentions",
                        "Name": "web",
                        "Sources": [{"Name": "api", "Action": "allow"}],
                    }
                ),
            ),
        }
    }
    consul = consul_side(load_assembly(write_assembly(tmp_path, {"App": template})))
    [token] = consul.tokens
    assert token.policies == ("ecs-registrar", "global-management")
    # A policy named but not declared here (a built-in one) is called out, not guessed
    assert token.unresolved == ("global-management",)
    assert [rule.text() for rule in token.rules] == [
        "key ecs-registrar/*:write",
        "node *:read",
        "service web:write",
        "service web-sidecar-proxy:write",
        "service *:read",
    ]
    assert token.secret is not None
    assert token.secret.logical_id == "Secret"
    assert [(i.source, i.destination, i.action) for i in consul.intentions] == [
        ("api", "web", "allow")
    ]
