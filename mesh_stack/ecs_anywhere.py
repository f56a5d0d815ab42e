"""The ECS cluster on-prem hosts join, the role they run with, their SSM activation, and the
teardown that lets the cluster be deleted while hosts are still registered."""

from __future__ import annotations

from aws_cdk import ArnFormat, Aws, CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct, IConstruct

from mesh_stack import lambda_code
from mesh_stack.key_use import encrypt_environment, grant_secret_read
from mesh_stack.nag import acknowledge
from mesh_stack.onprem_contract import INSTALL_SCRIPT
from mesh_stack.registrar_function import nag_form

# The function retries CreateActivation for up to 90 s while IAM propagates the new host role
# (lambda/activation/handler.py, ROLE_PROPAGATION_SECONDS) and, on teardown, deregisters hosts 8
# at a time until 30 s before its own timeout, then answers FAILED with what is left, so that a
# re-run of `cdk destroy` carries on (lambda/activation/teardown.py; bench/README.md figure 7:
# about 3,000 hosts per run at 100 ms per call). CloudFormation stops waiting for an answer after
# SERVICE_TIMEOUT instead of the default hour, should the function die without answering.
FUNCTION_TIMEOUT = Duration.minutes(3)
SERVICE_TIMEOUT = Duration.minutes(5)


class EcsAnywhere(Construct):
    """An ECS cluster for ECS Anywhere hosts, their IAM role and a one-time SSM activation.

    The activation's code is written by a small custom-resource function straight into a
    KMS-encrypted Secrets Manager secret (`activation_secret`, value `"<id> <code>"`); it never
    appears in the template, an output or a log. `registration_command` is the command an
    operator runs on a new host: it reads the secret and runs AWS's ecs-anywhere-install.sh.
    The stack publishes it, the cluster and the function as outputs (mesh_stack/outputs.py).

    vpc: where the activation function runs (private subnets with egress to AWS APIs); the
        cluster itself only needs it because ecs.Cluster would otherwise create a VPC.
    key: customer-managed KMS key for the secret, the function's log group and environment.
    registration_limit: hosts one activation may register (SSM: 1-1000).
    expiry_days: days the activation stays valid (SSM: at most 30); reissue with
        `aws lambda invoke --function-name <ActivationFunctionName> --payload
        '{"action":"reissue"}' --cli-binary-format raw-in-base64-out /dev/stdout` (AWS CLI v2
        reads --payload as base64 unless told it is raw: "Invalid base64" otherwise).

    `teardown` (Custom::EcsAnywhereTeardown, served by the same function) deregisters every
    container instance (force) and the hosts' SSM managed instances when it is deleted. It
    depends on the cluster, so CloudFormation deletes it first; `tear_down_before(...)` makes it
    run before the services on the cluster are deleted as well (a service's deletion waits for
    its tasks, which never stop on a host that is gone).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        key: kms.IKey,
        registration_limit: int = 10,
        expiry_days: int = 7,
    ) -> None:
        super().__init__(scope, construct_id)
        if not 1 <= registration_limit <= 1000:
            raise ValueError(f"registration_limit must be 1..1000, got {registration_limit}")
        if not 1 <= expiry_days <= 30:
            raise ValueError(f"expiry_days must be 1..30 (SSM's maximum), got {expiry_days}")

        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        self.host_role = self._host_role(self.cluster)
        self.activation_secret = secretsmanager.Secret(
            self,
            "ActivationSecret",
            description=(
                "ECS Anywhere SSM activation as '<activation-id> <activation-code>'; "
                "written by the activation function"
            ),
            encryption_key=key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.activation_secret,
            "AwsSolutions-SMG4",
            "The value is an SSM activation that expires after at most 30 days and is "
            "replaced by invoking the activation function, not by Secrets Manager rotation.",
        )
        acknowledge(
            self.activation_secret,
            "NIST.800.53.R5-SecretsManagerRotationEnabled",
            "The value is an SSM activation that expires after at most 30 days and is "
            "replaced by invoking the activation function, not by Secrets Manager rotation.",
        )
        self.function = self._activation_function(vpc, key, registration_limit, expiry_days)
        self.activation = CustomResource(
            self,
            "Activation",
            service_token=self.function.function_arn,
            resource_type="Custom::SsmActivation",
            properties={
                "RegistrationLimit": registration_limit,
                "ExpiryDays": expiry_days,
                "Role": self.host_role.role_name,
            },
            service_timeout=SERVICE_TIMEOUT,
        )
        self.activation.node.add_dependency(self.activation_secret)
        self.teardown = CustomResource(
            self,
            "Teardown",
            service_token=self.function.function_arn,
            resource_type="Custom::EcsAnywhereTeardown",
            properties={
                "ClusterArn": self.cluster.cluster_arn,
                "HostRoleName": self.host_role.role_name,
                # SSM's server-side IamRole filter gets both forms (teardown.py)
                "HostRoleArn": self.host_role.role_arn,
            },
            service_timeout=SERVICE_TIMEOUT,
        )

        self.registration_command = (
            "read -r ACTIVATION_ID ACTIVATION_CODE < <(aws secretsmanager get-secret-value "
            f"--region {Aws.REGION} --secret-id {self.activation_secret.secret_arn} "
            "--query SecretString --output text) && "
            f'curl --proto "=https" -fsSL -o /tmp/ecs-anywhere-install.sh "{INSTALL_SCRIPT}" && '
            f"sudo bash /tmp/ecs-anywhere-install.sh --region {Aws.REGION} "
            f"--cluster {self.cluster.cluster_name} "
            '--activation-id "$ACTIVATION_ID" --activation-code "$ACTIVATION_CODE"'
        )

    def tear_down_before(self, *scopes: IConstruct) -> None:
        """Deregister the hosts before CloudFormation deletes `scopes` (services on the cluster)."""
        self.teardown.node.add_dependency(*scopes)

    def grant_read_activation(self, grantee: iam.IGrantable) -> None:
        """Let an operator principal read the activation (secret value and its KMS key)."""
        grant_secret_read(grantee, self.activation_secret)

    def _host_role(self, cluster: ecs.ICluster) -> iam.Role:
        """The role SSM hands to registered hosts: SSM agent + the ECS agent, this cluster only.

        AWS suggests AmazonEC2ContainerServiceforEC2Role and recommends narrowing it to what
        is used. The agent registers into, polls and reports state for one cluster, so those
        calls are scoped to it; CreateCluster, EC2 tag reads and ECR pulls are left out
        (images are public; ECR or logs go through each task's execution role).
        """
        role = iam.Role(
            self,
            "HostRole",
            # Confused-deputy guard: only SSM acting for this account may hand the role out.
            assumed_by=iam.ServicePrincipal(
                "ssm.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:*"
                    },
                },
            ),
            description="ECS Anywhere hosts: SSM managed instance + ECS agent of one cluster",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            ],
        )
        policy = iam.ManagedPolicy(
            self,
            "EcsAgentPolicy",
            description="ECS agent on ECS Anywhere hosts, limited to the mesh cluster",
            statements=[
                iam.PolicyStatement(
                    sid="RegisterAndReportInCluster",
                    actions=[
                        "ecs:RegisterContainerInstance",
                        "ecs:DeregisterContainerInstance",
                        "ecs:SubmitTaskStateChange",
                        "ecs:SubmitContainerStateChange",
                        "ecs:SubmitAttachmentStateChanges",
                    ],
                    resources=[cluster.cluster_arn],
                ),
                iam.PolicyStatement(
                    sid="PollAndTelemetryInCluster",
                    actions=["ecs:Poll", "ecs:StartTelemetrySession"],
                    resources=["*"],
                    conditions={"ArnEquals": {"ecs:cluster": cluster.cluster_arn}},
                ),
                iam.PolicyStatement(
                    sid="DiscoverEndpoint",
                    actions=["ecs:DiscoverPollEndpoint"],
                    resources=["*"],
                ),
            ],
        )
        role.add_managed_policy(policy)
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
            "AmazonSSMManagedInstanceCore]",
            "AWS's documented policy for SSM managed instances (ECS Anywhere registration); "
            "the ECS agent part is a custom policy scoped to this cluster.",
        )
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ecs:DiscoverPollEndpoint has no resource-level permissions, and container "
            "instance IDs exist only after registration: Poll/StartTelemetrySession are bound "
            "to this cluster by an ecs:cluster condition; the rest name the cluster ARN.",
        )
        return role

    def _activation_function(
        self, vpc: ec2.IVpc, key: kms.IKey, limit: int, days: int
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self,
            "ActivationLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        security_group = ec2.SecurityGroup(
            self,
            "ActivationSecurityGroup",
            vpc=vpc,
            description="Activation function: HTTPS to AWS APIs only",
            allow_all_outbound=False,
        )
        security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to SSM, Secrets Manager and CFN"
        )
        role = iam.Role(
            self,
            "ActivationRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Activation function: SSM activations, its secret, its logs, VPC ENIs, "
            "and deregistering the cluster's hosts on teardown",
        )
        container_instances = Stack.of(self).format_arn(
            service="ecs",
            resource="container-instance",
            resource_name=f"{self.cluster.cluster_name}/*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        managed_instances = Stack.of(self).format_arn(
            service="ssm",
            resource="managed-instance",
            resource_name="*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        policy = iam.ManagedPolicy(
            self,
            "ActivationPolicy",
            description="Activation function: what it calls and nothing else",
            roles=[role],
            statements=[
                iam.PolicyStatement(
                    sid="ManageActivations",
                    actions=["ssm:CreateActivation", "ssm:DeleteActivation"],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="PassOnlyTheHostRole",
                    actions=["iam:PassRole"],
                    resources=[self.host_role.role_arn],
                    conditions={"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}},
                ),
                iam.PolicyStatement(
                    sid="TeardownListAndDeregisterHosts",
                    actions=["ecs:ListContainerInstances", "ecs:DeregisterContainerInstance"],
                    resources=[self.cluster.cluster_arn],
                ),
                iam.PolicyStatement(
                    sid="TeardownDescribeHosts",
                    actions=["ecs:DescribeContainerInstances"],
                    resources=[container_instances],
                ),
                iam.PolicyStatement(
                    sid="TeardownFindManagedInstances",
                    actions=["ssm:DescribeInstanceInformation"],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="TeardownDeregisterManagedInstances",
                    actions=["ssm:DeregisterManagedInstance"],
                    resources=[managed_instances],
                ),
                iam.PolicyStatement(
                    sid="ActivationSecret",
                    actions=["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"],
                    resources=[self.activation_secret.secret_arn],
                ),
                iam.PolicyStatement(
                    sid="ActivationSecretKey",
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"
                        }
                    },
                ),
                iam.PolicyStatement(
                    sid="OwnLogs",
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    resources=[log_group.log_group_arn],
                ),
                iam.PolicyStatement(
                    sid="VpcNetworkInterfaces",
                    actions=[
                        "ec2:CreateNetworkInterface",
                        "ec2:DescribeNetworkInterfaces",
                        "ec2:DescribeSubnets",
                        "ec2:DeleteNetworkInterface",
                        "ec2:AssignPrivateIpAddresses",
                        "ec2:UnassignPrivateIpAddresses",
                    ],
                    resources=["*"],
                ),
            ],
        )
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ssm:CreateActivation/DeleteActivation, ssm:DescribeInstanceInformation (read-only) "
            "and the Lambda VPC ENI actions have no resource-level permissions; iam:PassRole is "
            "limited to the host role and SSM.",
        )
        stack = Stack.of(self)
        for arn, reason in (
            (
                container_instances,
                "Container instances of this cluster only (teardown); their IDs exist only "
                "after the hosts register.",
            ),
            (
                managed_instances,
                "ssm:DeregisterManagedInstance on managed instances (mi-...), whose IDs exist "
                "only after registration; the function deregisters only those registered with "
                "this stack's host role or backing this cluster's container instances, and runs "
                "only when CloudFormation deletes the teardown resource.",
            ),
        ):
            acknowledge(policy, f"AwsSolutions-IAM5[Resource::{nag_form(stack, arn)}]", reason)
        function = lambda_.Function(
            self,
            "ActivationFunction",
            description="Creates the ECS Anywhere SSM activation; code goes to Secrets Manager",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=lambda_code.for_asset("activation"),
            timeout=FUNCTION_TIMEOUT,
            memory_size=256,
            role=role,
            log_group=log_group,
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[security_group],
            environment={
                "SECRET_ARN": self.activation_secret.secret_arn,
                "ROLE_NAME": self.host_role.role_name,
                "CLUSTER_NAME": self.cluster.cluster_name,
                "REGISTRATION_LIMIT": str(limit),
                "EXPIRY_DAYS": str(days),
            },
        )
        encrypt_environment(key, function, policy=policy)
        # Lambda checks the ENI permissions when the function is created.
        function.node.add_dependency(policy)
        acknowledge(
            function,
            "NIST.800.53.R5-LambdaConcurrency",
            "Invoked only by CloudFormation (activation, teardown) and by an operator to reissue; "
            "reserving concurrency would take from the account's unreserved pool for nothing.",
        )
        acknowledge(
            function,
            "NIST.800.53.R5-LambdaDLQ",
            "Invoked synchronously (CloudFormation custom resource, operator CLI); failures "
            "are reported to the caller, so an async DLQ would never receive anything.",
        )
        return function
