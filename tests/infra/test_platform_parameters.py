"""The SSM contract: the platform publishes it, and a team's own stack builds a MeshService
from it alone."""

from __future__ import annotations

import json
import re
from typing import Any

import aws_cdk as cdk
import identity  # the registrar's own module (lambda/registrar is on pytest's path)
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Template

from mesh_stack.image_ref import ENVOY_REPOSITORY, INIT_IMAGE
from mesh_stack.platform_parameters import (
    PlatformParameters,
    mesh_service_from_parameters,
    parameter_name,
)
from mesh_stack.sidecar_images import RegistryCredentials, SidecarImages
from tests.infra.conftest import Synthesized

# Parameter Store names (SSM API reference, PutParameter `Name`).
_SSM_NAME = re.compile(r"^/[A-Za-z0-9_.\-/]{1,1010}$")


def published(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["Name"]: r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SSM::Parameter"
    }


@pytest.fixture(scope="module")
def platform() -> dict[str, Any]:
    """A platform stack that publishes the contract, with one team service's token."""
    app = cdk.App()
    stack = cdk.Stack(app, "Platform", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    key = kms.Key(stack, "Key")
    PlatformParameters(
        stack,
        "MeshParameters",
        prefix="consul-mesh",
        environment="dev",
        cluster=ecs.Cluster(stack, "Cluster", vpc=vpc),
        consul_grpc_host="consul.internal.example",
        consul_tls_server_name="consul.internal.example",
        ca_secret=secretsmanager.Secret(stack, "Ca", encryption_key=kms.Key(stack, "FleetKey")),
        envoy_version="1.34.14",
        key=key,
        team_tokens={"billing": secretsmanager.Secret(stack, "BillingToken", encryption_key=key)},
    )
    result: dict[str, Any] = Template.from_stack(stack).to_json()
    return result


def team_template(**extra: Any) -> dict[str, Any]:
    """A service team's own app: nothing of the platform but its prefix and environment."""
    app = cdk.App()
    stack = cdk.Stack(app, "BillingTeam", env=cdk.Environment(region="us-east-1"))
    mesh_service_from_parameters(
        stack,
        "Billing",
        prefix="consul-mesh",
        environment="dev",
        service_name="billing",
        image=ecs.ContainerImage.from_registry("ghcr.io/acme/billing:3.1.0"),
        port=8090,
        app_user="1000:1000",
        health_check_path="/healthz",
        proxy_port=20300,
        prometheus_port=21300,
        **extra,
    )
    result: dict[str, Any] = Template.from_stack(stack).to_json()
    return result


@pytest.fixture(scope="module")
def team() -> dict[str, Any]:
    return team_template()


def test_the_default_stack_publishes_the_contract(synthesized: Synthesized) -> None:
    (template,) = synthesized.templates().values()
    names = set(published(template))
    assert names == {
        f"/consul-mesh/dev/mesh/{leaf}"
        for leaf in (
            "cluster-name",
            "cluster-arn",
            "consul-grpc-host",
            "consul-grpc-port",
            "consul-tls-server-name",
            "ca-secret-arn",
            "ca-secret-key-arn",
            "envoy-version",
            "key-arn",
            "registrar-labels",
            "envoy-image",
            "init-image",
        )
    }
    # the default images, as the platform's own sidecars pull them
    values = {
        name.rsplit("/", 1)[1]: r["Properties"]["Value"] for name, r in published(template).items()
    }
    assert values["envoy-image"] == ENVOY_REPOSITORY
    assert values["init-image"] == INIT_IMAGE


MIRROR_SECRET = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:mirror-AbCdEf"
MIRROR_KEY = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_a_team_stack_pulls_its_sidecars_with_the_platforms_images() -> None:
    team = team_template(
        images=SidecarImages(
            envoy_repository="registry.example.com/mirror/envoy",
            init_image="registry.example.com/mirror/python:3.13-slim",
            credentials=RegistryCredentials(MIRROR_SECRET, MIRROR_KEY),
        )
    )
    (task,) = [r for r in team["Resources"].values() if r["Type"] == "AWS::ECS::TaskDefinition"]
    containers = {c["Name"]: c for c in task["Properties"]["ContainerDefinitions"]}
    assert containers["envoy-init"]["Image"] == "registry.example.com/mirror/python:3.13-slim"
    assert "registry.example.com/mirror/envoy:v" in json.dumps(containers["envoy"]["Image"])
    for name in ("envoy", "envoy-init"):
        assert containers[name]["RepositoryCredentials"] == {"CredentialsParameter": MIRROR_SECRET}
    assert "RepositoryCredentials" not in containers["billing"]


def test_parameters_are_valid_standard_strings_created_one_at_a_time(
    platform: dict[str, Any],
) -> None:
    parameters = published(platform)
    for name, resource in parameters.items():
        assert _SSM_NAME.match(name), name
        assert name.count("/") <= 15
        assert (resource["Properties"]["Type"], resource["Properties"]["Tier"]) == (
            "String",
            "Standard",
        )
    # a chain: every parameter but the first waits for exactly one other
    depends = [r.get("DependsOn", []) for r in parameters.values()]
    assert sorted(len(d) for d in depends) == [0] + [1] * (len(parameters) - 1)


def test_the_label_contract_is_the_registrars(platform: dict[str, Any]) -> None:
    value = published(platform)["/consul-mesh/dev/mesh/registrar-labels"]["Properties"]["Value"]
    contract = json.loads(value)
    assert len(value.encode()) <= 4096  # a standard parameter's limit
    assert contract["labels"]["enabled"] == identity.LABEL_ENABLED
    assert contract["labels"]["expose-port"] == identity.LABEL_EXPOSE_PORT
    assert contract["defaults"]["proxy-port"] == identity.DEFAULT_PROXY_PORT
    assert contract["host-mode-inbound-ports"] == [20000, 20999]


def test_a_team_stack_reads_only_parameters_the_platform_publishes(
    platform: dict[str, Any], team: dict[str, Any]
) -> None:
    read = {
        p["Default"]
        for p in team.get("Parameters", {}).values()
        if p["Type"] == "AWS::SSM::Parameter::Value<String>"
        and not p["Default"].startswith("/cdk-bootstrap/")  # CDK's own bootstrap check
    }
    assert read
    assert read <= set(published(platform))
    # and it uses every one it reads (CloudFormation warns of an unused parameter, W2001)
    resources = json.dumps(team["Resources"])
    for logical, parameter in team["Parameters"].items():
        if parameter["Default"] in read:
            assert json.dumps({"Ref": logical}) in resources, parameter["Default"]
    assert "/consul-mesh/dev/mesh/services/billing/token-secret-arn" in read


def _parameter_ref(team: dict[str, Any], name: str) -> dict[str, str]:
    (logical,) = [k for k, p in team["Parameters"].items() if p.get("Default") == name]
    return {"Ref": logical}


def test_a_team_stack_builds_a_mesh_service_from_the_parameters(team: dict[str, Any]) -> None:
    root = "/consul-mesh/dev/mesh"
    (service,) = [r for r in team["Resources"].values() if r["Type"] == "AWS::ECS::Service"]
    cluster = json.dumps(service["Properties"]["Cluster"])
    assert json.dumps(_parameter_ref(team, f"{root}/cluster-arn")) in cluster
    (task,) = [r for r in team["Resources"].values() if r["Type"] == "AWS::ECS::TaskDefinition"]
    containers = {c["Name"]: c for c in task["Properties"]["ContainerDefinitions"]}
    assert task["Properties"]["NetworkMode"] == "host"
    assert containers["billing"]["DockerLabels"][identity.LABEL_PROXY_PORT] == "20300"
    init_secrets = {s["Name"]: s["ValueFrom"] for s in containers["envoy-init"]["Secrets"]}
    assert init_secrets["CONSUL_HTTP_TOKEN"] == _parameter_ref(
        team, f"{root}/services/billing/token-secret-arn"
    )
    assert init_secrets["CONSUL_CACERT_PEM"] == _parameter_ref(team, f"{root}/ca-secret-arn")
    init_env = {e["Name"]: e["Value"] for e in containers["envoy-init"]["Environment"]}
    assert init_env["CONSUL_GRPC_HOST"] == _parameter_ref(team, f"{root}/consul-grpc-host")
    assert "envoy-version" in json.dumps(team["Parameters"])
    assert (
        _parameter_ref(team, f"{root}/envoy-version") in containers["envoy"]["Image"]["Fn::Join"][1]
    )
    # the execution role may decrypt the token and CA secrets through Secrets Manager
    statements = [
        s
        for r in team["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy"
        for s in r["Properties"]["PolicyDocument"]["Statement"]
    ]
    (decrypt,) = [s for s in statements if s["Action"] == "kms:Decrypt"]
    assert decrypt["Resource"] == [
        _parameter_ref(team, f"{root}/key-arn"),
        _parameter_ref(team, f"{root}/ca-secret-key-arn"),
    ]
    assert decrypt["Condition"]["StringEquals"]["kms:EncryptionContext:SecretARN"] == [
        _parameter_ref(team, f"{root}/services/billing/token-secret-arn"),
        _parameter_ref(team, f"{root}/ca-secret-arn"),
    ]


def test_services_of_one_team_stack_share_the_cluster_and_its_port_check() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "Team", env=cdk.Environment(region="us-east-1"))
    common: dict[str, Any] = {
        "prefix": "consul-mesh",
        "environment": "dev",
        "image": ecs.ContainerImage.from_registry("ghcr.io/acme/app:1"),
        "app_user": "1000",
        "prometheus_port": None,
    }
    mesh_service_from_parameters(
        stack, "Billing", service_name="billing", port=8090, proxy_port=20300, **common
    )
    with pytest.raises(ValueError, match=r"proxy_port 20300 of mesh service 'invoices'.*'billing'"):
        mesh_service_from_parameters(
            stack, "Invoices", service_name="invoices", port=8091, proxy_port=20300, **common
        )


@pytest.mark.parametrize(
    ("prefix", "leaf"),
    [("aws-mesh", "key-arn"), ("SSM", "key-arn"), ("mesh", "a/" * 15 + "b"), ("mesh", "a b")],
)
def test_fails_when_a_parameter_name_breaks_parameter_store_rules(prefix: str, leaf: str) -> None:
    with pytest.raises(ValueError, match=r"breaks Parameter Store's rules"):
        parameter_name(prefix, "dev", leaf)
