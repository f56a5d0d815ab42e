"""Access to what the stack's keys encrypt, granted in the grantee's own policy: secrets, and
Lambda environments.

`Secret.grant_read`/`grant_write` also grant the secret's key through a `kms.ViaServicePrincipal`,
which has no policy of its own to add a statement to, so CDK writes the grantee's role into the
KEY policy. A key policy naming a role that the same deployment creates can be rejected with
"invalid principals" while IAM propagates the new role, intermittently. The keys of this app
already let every principal of the account use them through Secrets Manager (the statement CDK
adds for a secret with a customer-managed key, next to the account-root statement that
delegates to IAM), so a statement in the role's own policy is all KMS needs: kms:Decrypt (and
kms:GenerateDataKey to write) on the secret's key, only with `kms:ViaService`
secretsmanager.<region>. Grant secrets with these functions, never with `grant_read`.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

READ = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
WRITE = ["secretsmanager:PutSecretValue", "secretsmanager:UpdateSecret"]


def _keys(secrets: tuple[secretsmanager.ISecret, ...]) -> list[kms.IKey]:
    keys: dict[str, kms.IKey] = {}
    for secret in secrets:
        if secret.encryption_key is not None:
            keys.setdefault(secret.encryption_key.node.path, secret.encryption_key)
    return list(keys.values())


def _key_use(
    grantee: iam.IGrantable,
    actions: list[str],
    keys: list[kms.IKey],
    secrets: tuple[secretsmanager.ISecret, ...] = (),
) -> None:
    """`actions` on `keys` through Secrets Manager; with `secrets`, also only for their
    encryption context: Secrets Manager calls KMS with `SecretARN` = the secret's ARN
    (Secrets Manager user guide, "Secret encryption and decryption")."""
    if not keys:
        return
    condition: dict[str, object] = {"kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"}
    if secrets:
        condition["kms:EncryptionContext:SecretARN"] = [s.secret_arn for s in secrets]
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=actions,
            resources=[key.key_arn for key in keys],
            conditions={"StringEquals": condition},
        )
    )


def grant_secret_read(grantee: iam.IGrantable, *secrets: secretsmanager.ISecret) -> None:
    """Let `grantee` read `secrets` (and decrypt them with their keys)."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=READ, resource_arns=[s.secret_arn for s in secrets]
    )
    _key_use(grantee, ["kms:Decrypt"], _keys(secrets))


def grant_secret_read_write(grantee: iam.IGrantable, *secrets: secretsmanager.ISecret) -> None:
    """Let `grantee` read `secrets` and put new versions of them."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=READ + WRITE, resource_arns=[s.secret_arn for s in secrets]
    )
    _key_use(grantee, ["kms:Decrypt", "kms:GenerateDataKey"], _keys(secrets))


def grant_key_use(grantee: iam.IGrantable, *secrets: secretsmanager.ISecret) -> None:
    """Only the KMS half of `grant_secret_read`: for a role that some other code grants the
    `keyless` form of `secrets` to (an ECS task definition reading them as task secrets):
    only for these secrets' encryption context, like a team stack's grant
    (platform_parameters._grant_decrypt)."""
    _key_use(grantee, ["kms:Decrypt"], _keys(secrets), secrets)


def keyless(
    scope: Construct, construct_id: str, secret: secretsmanager.ISecret
) -> secretsmanager.ISecret:
    """`secret` as code that calls `grant_read` itself should see it: the same ARN (and so the
    same ordering after whatever produces it), without its key, so that that `grant_read` names
    no role in the key policy. Pair it with `grant_key_use` on the reading role."""
    return secretsmanager.Secret.from_secret_attributes(
        scope, construct_id, secret_complete_arn=secret.secret_arn
    )


def task_secret(
    scope: Construct,
    construct_id: str,
    secret: secretsmanager.ISecret,
    *,
    reader: iam.IGrantable,
    field: str | None = None,
) -> ecs.Secret:
    """`secret` (or its JSON `field`) as an ECS task secret read by `reader`, the task's
    execution role. The container definition grants the secret itself by calling `grant_read`
    on it (aws-ecs ContainerDefinition.addSecret): that grant gets the `keyless` form, and the
    key is granted in `reader`'s own policy, so no key policy names the role."""
    if secret.encryption_key is not None:
        grant_key_use(reader, secret)
        secret = keyless(scope, construct_id, secret)
    return ecs.Secret.from_secrets_manager(secret, field)


def encrypt_environment(
    key: kms.IKey, *functions: lambda_.IFunction, policy: iam.ManagedPolicy | None = None
) -> None:
    """Encrypt each function's environment with `key` (KmsKeyArn) and let its role decrypt it.

    Lambda encrypts environment variables with an AWS managed key unless told otherwise;
    scanners flag that, and a customer-managed key puts every read of the configuration under
    the stack's key policy and CloudTrail. Lambda decrypts at cold start for the execution role
    (through a grant it creates on the key when the function is created, which the deploying
    role may do; AWS Lambda Developer Guide, "Securing environment variables"); the role's own
    policy also allows it, through Lambda only: in `policy` when given (a role whose permissions
    all live in one managed policy), else in the role's default policy.
    """
    statement = iam.PolicyStatement(
        actions=["kms:Decrypt"],
        resources=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": f"lambda.{Aws.REGION}.amazonaws.com"}},
    )
    for function in functions:
        cfn = function.node.default_child
        if not isinstance(cfn, lambda_.CfnFunction):
            raise TypeError(f"{function.node.path} is not a Lambda function of this app")
        cfn.kms_key_arn = key.key_arn
        if policy is None:
            function.add_to_role_policy(statement)
    if policy is not None:
        policy.add_statements(statement)
