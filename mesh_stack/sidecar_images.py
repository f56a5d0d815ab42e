"""Where the sidecars' images come from: Envoy and the init container's Python.

Defaults pull Envoy from Docker Hub (`envoyproxy/envoy:v<envoy_version>`) and the init
container from ECR Public. An operator may point either at a registry or mirror of their own
(`envoy_image`, `init_image`), with credentials for a private registry outside AWS, or an
authenticated Docker Hub account, in a Secrets Manager secret that ECS reads through the task
execution role (`repositoryCredentials`, ECS developer guide "Private registry
authentication for tasks": supported on ECS Anywhere external instances; the execution role
needs `secretsmanager:GetSecretValue` on the secret and `kms:Decrypt` on its key when that is
a customer-managed key). An image in Amazon ECR is pulled with the execution role's ECR
permissions instead (same page: "If your task definition references an image that's stored
in Amazon ECR, this topic doesn't apply").

An ECR repository may be a pull-through cache (a mirror of Docker Hub, say): a pull of a tag
not cached yet makes ECR import it from upstream as the puller, which then needs
`ecr:BatchImportUpstreamImage`, and `ecr:CreateRepository` while the cache repository does not
exist yet (Amazon ECR user guide, "IAM permissions required to sync an upstream registry with an
Amazon ECR private registry", https://docs.aws.amazon.com/AmazonECR/latest/userguide/
pull-through-cache-iam.html). Without them the deploy succeeds and the first task start of each
new tag stops with CannotPullContainerError, so both are granted on the sidecar repositories
(`grant_pull_through_cache`): they are inert on an ordinary repository.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from mesh_stack import image_ref
from mesh_stack.image_ref import ENVOY_REPOSITORY, INIT_IMAGE


@dataclass(frozen=True)
class RegistryCredentials:
    """A secret `{"username", "password"}` for a private registry, and its KMS key if any."""

    secret_arn: str
    kms_key_arn: str = ""


@dataclass(frozen=True)
class SidecarImages:
    """The Envoy repository (the tag is `v<envoy_version>`) and the init image reference.

    credentials: used for every image that is neither on ECR Public nor in Amazon ECR.
    """

    envoy_repository: str = ENVOY_REPOSITORY
    init_image: str = INIT_IMAGE
    credentials: RegistryCredentials | None = None

    def envoy(self, scope: Construct, version: str) -> ecs.ContainerImage:
        """`<envoy_repository>:v<version>`; `version` may be a token (a team's stack reads it
        from the platform's parameters), so where the image lives is read from the repository."""
        repository = image_ref.parse(f"{self.envoy_repository}:latest")
        tag = f"v{version}"
        return self._image(scope, "EnvoyImage", repository, f"{self.envoy_repository}:{tag}", tag)

    def init(self, scope: Construct) -> ecs.ContainerImage:
        image = image_ref.parse(self.init_image)
        return self._image(scope, "InitImage", image, self.init_image, image.version)

    def uses_ecr(self) -> bool:
        return bool(self.ecr_repository_arns())

    def ecr_repository_arns(self) -> list[str]:
        """ARNs of the sidecar images' Amazon ECR repositories, each once, in image order."""
        arns: list[str] = []
        for reference in (f"{self.envoy_repository}:latest", self.init_image):
            repository = image_ref.ecr_repository(image_ref.parse(reference))
            if repository is not None and repository.arn not in arns:
                arns.append(repository.arn)
        return arns

    def grant_pull_through_cache(self, role: iam.IRole) -> None:
        """Let `role` fill a pull-through cache on a first pull: import the upstream image,
        and create the cache repository when it is missing; only on the sidecars' ECR
        repositories (pulls themselves are granted by `from_ecr_repository`)."""
        arns = self.ecr_repository_arns()
        if not arns:
            return
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ecr:BatchImportUpstreamImage", "ecr:CreateRepository"],
                resources=arns,
            )
        )

    def _image(
        self,
        scope: Construct,
        construct_id: str,
        image: image_ref.ImageRef,
        reference: str,
        version: str,
    ) -> ecs.ContainerImage:
        in_ecr = image_ref.ecr_repository(image)
        if in_ecr is not None:
            repository = ecr.Repository.from_repository_attributes(
                scope, construct_id, repository_name=in_ecr.name, repository_arn=in_ecr.arn
            )
            # Grants the execution role pull on this repository (and GetAuthorizationToken).
            return ecs.ContainerImage.from_ecr_repository(repository, version)
        if self.credentials is None or not image_ref.pulled_with_credentials(image):
            return ecs.ContainerImage.from_registry(reference)
        secret = secretsmanager.Secret.from_secret_attributes(
            scope, f"{construct_id}Credentials", secret_complete_arn=self.credentials.secret_arn
        )
        # from_registry grants the execution role GetSecretValue and DescribeSecret on exactly
        # this ARN; the key, if any, is granted by `grant_credentials_key`.
        return ecs.ContainerImage.from_registry(reference, credentials=secret)

    def grant_credentials_key(self, role: iam.IRole) -> None:
        """Let `role` decrypt the credentials secret with its customer-managed key, only
        through Secrets Manager in the secret's own Region."""
        if self.credentials is None or not self.credentials.kms_key_arn:
            return
        region = self.credentials.secret_arn.split(":")[3]
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[self.credentials.kms_key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
                },
            )
        )
