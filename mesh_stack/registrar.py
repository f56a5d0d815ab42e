"""The registrar plumbing: EventBridge -> SQS (+DLQs) -> Lambda in the VPC.

ECS delivers task state changes at least once and out of order; the Lambda (in
lambda/registrar/) makes that safe. This construct makes delivery durable: the rule's target
has its own DLQ, the queue redrives poison messages to a DLQ after `max_receive_count`
receives, the event source reports partial batch failures and bounds concurrency so a burst of
task starts never overloads the Consul servers.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from mesh_stack.nag import acknowledge
from mesh_stack.registrar_function import RegistrarSettings, grant_cluster_reads, registrar_function

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
    reserve_concurrency: also reserve max_concurrency + 2 of the account's Lambda concurrency,
      so that other functions can never starve the event path. Off by default: a reservation
      must leave the account 100 unreserved, and fails the deploy on accounts whose quota
      is low (config key `reserve_concurrency` checks it against
      `lambda_unreserved_concurrency`).
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
        reserve_concurrency: bool = False,
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
        # EventBridge encrypts with the queue's KMS key on send: the SqsQueue target already
        # grants events.amazonaws.com the key, bound to this account by aws:SourceAccount (an
        # unconditioned grant would let any account's rules use it: confused deputy).

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
        self.settings = RegistrarSettings(
            vpc=vpc,
            security_group=self.security_group,
            cluster=cluster,
            consul_http_addr=consul_http_addr,
            token_secret=token_secret,
            ca_secret=ca_secret,
            key=key,
        )
        self.function = registrar_function(
            self,
            self.settings,
            handler="handler.handler",
            description="Registers ECS Anywhere tasks in the Consul catalog from ECS events",
            timeout=FUNCTION_TIMEOUT,
            memory_size=256,
            # The event source's MaximumConcurrency bounds polling; when reserving, reserve a
            # little more so the reconcile pass and the drain never starve the event path.
            reserved_concurrency=max_concurrency + 2 if reserve_concurrency else None,
            concurrency_reason="The SQS event source's MaximumConcurrency "
            f"({max_concurrency}, config key registrar_concurrency) bounds the concurrent "
            "invocations and so the load on Consul. Reserving is an opt-in "
            "(reserve_concurrency): accounts on a low Lambda quota reject any reservation.",
            dlq_reason="Invoked by an SQS event source: failed records return to the queue and "
            "its redrive policy moves them to the dead-letter queue; a function DLQ applies "
            "only to asynchronous invocations.",
            # Re-checks of events whose sidecar write got no answer go back to this queue,
            # delayed (lambda/registrar/recheck.py).
            extra_environment={"RECHECK_QUEUE_URL": self.queue.queue_url},
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
        grant_cluster_reads(self.function, cluster)
        self._grant_rechecks(key)

    def _grant_rechecks(self, key: kms.IKey) -> None:
        """SendMessage to its own queue (re-checks), and the queue key's use for sending.

        A producer on a queue encrypted with a customer managed key needs kms:GenerateDataKey
        and kms:Decrypt on it (SQS Developer Guide, "Configuring AWS KMS permissions"); SQS
        calls KMS for it, hence kms:ViaService.
        """
        self.function.add_to_role_policy(
            iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[self.queue.queue_arn])
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"sqs.{Aws.REGION}.amazonaws.com"}},
            )
        )

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
