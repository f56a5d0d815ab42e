"""The reconcile schedule and the drain on delete, next to the registrar.

Both run code of the registrar's own asset (`lambda/registrar`): `reconcile.handler`, on an
EventBridge schedule, converges the catalog to ECS's truth after lost events; `drain.on_event`,
behind a custom resource, removes every entry the registrar owns when the stack (or this
construct) is deleted. Both run in the registrar's VPC subnets with its security group (so the
fleet's `allow_from(registrar.function)` already lets them reach Consul), read the same token
and CA secrets, and get the same environment.
"""

from __future__ import annotations

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from mesh_stack.key_use import encrypt_environment
from mesh_stack.nag import acknowledge
from mesh_stack.registrar import Registrar
from mesh_stack.registrar_function import grant_cluster_reads, nag_form, registrar_function

_NO_DLQ = (
    "Invoked by a schedule or by the custom resource framework, never with events to keep: "
    "a failed pass is redone by the next scheduled pass (and raises the Errors alarm); a "
    "failed drain fails the CloudFormation deletion, which reports the reason."
)

RECONCILE_TIMEOUT = Duration.minutes(5)
DRAIN_TIMEOUT = Duration.minutes(10)
# The provider framework's onEvent function invokes the drain synchronously and answers
# CloudFormation itself; it runs at most 15 minutes (FRAMEWORK_HANDLER_TIMEOUT, aws-cdk-lib
# custom-resources/lib/provider-framework/provider.ts). CloudFormation waits a minute more
# for the answer, not its default hour, should the framework die without answering.
DRAIN_SERVICE_TIMEOUT = Duration.minutes(16)


class Reconciler(Construct):
    """Repairs drift on a schedule and drains the catalog on delete.

    registrar: whose settings (subnets, security group, Consul address, secrets, key) and
        event source this reuses.
    interval_minutes: minutes between passes (1-1440). A pass is stopped at the interval (its
        timeout is at most the interval), so passes do not overlap.
    max_deletions: catalog entries one pass may delete (1-10000); the rest waits (and alarms).
    host_disconnect_grace_minutes: how long an ECS agent may stay disconnected (1-1440) before
        the pass marks its host's task nodes critical; it confirms with
        DescribeContainerInstances first. Agents reconnect several times an hour as normal
        operation (ECS developer guide, "Container instance state change events"), so a
        disconnect shorter than this is never visible in the catalog.
    drain_on_delete: on deletion, remove every entry the registrar owns. The custom resource
        exists either way and carries the flag as a property, so switching it is an update that
        drains nothing.
    reserve_concurrency: reserve 1 for the pass, so that not even an invocation delayed by
        throttling can run next to the following pass. Off by default (see Registrar).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        registrar: Registrar,
        interval_minutes: int = 5,
        max_deletions: int = 50,
        drain_on_delete: bool = True,
        reserve_concurrency: bool = False,
        host_disconnect_grace_minutes: int = 5,
    ) -> None:
        super().__init__(scope, construct_id)
        if not 1 <= interval_minutes <= 1440:
            raise ValueError(f"interval_minutes must be from 1 to 1440, got {interval_minutes}")
        if not 1 <= max_deletions <= 10000:
            raise ValueError(f"max_deletions must be from 1 to 10000, got {max_deletions}")
        if not 1 <= host_disconnect_grace_minutes <= 1440:
            raise ValueError(
                "host_disconnect_grace_minutes must be from 1 to 1440, "
                f"got {host_disconnect_grace_minutes}"
            )
        self.interval = Duration.minutes(interval_minutes)
        self._registrar = registrar
        settings = registrar.settings

        self.function = registrar_function(
            Construct(self, "Pass"),
            settings,
            handler="reconcile.handler",
            description="Reconciles the Consul catalog with the ECS Anywhere tasks on a schedule",
            timeout=Duration.seconds(
                min(RECONCILE_TIMEOUT.to_seconds(), self.interval.to_seconds())
            ),
            # CPU scales with memory: a pass over 10,000 tasks is ~15 s of one core (digests,
            # JSON), so 1 GB (~0.6 vCPU) keeps it well inside the timeout.
            memory_size=1024,
            extra_environment={"RECONCILE_MAX_DELETIONS": str(max_deletions)},
            # One pass at a time: passes never race each other for the deletion cap.
            reserved_concurrency=1 if reserve_concurrency else None,
            concurrency_reason="Started once per interval by the schedule and stopped at the "
            "interval by its timeout, so passes do not overlap; reserving 1 is an opt-in "
            "(reserve_concurrency) because accounts on a low Lambda quota reject any "
            "reservation.",
            dlq_reason=_NO_DLQ,
        )
        # A pass that failed or was throttled is not retried: the next one starts from scratch.
        self.function.configure_async_invoke(
            retry_attempts=0, max_event_age=Duration.seconds(max(60, self.interval.to_seconds()))
        )
        # Only the pass marks a disconnected host (the event path records the disconnection).
        self.function.add_environment(
            "HOST_DISCONNECT_GRACE_MINUTES", str(host_disconnect_grace_minutes)
        )
        grant_cluster_reads(self.function, settings.cluster, list_tasks=True)
        self.schedule = events.Rule(
            self,
            "Schedule",
            description="Runs the Consul catalog reconcile pass",
            schedule=events.Schedule.rate(self.interval),
        )
        self.schedule.add_target(targets.LambdaFunction(self.function, retry_attempts=2))

        self.drain_function = registrar_function(
            Construct(self, "Drain"),
            settings,
            handler="drain.on_event",
            description="Removes the registrar's Consul entries when the stack is deleted",
            timeout=DRAIN_TIMEOUT,
            memory_size=256,
            reserved_concurrency=None,
            concurrency_reason="Invoked only by the CloudFormation custom resource framework, "
            "once per stack operation; reserving concurrency for it would only shrink the "
            "account's pool.",
            dlq_reason=_NO_DLQ,
        )
        drain_role = self.drain_function.role
        assert drain_role is not None
        acknowledge(
            drain_role,
            "AwsSolutions-IAM5[Resource::*]",
            "Only the X-Ray trace writes of active tracing, which support no resource-level "
            "permissions; the secrets it reads are named by ARN.",
        )
        self.drain = self._drain(settings.cluster, drain_on_delete)

    @property
    def connections(self) -> ec2.Connections:
        """The registrar's security group (shared): already allowed into Consul."""
        return self.function.connections

    # --- parts --------------------------------------------------------------------------------

    def _drain(self, cluster: ecs.ICluster, drain_on_delete: bool) -> CustomResource:
        scope = Construct(self, "DrainOnDelete")
        provider = cr.Provider(
            scope,
            "Provider",
            on_event_handler=self.drain_function,
            vpc=self._registrar.settings.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self._registrar.security_group],
            log_group=logs.LogGroup(
                scope,
                "ProviderLogs",
                retention=logs.RetentionDays.ONE_YEAR,
                encryption_key=self._registrar.settings.key,
            ),
        )
        encrypt_environment(self._registrar.settings.key, *_functions(provider))
        resource = CustomResource(
            scope,
            "Resource",
            service_token=provider.service_token,
            resource_type="Custom::ConsulCatalogDrain",
            properties={
                "ClusterArn": cluster.cluster_arn,
                "Drain": "true" if drain_on_delete else "false",
            },
            service_timeout=DRAIN_SERVICE_TIMEOUT,
        )
        # On deletion CloudFormation removes dependents first: the registrar's SQS event source
        # and this schedule are gone before the drain runs, so nothing re-registers behind it.
        for child in self._registrar.function.node.find_all():
            if isinstance(child, lambda_.CfnEventSourceMapping):
                child.node.add_dependency(resource)
        self.schedule.node.add_dependency(resource)
        _acknowledge_provider(provider, self.drain_function)
        return resource


def _functions(provider: cr.Provider) -> list[lambda_.Function]:
    """The custom resource framework's own functions (created by aws-cdk-lib)."""
    return [c for c in provider.node.find_all() if isinstance(c, lambda_.Function)]


def _acknowledge_provider(provider: cr.Provider, on_event: lambda_.IFunction) -> None:
    """The custom resource framework's own function, written and maintained by the CDK."""
    framework = provider.node.find_child("framework-onEvent")
    acknowledge(
        framework,
        "NIST.800.53.R5-LambdaDLQ",
        "CloudFormation invokes the framework synchronously and records every failure in the "
        "stack events; there is no asynchronous event to keep.",
    )
    acknowledge(
        framework,
        "NIST.800.53.R5-LambdaConcurrency",
        "Invoked only by CloudFormation, once per stack operation on this resource.",
    )
    acknowledge(
        framework,
        "NIST.800.53.R5-IAMNoInlinePolicy",
        "CDK-generated policy that only lets the framework invoke the drain function.",
    )
    acknowledge(
        framework,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]",
        "AWS-managed policy limited to writing the framework function's own logs.",
    )
    acknowledge(
        framework,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaVPCAccessExecutionRole]",
        "AWS-managed policy for ENI management of the framework function in the VPC.",
    )
    acknowledge(
        framework,
        f"AwsSolutions-IAM5[Resource::{nag_form(Stack.of(provider), on_event.function_arn)}:*]",
        "The framework may invoke only the drain function (any of its versions).",
    )
