"""Sidecar images: today's defaults, a registry or mirror of the operator's, private credentials
through ECS `repositoryCredentials`, and Amazon ECR through the execution role."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template

from mesh_stack.sidecar_images import RegistryCredentials, SidecarImages
from tests.infra.nag_util import open_findings
from tests.infra.test_configured_services import SHOP, synthesize
from tests.infra.test_mesh_service import _actions, _policy_statements_of_role, _service, scaffold

SECRET = "arn:aws:secretsmanager:eu-west-1:222222222222:secret:registry/mirror-AbC123"
KEY = "arn:aws:kms:eu-west-1:222222222222:key/0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
MIRROR = "registry.example.com:5000/mirror/envoyproxy/envoy"
PYTHON = "registry.example.com:5000/library/python:3.13-slim"
ECR = "111111111111.dkr.ecr.us-east-1.amazonaws.com"


def _synth(
    tmp_path: Path, images: SidecarImages | None, *, nag: bool = False
) -> tuple[Template, dict[str, Any]]:
    findings = []
    if nag:
        # Both cdk-nag packs, over the mesh service only (the scaffold's VPC is not under test).
        nag_app, nag_stack, nag_common = scaffold(tmp_path / "nag")
        _service(nag_stack, nag_common, "web", port=8080, images=images)
        findings = [f for f in open_findings(nag_app) if f.path.startswith("Test/Web/")]
    _, stack, common = scaffold(tmp_path / "template")
    _service(stack, common, "web", port=8080, images=images)
    template = Template.from_stack(stack)
    [task] = template.find_resources("AWS::ECS::TaskDefinition").values()
    containers = {c["Name"]: c for c in task["Properties"]["ContainerDefinitions"]}
    role = task["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
    return template, {"containers": containers, "role": role, "findings": findings}


def test_defaults_are_todays_images_pulled_anonymously(tmp_path: Path) -> None:
    _, built = _synth(tmp_path, None)
    containers = built["containers"]
    assert containers["envoy"]["Image"] == "envoyproxy/envoy:v1.34.14"
    assert containers["envoy-init"]["Image"] == "public.ecr.aws/docker/library/python:3.13-slim"
    assert not any("RepositoryCredentials" in c for c in containers.values())


def test_private_registry_credentials_reach_ecs_and_exactly_that_secret(tmp_path: Path) -> None:
    # GIVEN a mirror of both images and credentials in a secret of another account/Region
    images = SidecarImages(
        envoy_repository=MIRROR,
        init_image=PYTHON,
        credentials=RegistryCredentials(SECRET, KEY),
    )
    # WHEN a mesh service is synthesized
    template, built = _synth(tmp_path, images)
    containers = built["containers"]
    # THEN both sidecar containers pull from the mirror with repositoryCredentials
    assert containers["envoy"]["Image"] == f"{MIRROR}:v1.34.14"
    assert containers["envoy-init"]["Image"] == PYTHON
    for name in ("envoy", "envoy-init"):
        assert containers[name]["RepositoryCredentials"] == {"CredentialsParameter": SECRET}
    # the app's own image is none of the mesh's business
    assert "RepositoryCredentials" not in containers["web"]
    # AND the execution role may read exactly that secret, and decrypt it only through
    # Secrets Manager in the secret's Region
    statements = _policy_statements_of_role(template, built["role"])
    on_secret = [s for s in statements if s["Resource"] == SECRET]
    assert {a for s in on_secret for a in _actions(s)} <= {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    }
    assert "secretsmanager:GetSecretValue" in {a for s in on_secret for a in _actions(s)}
    [decrypt] = [s for s in statements if s["Resource"] == KEY]
    assert _actions(decrypt) == ["kms:Decrypt"]
    assert decrypt["Condition"] == {
        "StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}
    }


def test_credentials_are_not_sent_to_ecr_public(tmp_path: Path) -> None:
    # Docker Hub's Envoy takes them (an authenticated account's pull limit); ECR Public's
    # Python is pulled anonymously.
    images = SidecarImages(credentials=RegistryCredentials(SECRET))
    _, built = _synth(tmp_path, images)
    containers = built["containers"]
    assert containers["envoy"]["RepositoryCredentials"] == {"CredentialsParameter": SECRET}
    assert "RepositoryCredentials" not in containers["envoy-init"]


def test_ecr_images_are_pulled_with_the_execution_role(tmp_path: Path) -> None:
    images = SidecarImages(
        envoy_repository=f"{ECR}/mirror/envoyproxy/envoy",
        init_image=f"{ECR}/mirror/python@sha256:" + "b" * 64,
    )
    template, built = _synth(tmp_path, images, nag=True)
    containers = built["containers"]
    assert not any("RepositoryCredentials" in c for c in containers.values())
    statements = _policy_statements_of_role(template, built["role"])
    pulls = [s for s in statements if "ecr:BatchGetImage" in _actions(s)]
    resources = sorted(str(s["Resource"]) for s in pulls)
    assert len(pulls) == 2, statements
    assert all("repository/mirror/" in r for r in resources), resources
    assert built["findings"] == [], built["findings"]


def test_an_ecr_pull_through_cache_can_import_a_tag_it_has_not_cached(tmp_path: Path) -> None:
    # GIVEN Envoy from an ECR pull-through cache of Docker Hub, and Python from ECR Public
    images = SidecarImages(envoy_repository=f"{ECR}/docker-hub/envoyproxy/envoy")
    template, built = _synth(tmp_path, images, nag=True)
    # WHEN a task starts with a tag the cache has not seen (a new envoy_version, a new account)
    # THEN its execution role may import it from upstream and create the cache repository,
    # on exactly that repository (pull-through-cache-iam.html), and nowhere else
    statements = _policy_statements_of_role(template, built["role"])
    imports = [s for s in statements if "ecr:BatchImportUpstreamImage" in _actions(s)]
    assert len(imports) == 1, statements
    [statement] = imports
    assert sorted(_actions(statement)) == ["ecr:BatchImportUpstreamImage", "ecr:CreateRepository"]
    assert statement["Resource"] == (
        "arn:aws:ecr:us-east-1:111111111111:repository/docker-hub/envoyproxy/envoy"
    )
    assert built["findings"] == [], built["findings"]
    # AND a service without ECR images gets no such grant
    default_template, default = _synth(tmp_path / "default", None)
    assert not any(
        "ecr:BatchImportUpstreamImage" in _actions(s)
        for s in _policy_statements_of_role(default_template, default["role"])
    )


@pytest.fixture(scope="module")
def mirrored() -> dict[str, Any]:
    """The stack with a mirror for both images, credentials, the demo and two services."""
    return synthesize(
        envoy_image=MIRROR,
        init_image=PYTHON,
        registry_credentials_secret_arn=SECRET,
        registry_credentials_kms_key_arn=KEY,
        services=json.dumps(SHOP),
    )


def test_every_mesh_service_of_the_stack_pulls_its_sidecars_from_the_mirror(
    mirrored: dict[str, Any],
) -> None:
    # GIVEN envoy_image/init_image and credentials in the configuration
    tasks = [
        r["Properties"]
        for r in mirrored["Resources"].values()
        if r["Type"] == "AWS::ECS::TaskDefinition"
    ]
    apps = set()
    for task in tasks:
        containers = {c["Name"]: c for c in task["ContainerDefinitions"]}
        # THEN the demo's and the configured services' sidecars all come from the mirror
        assert containers["envoy"]["Image"] == f"{MIRROR}:v1.34.14"
        assert containers["envoy-init"]["Image"] == PYTHON
        for name in ("envoy", "envoy-init"):
            assert containers[name]["RepositoryCredentials"] == {"CredentialsParameter": SECRET}
        (app,) = set(containers) - {"envoy", "envoy-init"}
        # and the apps keep their own images, without the sidecars' credentials
        assert "RepositoryCredentials" not in containers[app]
        apps.add(app)
    assert apps == {"frontend", "backend", "orders", "payments"}


def test_the_platform_publishes_the_images_for_teams_own_apps(mirrored: dict[str, Any]) -> None:
    published = {
        r["Properties"]["Name"].rsplit("/mesh/", 1)[1]: r["Properties"]["Value"]
        for r in mirrored["Resources"].values()
        if r["Type"] == "AWS::SSM::Parameter"
    }
    assert published["envoy-image"] == MIRROR
    assert published["init-image"] == PYTHON
    assert published["registry-credentials-secret-arn"] == SECRET
    assert published["registry-credentials-key-arn"] == KEY
