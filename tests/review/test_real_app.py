"""The review of the real default app: every fact a reviewer relies on, read from its template.

Where a fact is the point of a finding (the token secrets' readers) the test names the
expected principals. Where the fact belongs to parts other work changes (security groups,
key policies, network modes), the test recomputes it from the raw template, so it checks that
the report tells what is there, whatever that is.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.infra.conftest import Synthesized
from tools.nag_gate import stale, unacknowledged
from tools.review.collect import Review
from tools.review.mermaid import HEADING as PICTURE
from tools.review.page import WIDTH, first_page
from tools.review.render import render
from tools.review.secrets import SecretReview
from tools.review.twin import facts

pytestmark = pytest.mark.synth

TOKEN_SECRETS = ("RegistrarTokenSecret", "BackendSidecarTokenSecret", "FrontendSidecarTokenSecret")


def _secret(review: Review, name: str) -> SecretReview:
    [found] = [s for s in review.secrets.secrets if f"/{name}/" in s.res.path]
    return found


def _paths(accesses: Any) -> list[str]:
    return sorted(a.principal.path.split("/", 1)[1] for a in accesses if a.principal)


def _resources(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    [template] = synthesized.templates().values()
    resources: dict[str, dict[str, Any]] = template["Resources"]
    return resources


def test_token_secrets_list_every_reader_through_the_token_resource(real_review: Review) -> None:
    # GIVEN policies name the token secrets as `Fn::GetAtt [<token>, TokenSecretArn]`
    # WHEN the real app is reviewed
    # THEN the registrar, reconcile and drain roles read the registrar token, and each demo
    # execution role reads its own sidecar's token
    assert _paths(_secret(real_review, "RegistrarTokenSecret").readers) == [
        "Reconciler/Drain/Function/ServiceRole/Resource",
        "Reconciler/Pass/Function/ServiceRole/Resource",
        "Registrar/Function/ServiceRole/Resource",
    ]
    assert _paths(_secret(real_review, "BackendSidecarTokenSecret").readers) == [
        "Demo/Backend/TaskDefinition/ExecutionRole/Resource"
    ]
    assert _paths(_secret(real_review, "FrontendSidecarTokenSecret").readers) == [
        "Demo/Frontend/TaskDefinition/ExecutionRole/Resource"
    ]
    assert all("via " in a.how for s in TOKEN_SECRETS for a in _secret(real_review, s).readers)


def test_token_secrets_are_injected_where_their_readers_run(real_review: Review) -> None:
    injected = {
        (i.where.path.split("/", 1)[1], i.kind, i.detail)
        for i in _secret(real_review, "RegistrarTokenSecret").injections
    }
    for function in ("Registrar/Function", "Reconciler/Pass/Function", "Reconciler/Drain/Function"):
        assert (
            f"{function}/Resource",
            "lambda-environment",
            "CONSUL_TOKEN_SECRET_ARN (its ARN)",
        ) in injected
    backend = _secret(real_review, "BackendSidecarTokenSecret").injections
    assert [(i.kind, i.detail) for i in backend if i.kind == "ecs-secret"] == [
        ("ecs-secret", "container envoy-init, environment CONSUL_HTTP_TOKEN")
    ]


def test_every_secret_grant_resolves(real_review: Review) -> None:
    # Nothing is left "unresolved" in the default app: every read or write names a secret
    assert real_review.secrets.unresolved == []
    # The operators' token is read by operators' IAM principals outside the stack (runbook):
    # no role of the stack reads it, and the provider that fills it is its only writer.
    operator = _secret(real_review, "OperatorTokenSecret")
    assert operator.readers == []
    assert _paths(operator.writers) == ["ConsulObjects/Role/Resource"]
    others = [s for s in real_review.secrets.secrets if s is not operator]
    assert all(secret.readers for secret in others)


def test_writers_of_the_ca_and_of_the_tokens(real_review: Review) -> None:
    [writer] = _secret(real_review, "CaCertificate").writers
    assert writer.principal is not None
    assert writer.principal.path.endswith("/ConsulFleet/Role/Resource")
    assert {"PutSecretValue", "UpdateSecret"} <= set(writer.actions)
    for name in TOKEN_SECRETS:
        assert _paths(_secret(real_review, name).writers) == ["ConsulObjects/Role/Resource"]


def _expected_egress(resources: dict[str, dict[str, Any]]) -> int:
    """Egress rules as CloudFormation applies them, counted from the raw template."""
    standalone = {
        r["Properties"]["GroupId"]["Fn::GetAtt"][0]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::SecurityGroupEgress"
    }
    count = len([r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupEgress"])
    for logical_id, r in resources.items():
        if r["Type"] != "AWS::EC2::SecurityGroup":
            continue
        inline = r["Properties"].get("SecurityGroupEgress")
        if inline is None:
            count += 0 if logical_id in standalone else 2  # EC2's default, IPv4 and IPv6
        else:
            count += len([e for e in inline if e.get("CidrIp") != "255.255.255.255/32"])
    return count


def test_every_egress_rule_is_listed_with_its_reason(
    synthesized: Synthesized, real_review: Review
) -> None:
    rules = real_review.egress.rules
    assert len(rules) == _expected_egress(_resources(synthesized))
    https_anywhere = [r for r in rules if r.to_anywhere and r.ports == "443"]
    assert https_anywhere, "the Lambda groups reach AWS APIs on 443"
    for rule in https_anywhere:
        assert rule.description
        assert rule.reason.startswith("AWS APIs, no VPC endpoint in the templates")


def test_every_key_policy_statement_is_listed_and_open_service_grants_flagged(
    synthesized: Synthesized, real_review: Review
) -> None:
    for key in real_review.keys:
        raw = _resources(synthesized)[key.res.logical_id]["Properties"]["KeyPolicy"]["Statement"]
        assert len(key.statements) == len(raw)
        expected = [
            "Service" in (s.get("Principal") or {})
            and "Condition" not in s
            and s["Effect"] == "Allow"
            for s in raw
        ]
        assert [bool(s.flag) for s in key.statements] == expected


def test_every_resource_policy_statement_is_listed(
    synthesized: Synthesized, real_review: Review
) -> None:
    documents = {"PolicyDocument", "ResourcePolicy"}
    raw = {
        logical_id: next(v for k, v in r["Properties"].items() if k in documents)["Statement"]
        for logical_id, r in _resources(synthesized).items()
        if documents & set(r.get("Properties", {}))
        and r["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    }
    found = {p.policy.logical_id: p for p in real_review.resource_policies}
    assert set(raw) <= set(found)
    for logical_id, statements in raw.items():
        assert len(found[logical_id].statements) == len(statements)
        assert found[logical_id].applies_to, f"{logical_id} applies to nothing?"


def test_published_ports_match_the_task_definitions(
    synthesized: Synthesized, real_review: Review
) -> None:
    expected = set()
    for logical_id, r in _resources(synthesized).items():
        if r["Type"] != "AWS::ECS::TaskDefinition":
            continue
        mode = r["Properties"].get("NetworkMode", "bridge")
        for container in r["Properties"]["ContainerDefinitions"]:
            app = (container.get("DockerLabels") or {}).get("consul-mesh.enabled") == "true"
            for mapping in container.get("PortMappings") or []:
                if mode in ("host", "bridge"):
                    expected.add((logical_id, container["Name"], mapping["ContainerPort"], app))
            if mode == "host" and app:
                # the app's own ports are not mapped; it is told to listen on 127.0.0.1 only
                for port in container["DockerLabels"]["consul-mesh.ports"].split(","):
                    expected.add((logical_id, container["Name"], int(port), False))
    found = {
        (n.task_definition.logical_id, p.container, p.container_port, p.bypasses_mesh)
        for n in real_review.task_networks
        for p in n.ports
    }
    assert found == expected


def test_consul_policies_tokens_and_intentions(real_review: Review) -> None:
    consul = real_review.consul
    [registrar] = [p for p in consul.policies if p.name == "ecs-registrar"]
    assert "node ecs-task-*:write" in [rule.text() for rule in registrar.rules]
    holders = {t.description: (t.policies, t.service_identities) for t in consul.tokens}
    assert holders["ECS Anywhere registrar"] == (("ecs-registrar",), ())
    assert holders["Envoy sidecar of backend"] == ((), ("backend",))
    for token in consul.tokens:  # every token says which secret carries its SecretID
        assert token.secret is not None
        assert consul.token_for(token.secret) == token
    intentions = {(i.source, i.destination, i.action) for i in consul.intentions}
    assert {("*", "*", "deny"), ("frontend", "backend", "allow")} <= intentions


def test_the_gate_passes_the_default_app(synthesized: Synthesized) -> None:
    assert unacknowledged(synthesized.outdir) == []
    assert stale(synthesized.outdir) == [], "acknowledgements no finding uses"


def test_the_default_app_has_no_wildcard_nobody_acknowledged(real_review: Review) -> None:
    # `python -m tools.review --strict` exits 1 on any: CDK's default-security-group handler
    # role carried AWSLambdaBasicExecutionRole (log writes on `*`), which cdk-nag never sees
    # (mesh_stack/default_sg_handler.py), so no acknowledgement could cover it.
    assert [(w.finding, w.policy) for w in real_review.unacknowledged_wildcards] == []


def test_first_page_fits_one_screen(real_review: Review) -> None:
    page = first_page(real_review)
    # 60 until issue 19 added the operators' read-only token: its secret's row (2 lines, its
    # grants wrap) and its read wildcards' row. Both are page-1 facts (who may read Consul).
    # 63 since review 19b's fixes added one line: the servers' tag-scoped
    # autoscaling:SetInstanceHealth grant (a failed boot marks its own instance unhealthy),
    # the only new IAM wildcard; which row it is was not pinned down.
    assert len(page) <= 63, f"{len(page)} lines"
    too_wide = [line for line in page if len(line) > WIDTH]
    assert too_wide == []


def test_first_page_answers_the_four_questions_one_table_each(real_review: Review) -> None:
    text = render(real_review)
    before, appendix = text.split("\n# Appendix\n")
    # the first page, then the exposure as a picture (a Mermaid block), then the appendix
    page, picture = before.split("\n" + PICTURE + "\n")
    assert "```mermaid\nflowchart LR\n" in picture
    sections = page.split("\n## ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == [
        "1. What is reachable from where",
        "2. Who can read or write each secret, and what it grants in Consul "
        "(roles of these templates; IAM may allow others)",
        "3. Which wildcards exist, and why",
        "4. What is weaker than the secure default",
    ]
    for section in sections:
        headers = [line for line in section.splitlines() if line.startswith("|---")]
        assert len(headers) <= 1
    # the answers name what matters: the on-prem range, the token readers, the bypass
    assert "**outside the VPC 192.168.0.0/16**" in sections[0]
    assert "{Drain,Pass,Registrar}/Function" in sections[1]
    # review M2: the hosts' and servers' managed policy grants ssm:GetParameter* on *; it is
    # named on page 1 (widest first, before the row abridges)
    assert "AWS managed: AmazonSSMManagedInstanceCore" in sections[2]
    assert "## A.1 Network" in appendix


def test_review_json_holds_the_same_facts(real_review: Review) -> None:
    twin = json.loads(json.dumps(facts(real_review)))
    by_path = {s["secret"]["path"]: s for s in twin["secrets"]["secrets"]}
    for secret in real_review.secrets.secrets:
        entry = by_path[secret.res.path]
        assert sorted(r["principal"]["path"] for r in entry["readers"]) == sorted(
            a.principal.path for a in secret.readers if a.principal
        )
    assert len(twin["network"]["egress"]) == len(real_review.egress.rules)
    assert len(twin["network"]["ingress"]) == len(real_review.exposure.rules)
    assert twin["posture"]["weaker_than_default"]
    # Stable and free of Markdown: the JSON is the same twice, and the review's own values
    # carry no code spans (acknowledgement reasons keep whatever their authors wrote)
    assert facts(real_review) == facts(real_review)
    own = [twin["network"], twin["secrets"], twin["posture"]["weaker_than_default"]]
    assert "`" not in json.dumps(own)


def test_each_role_names_the_workloads_that_run_as_it(real_review: Review) -> None:
    # GIVEN the servers run as ConsulFleet/Role through an instance profile and a launch
    # template, and each function and task definition names its role directly
    run_by = {
        role["role"]["path"].split("/", 1)[1]: [r["path"].split("/", 1)[1] for r in role["run_by"]]
        for role in facts(real_review)["policies"]["roles"]
        if "path" in role["role"]
    }
    # THEN the workload is the fleet and the function, not the plumbing between
    assert run_by["ConsulFleet/Role/Resource"] == ["ConsulFleet/Servers/ASG"]
    assert run_by["Registrar/Function/ServiceRole/Resource"] == ["Registrar/Function/Resource"]
    assert run_by["Demo/Backend/TaskDefinition/ExecutionRole/Resource"] == [
        "Demo/Backend/TaskDefinition/Resource"
    ]


def test_each_security_group_names_what_it_is_attached_to(real_review: Review) -> None:
    attached = {
        item["group"]["path"].split("/", 1)[1]: [
            r["path"].split("/", 1)[1] for r in item["attached_to"]
        ]
        for item in facts(real_review)["network"]["security_groups"]
    }
    assert attached["ConsulFleet/ServerSecurityGroup/Resource"] == ["ConsulFleet/Servers/ASG"]
    assert attached["ConsulFleet/LoadBalancerSecurityGroup/Resource"] == [
        "ConsulFleet/LoadBalancer/Resource"
    ]
    assert "Registrar/Function/Resource" in attached["Registrar/SecurityGroup/Resource"]
