"""Resources that talk to Consul during a stack operation outlive the network path they use.

CloudFormation creates a resource after everything it depends on (DependsOn, Ref, GetAtt, all
transitively) and deletes it before them; anything it does not depend on may be deleted first,
in parallel. The drain (stack deletion) and the Consul object provider (tokens, policies and
config entries deleted with the stack) must reach Consul on 8501 while they run, so they must
depend on every security group rule on that path: the egress of their own group and the
ingress of the load balancer's. Otherwise the rule can go first, the drain times out and the
stack deletion fails (or the objects are waited on for 15 minutes, then left in Consul).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.cfn_graph import prerequisites, references
from tests.infra.conftest import Synthesized

HTTPS = 8501
Template = dict[str, Any]


@pytest.fixture(scope="module")
def template(synthesized: Synthesized) -> Template:
    (only,) = synthesized.templates().values()
    return only


def _group(value: Any) -> str | None:
    refs = list(references(value)) if value is not None else []
    return refs[0] if refs else None


def _rules_for(template: Template, security_group: str) -> set[str]:
    """Standalone rules on the 8501 path of `security_group`: its egress, and ingress from it."""
    rules = set()
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] not in (
            "AWS::EC2::SecurityGroupEgress",
            "AWS::EC2::SecurityGroupIngress",
        ):
            continue
        if not props.get("FromPort", 0) <= HTTPS <= props.get("ToPort", -1):
            continue
        owner = _group(props.get("GroupId"))
        peer = _group(props.get("DestinationSecurityGroupId") or props.get("SourceSecurityGroupId"))
        if security_group in (owner, peer):
            rules.add(name)
    return rules


def _function_groups(template: Template, handler: str) -> set[str]:
    groups: set[str] = set()
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function" and props.get("Handler") == handler:
            groups |= set(references(props["VpcConfig"]["SecurityGroupIds"]))
    assert groups, f"no function with handler {handler}"
    return groups


@pytest.mark.parametrize(
    ("resource_type", "handler"),
    [
        ("Custom::ConsulCatalogDrain", "drain.on_event"),
        ("Custom::ConsulAclToken", "provider.is_complete"),
        ("Custom::ConsulAclPolicy", "provider.is_complete"),
        ("Custom::ConsulConfigEntry", "provider.is_complete"),
    ],
)
def test_consul_custom_resources_outlive_their_path_to_consul(
    template: Template, resource_type: str, handler: str
) -> None:
    # GIVEN the security group rules that let the resource's function reach Consul on 8501
    rules: set[str] = set()
    for group in _function_groups(template, handler):
        rules |= _rules_for(template, group)
    assert rules, f"nothing opens {HTTPS} for {handler}"
    names = [n for n, r in template["Resources"].items() if r["Type"] == resource_type]
    assert names
    for name in names:
        # WHEN CloudFormation orders the stack's deletion
        before = prerequisites(template, name)
        # THEN every such rule is deleted only after the resource has done its Consul work
        missing = sorted(rules - before)
        assert not missing, f"{name} may lose its path to Consul first: {missing}"
