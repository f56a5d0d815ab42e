"""Mesh services declared as configuration (`services`, `team_services`), built in CDK.

For each entry of `services` (and the demo, which is two such entries): a `MeshService`
(EXTERNAL task definition, ECS service, log group on the stack key), a Consul token with the
service identity in its own secret, the allow intentions of its `allow_from`, its app secrets
from Secrets Manager and a stack output naming the service and how to call it. For each entry
of `team_services`: the token and intentions only; the team's own CDK app builds the rest
(`platform_parameters.mesh_service_from_parameters`).

Removing an entry removes all of it on the next deploy: CloudFormation deletes the ECS service
(its tasks stop, and the registrar deregisters them), the token (the provider deletes it in
Consul, then its secret) and the intentions entry of which it was the destination.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aws_cdk import Aws, CfnOutput, CfnResource, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from mesh_stack import image_ref
from mesh_stack.config_errors import ConfigError
from mesh_stack.mesh_service import MeshService
from mesh_stack.service_environment import SecretRef
from mesh_stack.service_ports import ServicePorts
from mesh_stack.services_config import (
    ServiceSpec,
    TeamService,
    intentions,
    pascal,
)
from mesh_stack.sidecar_images import SidecarImages


class ConsulDeclarations(Protocol):
    """What this construct asks of `ConsulObjects`: a token per service, allow intentions."""

    def service_token(self, service_name: str) -> secretsmanager.ISecret: ...

    def intention(self, source: str, destination: str, action: str = "allow") -> Any: ...


# Per template (CloudFormation user guide, "Understand CloudFormation quotas",
# https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html).
MAX_RESOURCES = 500
MAX_OUTPUTS = 200


def check_template_quotas(stack: Stack) -> None:
    """Fail synthesis, not the deploy, when the configured services outgrow one template."""
    children = stack.node.find_all()
    resources = sum(isinstance(c, CfnResource) for c in children)
    outputs = sum(isinstance(c, CfnOutput) for c in children)
    for count, limit, what in (
        (resources, MAX_RESOURCES, "resources"),
        (outputs, MAX_OUTPUTS, "outputs"),
    ):
        if count > limit:
            raise ConfigError(
                f"invalid context value services: the stack would declare {count} "
                f"CloudFormation {what}, more than the {limit} a template may hold; build some "
                "services from their teams' own CDK apps (team_services, docs/services.md)"
            )


def output_id(service: str) -> str:
    """The stack output of a configured service: `Service<Name>` (stable, operators read it)."""
    return f"Service{pascal(service)}"


class ConfiguredServices(Construct):
    """The configured mesh services of one scope (`Services`, or `Demo` for the demo).

    services / ports: validated entries and their port plans (`MeshConfig.service_ports`).
    team_services: services built by teams' own apps: token and intentions only.
    consul: declares tokens and intentions (the stack's `ConsulObjects`).
    config_key: the configuration key named in errors (`services`, or `demo`).
    images: where every service's Envoy and init images come from (`envoy_image`,
        `init_image`, registry credentials); the defaults when None.
    The other arguments go to every MeshService unchanged.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        services: Sequence[ServiceSpec],
        ports: Mapping[str, ServicePorts],
        consul: ConsulDeclarations,
        cluster: ecs.ICluster,
        ca_secret: secretsmanager.ISecret,
        consul_grpc_host: str,
        consul_tls_server_name: str,
        envoy_version: str,
        log_key: kms.IKey,
        team_services: Sequence[TeamService] = (),
        config_key: str = "services",
        images: SidecarImages | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.services: dict[str, MeshService] = {}
        self.team_tokens: dict[str, secretsmanager.ISecret] = {}
        for spec in services:
            try:
                self.services[spec.name] = self._build(
                    spec,
                    ports[spec.name],
                    token=consul.service_token(spec.name),
                    cluster=cluster,
                    ca_secret=ca_secret,
                    consul_grpc_host=consul_grpc_host,
                    consul_tls_server_name=consul_tls_server_name,
                    envoy_version=envoy_version,
                    log_key=log_key,
                    images=images,
                )
            except ValueError as err:
                # Configuration checks these first; this keeps any rule MeshService adds later
                # a one-line error naming the entry instead of a traceback.
                if isinstance(err, ConfigError):
                    raise
                where = f"{config_key}.{spec.name}"
                raise ConfigError(f"invalid context value {where}: {err}") from None
            self._output(spec.name, "mesh service on the ECS Anywhere cluster")
        for team in team_services:
            self.team_tokens[team.name] = consul.service_token(team.name)
            self._output(team.name, "built by its team's own CDK app")
        for caller, destination in intentions([*services, *team_services]):
            consul.intention(caller, destination)

    def _build(
        self,
        spec: ServiceSpec,
        ports: ServicePorts,
        *,
        token: secretsmanager.ISecret,
        **common: Any,
    ) -> MeshService:
        service = MeshService(
            self,
            pascal(spec.name),
            service_name=spec.name,
            image=self._image(spec),
            port=spec.port,
            token_secret=token,
            app_user=spec.app_user,
            environment=spec.environment,
            health_check_path=spec.health_check_path,
            tags=spec.tags,
            upstreams=spec.upstreams,
            network_mode=spec.network_mode,
            insecure_published_app_port=spec.insecure_published_app_port,
            desired_count=spec.count,
            daemon=spec.daemon,
            cpu=spec.cpu,
            memory_mib=spec.memory,
            proxy_port=ports.proxy,
            expose_port=ports.expose,
            prometheus_port=ports.metrics,
            prometheus_bind_address=spec.prometheus_bind_address,
            **common,
        )
        if spec.tcp_check_reason is not None:
            service.accept_tcp_check(spec.tcp_check_reason)
        self._add_secrets(service, spec.secrets)
        if image_ref.ecr_repository(image_ref.parse(spec.image)) is not None:
            service.acknowledge_ecr_pulls()
        return service

    def _image(self, spec: ServiceSpec) -> ecs.ContainerImage:
        """Docker Hub or any registry by reference; ECR through the repository, so that the
        execution role is granted pull on exactly that repository."""
        parsed = image_ref.parse(spec.image)
        repository = image_ref.ecr_repository(parsed)
        if repository is None:
            return ecs.ContainerImage.from_registry(spec.image)
        imported = ecr.Repository.from_repository_attributes(
            self,
            f"{pascal(spec.name)}Repository",
            repository_arn=repository.arn,
            repository_name=repository.name,
        )
        return ecs.ContainerImage.from_ecr_repository(imported, parsed.version)

    def _add_secrets(self, service: MeshService, secrets: Sequence[SecretRef]) -> None:
        """ECS `secrets` of the app container; the execution role reads exactly these.

        `add_secret` grants secretsmanager:GetSecretValue (and DescribeSecret) on each secret.
        A secret encrypted with a customer-managed key also needs kms:Decrypt on that key
        (ECS developer guide, "Using Secrets Manager", IAM permissions): granted in the role's
        own policy, only through Secrets Manager and only for these secrets' encryption
        context (Secrets Manager calls KMS with `SecretARN` = the secret's ARN; Secrets
        Manager user guide, "Secret encryption and decryption"). The key's policy must let the
        account's IAM policies grant it (the default key policy does).
        """
        if not secrets:
            return
        role = service.task_definition.obtain_execution_role()
        keys: dict[str, list[str]] = {}
        for ref in secrets:
            secret = secretsmanager.Secret.from_secret_complete_arn(
                service, f"Secret{ref.env}", ref.secret_arn
            )
            if ref.version_stage or ref.version_id:
                value = ecs.Secret.from_secrets_manager_version(
                    secret,
                    ecs.SecretVersionInfo(
                        version_stage=ref.version_stage, version_id=ref.version_id
                    ),
                    ref.json_key,
                )
            else:
                value = ecs.Secret.from_secrets_manager(secret, ref.json_key)
            service.app_container.add_secret(ref.env, value)
            if ref.kms_key_arn:
                keys.setdefault(ref.kms_key_arn, []).append(ref.secret_arn)
        for key_arn, secret_arns in sorted(keys.items()):
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com",
                            "kms:EncryptionContext:SecretARN": sorted(set(secret_arns)),
                        }
                    },
                )
            )

    def _output(self, service: str, kind: str) -> None:
        CfnOutput(
            Stack.of(self),
            output_id(service),
            value=service,
            description=(
                f"Consul service {service} ({kind}). A mesh service calls it with "
                f'"upstreams": {{"{service}": <local port>}} and 127.0.0.1:<local port>, once '
                f"listed in {service}'s allow_from."
            ),
        )
