"""Services as configuration, in the template: what a `services` entry adds, what removing it
removes, and nothing else. Also app secrets, ECR images and bridge opt-ins of an entry."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import identity  # the registrar's own module (lambda/registrar is on pytest's path)
import pytest
from aws_cdk.assertions import Template

from mesh_stack.config import MeshConfig
from mesh_stack.config_errors import ConfigError
from mesh_stack.configured_services import check_template_quotas
from mesh_stack.mesh_service import NO_HEALTH_PATH_WARNING
from mesh_stack.stack import MeshStack
from tests.conftest import cdk_json_context
from tools.nag_gate import stale, unacknowledged
from tools.review.collect import build_review
from tools.review.load import load_assembly
from tools.review.nag import nag_review
from tools.review.posture import weaknesses

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:shop/orders-db-AbC123"
KEYED_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:shop/stripe-XyZ789"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ECR_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/shop/orders:1.4.2"

ORDERS = {
    "image": "ghcr.io/acme/orders:1.4.2",
    "port": 8080,
    "app_user": "1000:1000",
    "upstreams": {"payments": 9001},
    "health_check_path": "/healthz",
}
PAYMENTS = {
    "image": "ghcr.io/acme/payments:2.0.1",
    "port": 8081,
    "app_user": "1000:1000",
    "health_check_path": "/healthz",
    "allow_from": ["orders"],
}
SHOP = {"orders": ORDERS, "payments": PAYMENTS}

Resources = dict[str, dict[str, Any]]


def synthesize(**overrides: object) -> dict[str, Any]:
    """The MeshStack template of cdk.json's context with `-c` style overrides (no nag)."""
    context = {**cdk_json_context(), **overrides}
    app = cdk.App(context=context)
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        app, config.stack_name, config=config, env=cdk.Environment(region="us-east-1")
    )
    template: dict[str, Any] = Template.from_stack(stack).to_json()
    return template


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    shop = json.dumps(SHOP)  # as `-c services='{...}'` passes it
    without_orders = json.dumps({"payments": {**PAYMENTS, "allow_from": []}})
    return {
        "default": synthesize(),
        "off": synthesize(demo_enabled="false"),
        "shop": synthesize(demo_enabled="false", services=shop),
        "without_orders": synthesize(demo_enabled="false", services=without_orders),
    }


def _names_one_of(value: Any, logical_ids: set[str]) -> bool:
    """Whether `value` is a bare reference to one of `logical_ids` (a DependsOn entry, a Ref,
    a GetAtt), as IAM statements and DependsOn lists hold them."""
    if isinstance(value, str):
        return value in logical_ids
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return bool(value["Ref"] in logical_ids)
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        return bool(value["Fn::GetAtt"][0] in logical_ids)
    return False


def _without(value: Any, logical_ids: set[str]) -> Any:
    """`value` with every list element that names one of `logical_ids` dropped; one-element
    lists read as their element (IAM merges a single principal or resource into a list), and a
    list that named only those is dropped with its key (a DependsOn on added resources only)."""
    if isinstance(value, dict):
        return {
            k: _without(v, logical_ids)
            for k, v in value.items()
            if not (isinstance(v, list) and v and all(_names_one_of(e, logical_ids) for e in v))
        }
    if isinstance(value, list):
        kept = [_without(v, logical_ids) for v in value if not _names_one_of(v, logical_ids)]
        return kept[0] if len(kept) == 1 else kept
    return value


def diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[Resources, Resources, set[str]]:
    """(added, removed, changed) resources; a resource counts as changed only when it differs
    in more than naming the added or removed resources (a grant, a deletion order)."""
    old, new = before["Resources"], after["Resources"]
    added = {k: v for k, v in new.items() if k not in old}
    removed = {k: v for k, v in old.items() if k not in new}
    moved = set(added) | set(removed)
    changed = {k for k in set(old) & set(new) if _without(old[k], moved) != _without(new[k], moved)}
    return added, removed, changed


def kinds(resources: Resources) -> Counter[str]:
    return Counter(resource["Type"] for resource in resources.values())


def intention_entries(resources: Resources) -> dict[str, list[dict[str, str]]]:
    entries = {}
    for resource in resources.values():
        if resource["Type"] == "Custom::ConsulConfigEntry":
            entry = json.loads(resource["Properties"]["Entry"])
            # The stack's own default deny (`*` -> `*`) is not a service's intention.
            if entry["Kind"] == "service-intentions" and entry["Name"] != "*":
                entries[entry["Name"]] = entry["Sources"]
    return entries


def token_identities(resources: Resources) -> list[list[str]]:
    """The service identities of the tokens (the registrar's token has a policy instead)."""
    return sorted(
        r["Properties"]["ServiceIdentities"]
        for r in resources.values()
        if r["Type"] == "Custom::ConsulAclToken" and r["Properties"]["ServiceIdentities"]
    )


# A configured host-mode service: its task definition, ECS service, log group, execution and
# task roles, the execution role's policy, and its token (custom resource + secret).
PER_SERVICE = Counter(
    {
        "AWS::ECS::TaskDefinition": 1,
        "AWS::ECS::Service": 1,
        "AWS::Logs::LogGroup": 1,
        "AWS::IAM::Role": 2,
        "AWS::IAM::Policy": 1,
        "AWS::SecretsManager::Secret": 1,
        "Custom::ConsulAclToken": 1,
    }
)


def test_two_services_add_exactly_their_resources_and_one_intention(
    templates: dict[str, dict[str, Any]],
) -> None:
    # GIVEN the stack without the demo  WHEN orders and payments are configured
    added, removed, changed = diff(templates["off"], templates["shop"])

    # THEN exactly their resources are added, with the orders -> payments intention
    assert removed == {}
    assert kinds(added) == PER_SERVICE + PER_SERVICE + Counter({"Custom::ConsulConfigEntry": 1})
    assert token_identities(added) == [["orders"], ["payments"]]
    assert intention_entries(added) == {"payments": [{"Name": "orders", "Action": "allow"}]}
    apps = {
        c["Name"]
        for r in added.values()
        if r["Type"] == "AWS::ECS::TaskDefinition"
        for c in r["Properties"]["ContainerDefinitions"]
        if c.get("DockerLabels", {}).get(identity.LABEL_ENABLED) == "true"
    }
    assert apps == {"orders", "payments"}
    # AND their logs are encrypted with the stack's key, the one its tokens are encrypted with
    keys = {
        json.dumps(r["Properties"].get("KmsKeyId"))
        for r in added.values()
        if r["Type"] in ("AWS::Logs::LogGroup", "AWS::SecretsManager::Secret")
    }
    (key,) = keys
    assert "Fn::GetAtt" in key
    # AND nothing else changes beyond naming them (key and provider grants, drain order)
    assert changed == set()
    shop_outputs = templates["shop"]["Outputs"]
    assert set(shop_outputs) - set(templates["off"]["Outputs"]) == {
        "ServiceOrders",
        "ServicePayments",
    }
    assert shop_outputs["ServicePayments"]["Value"] == "payments"
    assert (
        '"upstreams": {"payments": <local port>}' in shop_outputs["ServicePayments"]["Description"]
    )
    assert templates["shop"].get("Parameters") == templates["off"].get("Parameters")


def test_turning_the_demo_off_removes_exactly_what_it_added(
    templates: dict[str, dict[str, Any]],
) -> None:
    demo, _, changed_on = diff(templates["off"], templates["default"])
    _, removed, changed_off = diff(templates["default"], templates["shop"])
    assert set(removed) == set(demo)
    assert changed_on == changed_off == set()
    assert token_identities(demo) == [["backend"], ["frontend"]]
    assert intention_entries(demo) == {"backend": [{"Name": "frontend", "Action": "allow"}]}


def test_removing_a_service_removes_its_ecs_service_token_and_intentions(
    templates: dict[str, dict[str, Any]],
) -> None:
    # GIVEN orders -> payments  WHEN orders leaves the configuration (and payments' allow_from)
    _, removed, changed = diff(templates["shop"], templates["without_orders"])

    # THEN its ECS service, task definition, token and the intentions naming it go; payments
    # stays exactly as it was
    assert kinds(removed) == PER_SERVICE + Counter({"Custom::ConsulConfigEntry": 1})
    assert token_identities(removed) == [["orders"]]
    assert intention_entries(removed) == {"payments": [{"Name": "orders", "Action": "allow"}]}
    assert intention_entries(templates["without_orders"]["Resources"]) == {}
    assert changed == set()
    assert "ServiceOrders" not in templates["without_orders"]["Outputs"]
    # AND the token secret is deleted with its token (no orphaned SecretID)
    secret = next(r for r in removed.values() if r["Type"] == "AWS::SecretsManager::Secret")
    assert secret.get("DeletionPolicy", "Delete") == "Delete"


# --------------------------------------------------------------------- a richer entry, nagged

EXTRAS = {
    "orders": {
        "image": ECR_IMAGE,
        "port": 8080,
        "app_user": "1000",
        "daemon": True,
        "tags": ["v1"],
        # no health path: the TCP check is accepted, which acknowledges MeshService's warning
        "tcp_check_reason": "a worker with no HTTP endpoint; a crash stops the task",
        # an off-host Prometheus scrapes it: the explicit opt-in
        "prometheus_bind_address": "0.0.0.0",
        "environment": {"LOG_LEVEL": "info", "WORKERS": 4},
        "secrets": {
            "DB_URL": SECRET_ARN,
            "DB_USER": f"{SECRET_ARN}:username::",
            "STRIPE_KEY": {"arn": KEYED_SECRET_ARN, "kms_key_arn": KEY_ARN},
        },
    },
    "legacy": {
        "image": "ghcr.io/acme/legacy:3",
        "port": 8080,
        "network_mode": "bridge",
        "insecure_published_app_port": True,
        "count": 0,
        "allow_from": ["orders", "erp"],
    },
}


@pytest.fixture(scope="module")
def extras(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    from app import build_app

    outdir = tmp_path_factory.mktemp("extras")
    context = {
        **cdk_json_context(),
        "demo_enabled": "false",
        "services": EXTRAS,
        "external_services": ["erp"],
        "team_services": {"billing": {"allow_from": ["orders"]}},
    }
    app = build_app(context, outdir=str(outdir))
    try:
        app.synth()
    except RuntimeError as err:  # a nag failure is reported by the test that reads findings
        if "ValidationFailed" not in str(err):
            raise
    (path,) = outdir.glob("*.template.json")
    return json.loads(path.read_text()), outdir


def _task(template: dict[str, Any], app: str) -> tuple[str, dict[str, Any]]:
    for logical, resource in template["Resources"].items():
        if resource["Type"] == "AWS::ECS::TaskDefinition":
            for container in resource["Properties"]["ContainerDefinitions"]:
                if container["Name"] == app:
                    return logical, resource["Properties"]
    raise AssertionError(f"no task definition runs {app}")


def _execution_policy(template: dict[str, Any], task: dict[str, Any]) -> list[dict[str, Any]]:
    role = task["ExecutionRoleArn"]["Fn::GetAtt"][0]
    statements: list[dict[str, Any]] = []
    for resource in template["Resources"].values():
        if (
            resource["Type"] == "AWS::IAM::Policy"
            and {"Ref": role} in resource["Properties"]["Roles"]
        ):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_app_secrets_are_injected_and_only_they_are_readable(
    extras: tuple[dict[str, Any], Path],
) -> None:
    template, _ = extras
    _, task = _task(template, "orders")
    app = next(c for c in task["ContainerDefinitions"] if c["Name"] == "orders")
    assert {s["Name"]: s["ValueFrom"] for s in app["Secrets"]} == {
        "DB_URL": SECRET_ARN,
        "DB_USER": f"{SECRET_ARN}:username::",
        "STRIPE_KEY": KEYED_SECRET_ARN,
    }
    assert {"Name": "WORKERS", "Value": "4"} in app["Environment"]
    statements = _execution_policy(template, task)
    readable = {
        r
        for s in statements
        if "secretsmanager:GetSecretValue" in _as_list(s["Action"])
        for r in _as_list(s["Resource"])
        if isinstance(r, str)
    }
    assert readable == {SECRET_ARN, KEYED_SECRET_ARN}
    decrypt = [
        s
        for s in statements
        if "kms:Decrypt" in _as_list(s["Action"]) and KEY_ARN in _as_list(s["Resource"])
    ]
    # kms:Decrypt on the customer key of the one secret that has one, only through Secrets
    # Manager and only for that secret's encryption context
    (statement,) = decrypt
    assert statement["Resource"] == KEY_ARN
    condition = statement["Condition"]["StringEquals"]
    assert condition["kms:EncryptionContext:SecretARN"] == [KEYED_SECRET_ARN]
    assert "secretsmanager." in json.dumps(condition["kms:ViaService"])


def test_an_ecr_image_is_pulled_with_a_grant_on_its_repository_only(
    extras: tuple[dict[str, Any], Path],
) -> None:
    template, _ = extras
    _, task = _task(template, "orders")
    app = next(c for c in task["ContainerDefinitions"] if c["Name"] == "orders")
    assert "shop/orders:1.4.2" in json.dumps(app["Image"])
    pulls = [
        s for s in _execution_policy(template, task) if "ecr:BatchGetImage" in _as_list(s["Action"])
    ]
    assert [s["Resource"] for s in pulls] == [
        "arn:aws:ecr:us-east-1:123456789012:repository/shop/orders"
    ]


def test_entries_reach_the_service_as_configured(extras: tuple[dict[str, Any], Path]) -> None:
    template, _ = extras
    services = [
        r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::ECS::Service"
    ]
    by_strategy = {s.get("SchedulingStrategy", "REPLICA"): s for s in services}
    assert set(by_strategy) == {"DAEMON", "REPLICA"}
    assert by_strategy["REPLICA"]["DesiredCount"] == 0
    # orders' metrics are opened to an off-host scraper; legacy's are in its bridge namespace
    _, orders = _task(template, "orders")
    _, legacy = _task(template, "legacy")
    binds = {name: _metrics_bind(task) for name, task in (("orders", orders), ("legacy", legacy))}
    assert binds["orders"].startswith("0.0.0.0:")
    assert binds["legacy"] == "0.0.0.0:9102"
    assert legacy["NetworkMode"] == "bridge"
    app = next(c for c in legacy["ContainerDefinitions"] if c["Name"] == "legacy")
    assert app["PortMappings"] == [{"ContainerPort": 8080, "HostPort": 0, "Protocol": "tcp"}]
    entries = intention_entries(template["Resources"])
    assert entries == {
        "legacy": [{"Name": "erp", "Action": "allow"}, {"Name": "orders", "Action": "allow"}],
        "billing": [{"Name": "orders", "Action": "allow"}],
    }
    # the team service's token exists for its own app; no task definition of it here
    assert token_identities(template["Resources"]) == [["billing"], ["legacy"], ["orders"]]


def test_only_the_entry_that_opts_in_serves_metrics_off_the_host_and_the_review_flags_it(
    templates: dict[str, dict[str, Any]], extras: tuple[dict[str, Any], Path]
) -> None:
    # GIVEN entries that leave prometheus_bind_address unset: main's host-mode default, the
    # host's loopback
    shop = templates["shop"]
    assert {
        name: _metrics_bind(_task(shop, name)[1]).split(":")[0] for name in ("orders", "payments")
    } == {"orders": "127.0.0.1", "payments": "127.0.0.1"}
    # AND an app where orders opts in to every interface (legacy is bridge mode: its
    # listener binds the Envoy container's own namespace)
    _, outdir = extras
    review = build_review(outdir, linter=None)
    # THEN the review shows orders', and only orders', metrics as weaker than the default
    flagged = [
        w.subject.path
        for w in weaknesses(review)
        if w.subject and w.kind == "metrics-every-interface"
    ]
    (path,) = flagged
    assert path.startswith("consul-mesh-dev/Services/Orders/"), path


def _metrics_bind(task: dict[str, Any]) -> str:
    return str(
        next(
            e["Value"]
            for c in task["ContainerDefinitions"]
            for e in c.get("Environment", [])
            if e["Name"] == "ENVOY_PROMETHEUS_BIND"
        )
    )


def test_configured_services_pass_both_nag_packs(extras: tuple[dict[str, Any], Path]) -> None:
    _, outdir = extras
    findings = unacknowledged(outdir)
    assert findings == [], "\n".join(f"{f.rule} at {f.path}" for f in findings)
    assert stale(outdir) == []
    # orders has no health path: its tcp_check_reason acknowledges MeshService's warning on
    # that service only (`make synth` fails on an unacknowledged warning), and the review reads
    # the acknowledgement with its reason from the assembly
    accepted = [
        (a.path, a.reason)
        for a in nag_review(load_assembly(outdir)).not_checked
        if a.rule == NO_HEALTH_PATH_WARNING
    ]
    assert accepted == [("consul-mesh-dev/Services/Orders", EXTRAS["orders"]["tcp_check_reason"])]


@pytest.mark.parametrize(("count", "fails"), [(500, False), (501, True)])
def test_fails_at_synth_when_the_template_would_hold_too_many_resources(
    count: int, fails: bool
) -> None:
    stack = cdk.Stack(cdk.App(), "Big")
    for i in range(count):
        cdk.CfnResource(stack, f"R{i}", type="AWS::CloudFormation::WaitConditionHandle")
    if fails:
        with pytest.raises(ConfigError, match=r"501 CloudFormation resources, more than the 500"):
            check_template_quotas(stack)
    else:
        check_template_quotas(stack)


@pytest.mark.parametrize(("pad", "fails"), [(990_000, False), (1_000_000, True)])
def test_fails_after_synthesis_when_the_written_template_outgrows_one_megabyte(
    tmp_path: Path, pad: int, fails: bool
) -> None:
    from app import synthesize

    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Big")
    cdk.CfnResource(stack, "R", type="AWS::SSM::Parameter", properties={"Value": "x" * pad})
    check_template_quotas(stack)
    if not fails:
        synthesize(app)
        return
    with pytest.raises(ConfigError) as err:
        synthesize(app)
    size = (tmp_path / "Big.template.json").stat().st_size
    assert str(err.value) == (
        f"invalid context value services: the template of stack Big is {size:,} bytes with 0 "
        "mesh services (demo included), more than the 1,000,000 bytes CloudFormation accepts "
        "(Template body size in an Amazon S3 object); build some services from their teams' "
        "own CDK apps (team_services, docs/services.md)"
    )


def test_fails_at_synth_with_one_line_when_the_services_outgrow_the_template_size(
    tmp_path: Path,
) -> None:
    """Beside the demo, 25 services make a template of about 1.07 MB (about 32 KB each, bench
    figure 8) while they hold about 390 of the 500 resources: the size binds first."""
    from app import synthesize

    services = {f"svc-{i}": {**PAYMENTS, "port": 10000 + i, "allow_from": []} for i in range(25)}
    context = {**cdk_json_context(), "services": json.dumps(services)}
    app = cdk.App(context=context, outdir=str(tmp_path))
    config = MeshConfig.from_context(context)
    MeshStack(app, config.stack_name, config=config, env=cdk.Environment(region="us-east-1"))
    with pytest.raises(ConfigError) as err:
        synthesize(app)
    text = str(err.value)
    assert "\n" not in text
    assert re.fullmatch(
        r"invalid context value services: the template of stack consul-mesh-dev is "
        r"1,\d{3},\d{3} bytes with 27 mesh services \(demo included\), more than the "
        r"1,000,000 bytes CloudFormation accepts .*team_services.*",
        text,
    ), text


@pytest.mark.parametrize("case", ["default", "shop"])
def test_a_task_may_decrypt_only_the_secrets_it_reads_with_the_keys_it_is_granted(
    templates: dict[str, dict[str, Any]], case: str
) -> None:
    """Like a team stack's grant: kms:Decrypt through Secrets Manager and only in the
    encryption context of the secrets the task reads (SecretARN), demo and configured alike."""
    template = templates[case]
    tasks = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::ECS::TaskDefinition"
    ]
    assert tasks
    for task in tasks:
        statements = _execution_policy(template, task)
        readable = [
            arn
            for s in statements
            if "secretsmanager:GetSecretValue" in _as_list(s["Action"])
            for arn in _as_list(s["Resource"])
        ]
        decrypts = [s for s in statements if "kms:Decrypt" in _as_list(s["Action"])]
        assert decrypts, task["Family"]
        for statement in decrypts:
            condition = statement["Condition"]["StringEquals"]
            contexts = _as_list(condition["kms:EncryptionContext:SecretARN"])
            assert contexts
            assert all(arn in readable for arn in contexts), (contexts, readable)
