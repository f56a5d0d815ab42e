"""The Lambda functions that run the registrar's code (lambda/registrar/).

The event handler, the reconcile pass and the drain are three entry points of one asset. They
share the network placement, the Consul settings, the secrets, the encrypted log group and the
IAM acknowledgements, so they are built here once instead of once per construct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from mesh_stack import lambda_code
from mesh_stack.key_use import encrypt_environment, grant_secret_read
from mesh_stack.nag import acknowledge

# The newest Python runtime the pinned aws-cdk-lib offers; the code stays 3.11-compatible
# because the tests run it on 3.11.
RUNTIME = lambda_.Runtime.PYTHON_3_14


@dataclass(frozen=True)
class RegistrarSettings:
    """Where the registrar's functions run and what they talk to.

    vpc / security_group: private subnets, and a group the fleet admits on 8501.
    cluster: the ECS cluster whose tasks are registered.
    consul_http_addr: `https://<consul lb>:8501`.
    token_secret / ca_secret: the registrar's ACL token and the Consul CA (read, never logged).
    key: customer-managed KMS key of the log groups and the functions' environments.
    """

    vpc: ec2.IVpc
    security_group: ec2.ISecurityGroup
    cluster: ecs.ICluster
    consul_http_addr: str
    token_secret: secretsmanager.ISecret
    ca_secret: secretsmanager.ISecret
    key: kms.IKey

    @property
    def environment(self) -> dict[str, str]:
        """DESIGN.md section 3: Consul's own variable names; secrets by ARN only."""
        return {
            "CONSUL_HTTP_ADDR": self.consul_http_addr,
            "CONSUL_TOKEN_SECRET_ARN": self.token_secret.secret_arn,
            "CONSUL_CACERT_SECRET_ARN": self.ca_secret.secret_arn,
            "ECS_CLUSTER_ARN": self.cluster.cluster_arn,
        }


def registrar_function(
    scope: Construct,
    settings: RegistrarSettings,
    *,
    handler: str,
    description: str,
    timeout: Duration,
    memory_size: int,
    reserved_concurrency: int | None,
    concurrency_reason: str,
    dlq_reason: str,
    extra_environment: dict[str, str] | None = None,
) -> lambda_.Function:
    """`scope/Function` with its log group `scope/Logs`, reading the token and the CA.

    reserved_concurrency: None (the default everywhere) reserves nothing: a reservation may
      take at most the account's unreserved concurrency (its "Concurrent executions" quota
      minus other functions' reservations) minus 100, and new accounts start with a quota so
      low that any reservation fails the deployment.
    concurrency_reason: what bounds the function's concurrency when nothing is reserved
      (cdk-nag asks for a reservation on every function).
    dlq_reason: why this function needs no function-level DLQ (cdk-nag asks for one on every
      function; the reason names where its failures go instead).
    """
    log_group = logs.LogGroup(
        scope, "Logs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=settings.key
    )
    function = lambda_.Function(
        scope,
        "Function",
        description=description,
        runtime=RUNTIME,
        architecture=lambda_.Architecture.ARM_64,
        handler=handler,
        code=lambda_code.for_asset("registrar"),
        timeout=timeout,
        memory_size=memory_size,
        vpc=settings.vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        security_groups=[settings.security_group],
        log_group=log_group,
        tracing=lambda_.Tracing.ACTIVE,
        reserved_concurrent_executions=reserved_concurrency,
        environment={**settings.environment, **(extra_environment or {})},
    )
    grant_secret_read(function, settings.token_secret, settings.ca_secret)
    encrypt_environment(settings.key, function)
    role = function.role
    assert role is not None
    acknowledge(function, "NIST.800.53.R5-LambdaDLQ", dlq_reason)
    if reserved_concurrency is None:
        acknowledge(function, "NIST.800.53.R5-LambdaConcurrency", concurrency_reason)
    acknowledge(
        role,
        "NIST.800.53.R5-IAMNoInlinePolicy",
        "CDK-generated least-privilege policy attached to this role only.",
    )
    acknowledge(
        role,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaVPCAccessExecutionRole]",
        "AWS-managed policy for ENI management of VPC Lambdas; it grants only "
        "ec2:*NetworkInterface* and log writes, which every VPC function needs.",
    )
    acknowledge(
        role,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]",
        "AWS-managed policy limited to writing the function's own logs.",
    )
    return function


def grant_cluster_reads(
    function: lambda_.Function, cluster: ecs.ICluster, *, list_tasks: bool = False
) -> None:
    """The ECS/SSM reads of the registrar: describes of this cluster (plus ListTasks)."""
    stack = Stack.of(function)

    def ecs_arn(resource: str) -> str:
        return stack.format_arn(
            service="ecs",
            resource=resource,
            resource_name=f"{cluster.cluster_name}/*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )

    instances, tasks = ecs_arn("container-instance"), ecs_arn("task")
    function.add_to_role_policy(
        iam.PolicyStatement(
            sid="DescribeThisClustersTasksAndHosts",
            actions=["ecs:DescribeContainerInstances", "ecs:DescribeTasks"],
            resources=[instances, tasks],
        )
    )
    if list_tasks:
        # ListTasks without a containerInstance filter is authorized against resource "*"
        # (a container-instance ARN never matches it: AccessDenied), so the cluster is pinned
        # by the ecs:cluster condition instead, as AWS's "list tasks in a cluster" example does.
        function.add_to_role_policy(
            iam.PolicyStatement(
                sid="ListThisClustersTasks",
                actions=["ecs:ListTasks"],
                resources=["*"],
                conditions={"ArnEquals": {"ecs:cluster": cluster.cluster_arn}},
            )
        )
    # Neither call supports resource-level permissions (Service Authorization Reference).
    function.add_to_role_policy(
        iam.PolicyStatement(
            sid="ReadTaskDefinitionLabelsAndHostAddresses",
            actions=["ecs:DescribeTaskDefinition", "ssm:DescribeInstanceInformation"],
            resources=["*"],
        )
    )
    role = function.role
    assert role is not None
    acknowledge(
        role,
        "AwsSolutions-IAM5[Resource::*]",
        "ecs:DescribeTaskDefinition, ssm:DescribeInstanceInformation and the X-Ray trace "
        "writes support no resource-level permissions; the describes are read-only. "
        "ecs:ListTasks of a whole cluster is authorized against * and bound to this cluster "
        "by an ecs:cluster condition. Every other action is scoped to this cluster's tasks and "
        "container instances.",
    )
    for what, arn in (("container instances", instances), ("tasks", tasks)):
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::{nag_form(stack, arn)}]",
            f"Only {what} of this cluster; their IDs are not known at deploy time.",
        )


def nag_form(stack: Stack, value: str) -> str:
    """How cdk-nag prints a (possibly tokenized) ARN in a finding id: `Ref X` as `<X>`."""
    resolved: Any = stack.resolve(value)
    if isinstance(resolved, str):
        return resolved
    if "Fn::Join" not in resolved:
        return _nag_part(resolved)
    separator, parts = resolved["Fn::Join"]
    return str(separator).join(_nag_part(part) for part in parts)


def _nag_part(part: Any) -> str:
    if isinstance(part, str):
        return part
    if "Ref" in part:
        return f"<{part['Ref']}>"
    logical, attribute = part["Fn::GetAtt"]
    return f"<{logical}.{attribute}>"
