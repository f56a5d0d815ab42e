"""The registrar plumbing: EventBridge -> SQS (+DLQs) -> Lambda in the VPC.

ECS delivers task state changes at least once and out of order; the Lambda (in
lambda/registrar/) makes that safe. This construct makes delivery durable: the rule's target
has its own DLQ, the queue redrives poison messages to a DLQ after `max_receive_count`
receives, the event source reports partial batch failures and bounds concurrency so a burst of
task starts never overloads the Consul servers.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import ArnFormat, CfnElement, Duration, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from mesh_stack.nag import acknowledge

LAMBDA_DIR = Path(__file__).resolve().parent.parent / "lambda" / "registrar"
# The newest Python runtime the pinned aws-cdk-lib offers; the code stays 3.11-compatible
# because the tests run it on 3.11.
RUNTIME = lambda_.Runtime.PYTHON_3_14
FUNCTION_TIMEOUT = Duration.seconds(60)
EVENT_DETAIL_TYPES = ["ECS Task State Change", "ECS Container Instance State Change"]


class Registrar(Construct):
    """Registers ECS Anywhere tasks of `cluster` in Consul as their state changes.

    vpc: the Lambda runs in its private subnets, next to the Consul load balancer.
    cluster: only this cluster's events reach the queue.
    consul_http_addr: `https://<consul lb>:8501`, the Consul HTTPS API.
    token_secret: the registrar's Consul ACL token (read once per Lambda container).
    ca_secret: the Consul CA certificate the HTTPS connection is verified against.
    key: customer-managed KMS key for the queues and the log group.
    max_concurrency: SQS event source MaximumConcurrency (2-1000); bounds Consul load.
    max_receive_count: receives before a message moves to the DLQ; each receive already
      retries with backoff inside the invocation, so 5 covers minutes of Consul outage.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        cluster: ecs.ICluster,
        consul_http_addr: str,
        token_secret: secretsmanager.ISecret,
        ca_secret: secretsmanager.ISecret,
        key: kms.IKey,
        max_concurrency: int = 5,
        max_receive_count: int = 5,
    ) -> None:
        super().__init__(scope, construct_id)
        if not 2 <= max_concurrency <= 1000:
            raise ValueError(f"max_concurrency must be from 2 to 1000, got {max_concurrency}")
        if not 1 <= max_receive_count <= 1000:
            raise ValueError(f"max_receive_count must be from 1 to 1000, got {max_receive_count}")

        self.dead_letter_queue = self._dead_letter_queue("DeadLetterQueue", key)
        # SQS requires the visibility timeout to be at least the function timeout; AWS
        # recommends 6x so retries of a throttled function do not redeliver too early.
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(FUNCTION_TIMEOUT.to_seconds() * 6),
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receive_count
            ),
        )
        # Events EventBridge could not deliver to the queue (after its own retries for 24 h).
        # cdk-nag recognises the queue's DLQ by its redrive policy, but not a rule target's.
        self.target_dead_letter_queue = self._dead_letter_queue("RuleDeadLetterQueue", key)
        acknowledge(
            self.target_dead_letter_queue,
            "AwsSolutions-SQS3",
            "This queue is the rule target's dead-letter queue; a DLQ of a DLQ would only move "
            "the problem. Its depth is alarmed on.",
        )

        self.rule = events.Rule(
            self,
            "TaskStateRule",
            description="ECS task and container instance state changes of the mesh cluster",
            event_pattern=events.EventPattern(
                source=["aws.ecs"],
                detail_type=EVENT_DETAIL_TYPES,
                detail={"clusterArn": [cluster.cluster_arn]},
            ),
        )
        self.rule.add_target(
            targets.SqsQueue(
                self.queue,
                dead_letter_queue=self.target_dead_letter_queue,
                retry_attempts=185,
                max_event_age=Duration.hours(24),
            )
        )
        # EventBridge encrypts with the queue's KMS key on send; CDK grants only the queue.
        key.grant_encrypt_decrypt(iam.ServicePrincipal("events.amazonaws.com"))

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Registrar Lambda: egress to Consul HTTPS and AWS APIs only",
            allow_all_outbound=False,
        )
        # AWS APIs (ECS, SSM, Secrets Manager) through the NAT gateways; egress to Consul is
        # added by the stack when it lets this group into the fleet.
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs"
        )
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=key,
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description="Registers ECS Anywhere tasks in the Consul catalog from ECS events",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler="handler.handler",
            code=lambda_.Code.from_asset(
                str(LAMBDA_DIR), exclude=["__pycache__", "*.pyc", ".mypy_cache"]
            ),
            timeout=FUNCTION_TIMEOUT,
            memory_size=256,
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.security_group],
            log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE,
            # The event source's MaximumConcurrency bounds polling; reserve a little more so
            # the reconcile pass and the drain never starve the event path (and vice versa).
            reserved_concurrent_executions=max_concurrency + 2,
            environment={
                "CONSUL_HTTP_ADDR": consul_http_addr,
                "CONSUL_TOKEN_SECRET_ARN": token_secret.secret_arn,
                "CONSUL_CACERT_SECRET_ARN": ca_secret.secret_arn,
                "ECS_CLUSTER_ARN": cluster.cluster_arn,
            },
        )
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=10,
                max_batching_window=Duration.seconds(1),
                report_batch_item_failures=True,
                max_concurrency=max_concurrency,
            )
        )
        token_secret.grant_read(self.function)
        ca_secret.grant_read(self.function)
        self._grant_describe(cluster)
        self._acknowledge_function_findings()

    def _dead_letter_queue(self, construct_id: str, key: kms.IKey) -> sqs.Queue:
        """A DLQ keeps messages the maximum 14 days: time to find the cause and redrive."""
        return sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )

    @property
    def connections(self) -> ec2.Connections:
        """The Lambda's security group: allow it into Consul with `fleet.allow_from(...)`."""
        return self.function.connections

    def _grant_describe(self, cluster: ecs.ICluster) -> None:
        stack = Stack.of(self)
        cluster_name = cluster.cluster_name

        def ecs_arn(resource: str) -> str:
            return stack.format_arn(
                service="ecs",
                resource=resource,
                resource_name=f"{cluster_name}/*",
                arn_format=ArnFormat.SLASH_RESOURCE_NAME,
            )

        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="DescribeThisClustersTasksAndHosts",
                actions=["ecs:DescribeContainerInstances", "ecs:DescribeTasks"],
                resources=[ecs_arn("container-instance"), ecs_arn("task")],
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="ListThisClustersTasks",
                actions=["ecs:ListTasks", "ecs:ListContainerInstances"],
                resources=[ecs_arn("container-instance"), cluster.cluster_arn],
                conditions={"ArnEquals": {"ecs:cluster": cluster.cluster_arn}},
            )
        )
        # Neither call supports resource-level permissions (Service Authorization Reference).
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="ReadTaskDefinitionLabelsAndHostAddresses",
                actions=["ecs:DescribeTaskDefinition", "ssm:DescribeInstanceInformation"],
                resources=["*"],
            )
        )
        role = self.function.role
        assert role is not None
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecs:DescribeTaskDefinition and ssm:DescribeInstanceInformation support no "
            "resource-level permissions; both are read-only describes. Every other action is "
            "scoped to this cluster.",
        )
        for resource in ("container-instance", "task"):
            acknowledge(
                role,
                f"AwsSolutions-IAM5[Resource::{_nag_arn(stack, resource, cluster)}]",
                f"Only {resource}s of this cluster; their IDs are not known at deploy time.",
            )

    def _acknowledge_function_findings(self) -> None:
        acknowledge(
            self.function,
            "NIST.800.53.R5-LambdaDLQ",
            "Invoked by an SQS event source: failed records return to the queue and its "
            "redrive policy moves them to the dead-letter queue; a function DLQ applies only "
            "to asynchronous invocations.",
        )
        role = self.function.role
        assert role is not None
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


def _nag_arn(stack: Stack, resource: str, cluster: ecs.ICluster) -> str:
    """The ARN `ecs_arn(resource)` as cdk-nag prints it in a finding id: tokens as <Name>."""
    partition = "<AWS::Partition>" if Token.is_unresolved(stack.partition) else stack.partition
    region = "<AWS::Region>" if Token.is_unresolved(stack.region) else stack.region
    account = "<AWS::AccountId>" if Token.is_unresolved(stack.account) else stack.account
    child = cluster.node.default_child
    logical = stack.get_logical_id(child) if isinstance(child, CfnElement) else "Cluster"
    return f"arn:{partition}:ecs:{region}:{account}:{resource}/<{logical}>/*"
