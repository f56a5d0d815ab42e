"""The platform's SSM contract: what a service team's own CDK app needs to join the mesh.

The platform stack publishes, under `/<prefix>/<environment>/mesh/` (docs/services.md,
"Services from your own CDK app"), plain String parameters (standard tier):

    cluster-name, cluster-arn                the ECS Anywhere cluster the services run on
    consul-grpc-host, consul-grpc-port       where Envoy takes its xDS (gRPC-TLS)
    consul-tls-server-name                   the name on the Consul servers' certificate
    ca-secret-arn, ca-secret-key-arn         the Consul CA secret and its KMS key
    envoy-version                            the Envoy release the Consul release supports
    key-arn                                  the mesh key: team token secrets and log groups
    registrar-labels                         the registrar's docker label contract (JSON)
    envoy-image, init-image                  where the sidecars' images come from (the Envoy
                                             repository, tagged v<envoy-version>; the init
                                             image reference)
    registry-credentials-secret-arn          the private registry's credentials secret, and
    registry-credentials-key-arn             its KMS key: each only when the platform sets it
    services/<name>/token-secret-arn         per `team_services` entry: its Consul token

Tokens stay the platform's: a team service gets one only when the platform's configuration
lists it under `team_services`, which also holds its intentions. `mesh_service_from_parameters`
builds a `MeshService` in any stack of the same account and Region from these parameters,
resolved by CloudFormation when that stack deploys. The sidecar images are the exception: how
ECS pulls an image (from Amazon ECR with the execution role, or with `repositoryCredentials`)
changes the team's template, so the team passes `images=` with the platform's values, which
the image parameters publish for it to read (docs/services.md).

Parameter Store naming (SSM API reference, PutParameter `Name`): letters, digits and `_.-`,
`/` between levels, at most 15 levels, at most 1011 characters, not starting with `aws` or
`ssm` (config.py refuses such a prefix); standard-tier values hold at most 4 KB.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aws_cdk import Aws, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct, IDependable

from mesh_stack import init_program, ports
from mesh_stack.mesh_service import MeshService
from mesh_stack.services_config import pascal
from mesh_stack.sidecar_images import SidecarImages

identity = init_program.load_identity()

CONTRACT_VERSION = 1
MAX_NAME_LENGTH = 1011
MAX_LEVELS = 15
MAX_STANDARD_VALUE_BYTES = 4096
_NAME = re.compile(r"^/[A-Za-z0-9_.\-/]+$")


def root(prefix: str, environment: str) -> str:
    """`/<prefix>/<environment>/mesh`: the path every parameter of the contract lies under."""
    return f"/{prefix}/{environment}/mesh"


def parameter_name(prefix: str, environment: str, leaf: str) -> str:
    """A parameter's full name, checked against Parameter Store's naming rules."""
    name = f"{root(prefix, environment)}/{leaf}"
    if (
        not _NAME.match(name)
        or "//" in name
        or len(name) > MAX_NAME_LENGTH
        or name.count("/") > MAX_LEVELS
        or name.lstrip("/").lower().startswith(("aws", "ssm"))
    ):
        raise ValueError(
            f"SSM parameter name {name!r} breaks Parameter Store's rules (letters, digits, "
            f"'_.-', '/' between at most {MAX_LEVELS} levels, <= {MAX_NAME_LENGTH} characters, "
            "not starting with aws or ssm)"
        )
    return name


def token_leaf(service: str) -> str:
    return f"services/{service}/token-secret-arn"


def label_contract() -> str:
    """The registrar's docker labels and their defaults (docs/architecture.md), as JSON."""
    labels = {
        name.removeprefix("LABEL_").lower().replace("_", "-"): str(getattr(identity, name))
        for name in sorted(dir(identity))
        if name.startswith("LABEL_")
    }
    return json.dumps(
        {
            "version": CONTRACT_VERSION,
            "labels": labels,
            "defaults": {
                "proxy-container": str(identity.DEFAULT_PROXY_CONTAINER),
                "proxy-port": int(identity.DEFAULT_PROXY_PORT),
                "expose-port-offset": int(identity.EXPOSE_PORT_OFFSET),
            },
            "host-mode-inbound-ports": list(ports.ENVOY_INBOUND_PORTS),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def image_parameters(images: SidecarImages) -> list[tuple[str, str, str]]:
    """The sidecar images' parameters: (leaf, value, description). The credentials' only when
    set: a String parameter cannot be empty (SSM API reference, PutParameter `Value`)."""
    values = [
        ("envoy-image", images.envoy_repository, "Envoy image repository (tag v<envoy-version>)"),
        ("init-image", images.init_image, "Init container image reference"),
    ]
    if images.credentials is not None:
        values.append(
            (
                "registry-credentials-secret-arn",
                images.credentials.secret_arn,
                "Private registry credentials secret of the sidecar images",
            )
        )
        if images.credentials.kms_key_arn:
            values.append(
                (
                    "registry-credentials-key-arn",
                    images.credentials.kms_key_arn,
                    "KMS key of the registry credentials secret",
                )
            )
    return values


class PlatformParameters(Construct):
    """Publishes the contract as SSM String parameters (standard tier) under `root(...)`.

    The parameters are created one after the other: Parameter Store throttles bursts of
    PutParameter ("TooManyUpdates"; aws-cloudformation/aws-cloudformation-resource-providers-ssm
    PR #98 added retries for it, hashicorp/terraform-provider-aws #1082 shows it in practice).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        prefix: str,
        environment: str,
        cluster: ecs.ICluster,
        consul_grpc_host: str,
        consul_tls_server_name: str,
        ca_secret: secretsmanager.ISecret,
        envoy_version: str,
        key: kms.IKey,
        team_tokens: dict[str, secretsmanager.ISecret] | None = None,
        images: SidecarImages | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        images = images or SidecarImages()
        if ca_secret.encryption_key is None:
            raise ValueError("ca_secret must carry its KMS key: teams' execution roles need it")
        values: list[tuple[str, str, str]] = [
            ("cluster-name", cluster.cluster_name, "ECS Anywhere cluster of the mesh services"),
            ("cluster-arn", cluster.cluster_arn, "ARN of the ECS Anywhere cluster"),
            ("consul-grpc-host", consul_grpc_host, "Consul servers' xDS endpoint (internal NLB)"),
            ("consul-grpc-port", str(ports.CONSUL_GRPC_TLS), "Consul gRPC-TLS port (xDS)"),
            ("consul-tls-server-name", consul_tls_server_name, "Name on the Consul certificates"),
            ("ca-secret-arn", ca_secret.secret_arn, "Secret holding the Consul CA (PEM)"),
            ("ca-secret-key-arn", ca_secret.encryption_key.key_arn, "KMS key of the CA secret"),
            ("envoy-version", envoy_version, "Envoy release the Consul release supports"),
            ("key-arn", key.key_arn, "Mesh KMS key: team token secrets and log groups"),
            ("registrar-labels", label_contract(), "Registrar docker label contract (JSON)"),
            *image_parameters(images),
        ]
        for service, secret in sorted((team_tokens or {}).items()):
            values.append(
                (token_leaf(service), secret.secret_arn, f"Consul token secret of {service}")
            )
        self.parameters: dict[str, ssm.StringParameter] = {}
        previous: IDependable | None = None
        for leaf, value, description in values:
            if len(value.encode()) > MAX_STANDARD_VALUE_BYTES:
                raise ValueError(f"{leaf} is longer than a standard SSM parameter holds")
            parameter = ssm.StringParameter(
                self,
                pascal(leaf.replace("/", "-")),
                parameter_name=parameter_name(prefix, environment, leaf),
                string_value=value,
                description=description,
                tier=ssm.ParameterTier.STANDARD,
            )
            if previous is not None:
                parameter.node.add_dependency(previous)
            previous = parameter
            self.parameters[leaf] = parameter


class _PlatformImports(Construct):
    """The platform's resources seen from a team's stack, imported once per stack and path, so
    every MeshService of the stack shares one cluster (and its port collision check). Only the
    parameters a MeshService needs are read: CloudFormation warns of parameters no resource
    uses."""

    def __init__(self, scope: Construct, construct_id: str, *, path: str) -> None:
        super().__init__(scope, construct_id)

        def value(leaf: str) -> str:
            return ssm.StringParameter.value_for_string_parameter(self, f"{path}/{leaf}")

        self.value = value
        # From the ARN alone: EXTERNAL tasks in host or bridge mode need no VPC.
        self.cluster = ecs.Cluster.from_cluster_arn(self, "Cluster", value("cluster-arn"))
        self.key_arn = value("key-arn")
        self.key = kms.Key.from_key_arn(self, "Key", self.key_arn)
        self.ca_secret_arn = value("ca-secret-arn")
        self.ca_key_arn = value("ca-secret-key-arn")
        # Imported without their keys: CDK cannot grant an imported key through Secrets Manager
        # (the grant would be silently dropped); `_grant_decrypt` grants the keys instead.
        self.ca_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "CaSecret", self.ca_secret_arn
        )


def _grant_decrypt(service: MeshService, keys: list[str], secrets: list[str]) -> None:
    """kms:Decrypt on the keys of the token and CA secrets, for the execution role that reads
    them: only through Secrets Manager and only for those secrets' encryption context
    (`SecretARN`; Secrets Manager user guide, "Secret encryption and decryption")."""
    service.task_definition.obtain_execution_role().add_to_principal_policy(
        iam.PolicyStatement(
            actions=["kms:Decrypt"],
            resources=keys,
            conditions={
                "StringEquals": {
                    "kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com",
                    "kms:EncryptionContext:SecretARN": secrets,
                }
            },
        )
    )


def mesh_service_from_parameters(
    scope: Construct,
    construct_id: str,
    *,
    prefix: str,
    environment: str,
    service_name: str,
    proxy_port: int,
    prometheus_port: int | None,
    images: SidecarImages | None = None,
    **kwargs: Any,
) -> MeshService:
    """A MeshService in a team's own stack, wired to the platform through its SSM contract.

    prefix / environment: the platform stack's (its parameters live under
        `/<prefix>/<environment>/mesh/`); the platform must list `service_name` under
        `team_services`, which creates its token (the deploy fails on a missing parameter).
    proxy_port / prometheus_port: required, because this app cannot see the platform's
        services: pick ports the platform leaves to teams (proxy ports 20250-20499).
    images: the platform's sidecar images (its `envoy-image`, `init-image` and
        `registry-credentials-*` parameters); the defaults when None.
    kwargs: any other MeshService argument (image, port, app_user, upstreams, ...).
    """
    path = root(prefix, environment)
    token_name = parameter_name(prefix, environment, token_leaf(service_name))
    stack = Stack.of(scope)
    imports_id = f"MeshPlatform{pascal(prefix)}{pascal(environment)}"
    imports = stack.node.try_find_child(imports_id)
    if not isinstance(imports, _PlatformImports):
        imports = _PlatformImports(stack, imports_id, path=path)
    token_arn = ssm.StringParameter.value_for_string_parameter(imports, token_name)
    token = secretsmanager.Secret.from_secret_complete_arn(
        imports, f"{pascal(service_name)}Token", token_arn
    )
    service = MeshService(
        scope,
        construct_id,
        cluster=imports.cluster,
        service_name=service_name,
        token_secret=token,
        ca_secret=imports.ca_secret,
        consul_grpc_host=imports.value("consul-grpc-host"),
        consul_tls_server_name=imports.value("consul-tls-server-name"),
        envoy_version=imports.value("envoy-version"),
        log_key=imports.key,
        proxy_port=proxy_port,
        prometheus_port=prometheus_port,
        images=images,
        **kwargs,
    )
    _grant_decrypt(
        service, [imports.key_arn, imports.ca_key_arn], [token_arn, imports.ca_secret_arn]
    )
    return service
