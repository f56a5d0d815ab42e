"""The operators' view: one CloudWatch dashboard and the alarms that page, on an encrypted topic.

What is watched, and why each alarm exists:
- Delivery: queue depth and the age of its oldest message (the registrar is falling behind or
  failing), and both dead-letter queues (an event the registrar never applied: depth > 0 pages).
- Registrar: registrations, deregistrations, failures and the event-to-catalog lag (EMF metrics
  of lambda/registrar/metrics.py, by ClusterName), function errors (it never raises by design,
  so an error is a crash or a timeout).
- Reconcile: drift repaired per pass (events are being lost: above the threshold pages),
  deletions held back by the cap, passes that could not read ECS, a task registered again
  after a MISSING answer had removed it (any pages: ECS said MISSING for a running task), and
  the function's errors.
- Hosts: a host address the registrar refuses (docker0 reported by SSM, loopback...) pages:
  the host's tasks stay out of the mesh until the operator sets its address.
- Consul: healthy servers behind the NLB, per listener; fewer than a quorum pages (the catalog
  can no longer accept writes). No snapshot in S3 for three snapshot intervals pages too
  (missing data counts as breaching: a job that stopped running sends nothing at all).

Metric names, namespace and dimension are the ones the Lambda code emits; a test checks them
against the code so a rename cannot silently blank a graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from mesh_stack.reconcile import Reconciler
from mesh_stack.registrar import Registrar

# lambda/registrar/metrics.py: DEFAULT_NAMESPACE and the one dimension of every EMF line.
NAMESPACE = "ConsulMesh/Registrar"
DIMENSION = "ClusterName"

# Names emitted by the registrar (handler.py, host_state.py) and the reconcile pass.
EVENT_METRICS = ("Registered", "Deregistered", "Failed", "Malformed", "IgnoredStale")
HOST_METRICS = (
    "HostDisconnected",
    "HostChecksCritical",
    "HostChecksRestored",
    "HostDeregistered",
    "HostAddressRefused",
    "HostAddressDoubtful",
)
LAG_METRIC = "EventToCatalogLagMs"
DRIFT_METRICS = ("DriftMissing", "DriftChanged", "DriftStale", "DriftHosts", "DriftResurrected")
DRIFT_TOTAL = "DriftRepaired"
RECONCILE_METRICS = ("DeletionsHeldBack", "ReconcileIncomplete", "ReconcileFailed")

FIVE_MINUTES = Duration.minutes(5)
OLDEST_MESSAGE_AGE = Duration.minutes(15)


class Monitoring(Construct):
    """Dashboard and alarms of the registrar, the reconcile pass and the Consul servers.

    registrar, reconciler: what is watched (queues, functions, their EMF metrics).
    cluster: the ECS cluster whose name is the metrics' ClusterName dimension.
    consul_target_groups: the Consul NLB's target groups (HTTPS 8501, gRPC-TLS 8503, ...);
        each one's HealthyHostCount is graphed and alarmed on.
    consul_server_count: Raft voters (3 or 5); fewer healthy than a majority raises an alarm.
    consul_snapshots: the fleet's count of snapshots saved to S3, one period per snapshot
        interval (`ConsulFleet.snapshot_metric`); none for three periods raises an alarm.
    key: the stack's KMS key; the alarm topic is encrypted with it (CloudWatch is allowed to
        use it to publish).
    alarm_email: subscribed to the alarm topic when set (the address confirms by e-mail).
    oldest_message_age: queue age that raises an alarm; the registrar retries a failing
        message for minutes (visibility timeout x receives) before the DLQ takes it.
    drift_threshold: entries one reconcile pass may repair before it alarms: a few are normal
        after a deploy, a steady stream means events are being lost.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        registrar: Registrar,
        reconciler: Reconciler,
        cluster: ecs.ICluster,
        consul_target_groups: Sequence[elbv2.INetworkTargetGroup],
        consul_server_count: int,
        key: kms.IKey,
        consul_snapshots: cw.IMetric | None = None,
        alarm_email: str = "",
        oldest_message_age: Duration = OLDEST_MESSAGE_AGE,
        drift_threshold: int = 10,
    ) -> None:
        super().__init__(scope, construct_id)
        if consul_server_count not in (3, 5):
            raise ValueError(f"consul_server_count must be 3 or 5, got {consul_server_count}")
        if not consul_target_groups:
            raise ValueError("consul_target_groups must name at least one target group")
        if drift_threshold < 1:
            raise ValueError(f"drift_threshold must be >= 1, got {drift_threshold}")
        self._cluster_name = cluster.cluster_name
        self._interval = reconciler.interval
        self.quorum = consul_server_count // 2 + 1

        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name="Consul mesh alarms",
            master_key=key,
            enforce_ssl=True,
        )
        # An AWS::SNS::TopicPolicy replaces the topic's default policy, and the one enforce_ssl
        # creates holds only the TLS deny: without this statement nothing may publish, and
        # every alarm action fails ("... is not authorized to perform: SNS:Publish"). Only
        # alarms of this account and region (confused-deputy guard: aws:SourceAccount and
        # aws:SourceArn, as AWS's "CloudWatch alarm does not send SNS notification" knowledge
        # center article shows for cloudwatch.amazonaws.com).
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsOfThisAccount",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {
                        "aws:SourceArn": (
                            f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"
                        )
                    },
                },
            )
        )
        # CloudWatch publishes to an encrypted topic only if the key lets it use the key
        # (SNS Developer Guide, "Enable compatibility between event sources from AWS services
        # and encrypted topics"; without it the alarm history says "CloudWatch Alarms does not
        # have authorization to access the SNS topic encryption key"). An imported key cannot
        # be changed here: grant it in its own policy.
        # No condition, on purpose. The AWS documentation for this case (the SNS Developer
        # Guide's key statement for CloudWatch, and the AWS Knowledge Center's "configure a
        # CloudWatch alarm with an encrypted SNS topic") gives the statement without
        # aws:SourceAccount/aws:SourceArn, and does not say that the KMS request CloudWatch
        # makes carries them; for EventBridge it says they are NOT supported. A condition the
        # request does not carry silently drops every alarm e-mail, so it waits for proof on a
        # real account (the snapshot alarm fires on every fresh deploy: its e-mail, or the
        # alarm history's "does not have authorization to access the SNS topic encryption
        # key", settles it). Meanwhile the topic policy above is the confused-deputy guard: only
        # this account's alarms may publish to the topic; this grant gives the CloudWatch
        # service nothing but Decrypt and GenerateDataKey* on the key.
        key.grant(
            iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

        self.alarms: dict[str, cw.Alarm] = {}
        self._delivery_alarms(registrar, oldest_message_age)
        self._function_alarms(registrar, reconciler)
        self._reconcile_alarms(drift_threshold)
        consul_health = self._consul_alarms(consul_target_groups)
        if consul_snapshots is not None:
            self._snapshot_alarm(consul_snapshots)
        action = cw_actions.SnsAction(self.topic)
        for alarm in self.alarms.values():
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
        self.dashboard = self._dashboard(registrar, reconciler, consul_health)

    # --- metrics ------------------------------------------------------------------------------

    def metric(
        self, name: str, statistic: str = "Sum", period: Duration = FIVE_MINUTES
    ) -> cw.Metric:
        """One of the Lambda code's EMF metrics, for this cluster."""
        return cw.Metric(
            namespace=NAMESPACE,
            metric_name=name,
            dimensions_map={DIMENSION: self._cluster_name},
            statistic=statistic,
            period=period,
        )

    def _alarm(
        self,
        alarm_id: str,
        metric: cw.IMetric,
        *,
        description: str,
        threshold: float,
        comparison: cw.ComparisonOperator = cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
        periods: int = 1,
        missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING,
    ) -> cw.Alarm:
        alarm = cw.Alarm(
            self,
            alarm_id,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            treat_missing_data=missing,
            alarm_description=description,
        )
        self.alarms[alarm_id] = alarm
        return alarm

    # --- alarms -------------------------------------------------------------------------------

    def _delivery_alarms(self, registrar: Registrar, oldest_message_age: Duration) -> None:
        for alarm_id, queue, what in (
            (
                "DeadLetterQueueAlarm",
                registrar.dead_letter_queue,
                "events the registrar failed to apply after every retry",
            ),
            (
                "RuleDeadLetterQueueAlarm",
                registrar.target_dead_letter_queue,
                "events EventBridge could not deliver to the registrar's queue",
            ),
        ):
            self._alarm(
                alarm_id,
                queue.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", period=FIVE_MINUTES
                ),
                threshold=0,
                description=f"A dead-letter queue holds {what}: read them, fix the cause, redrive "
                "(docs/operations.md).",
            )
        self._alarm(
            "OldestMessageAlarm",
            registrar.queue.metric_approximate_age_of_oldest_message(
                statistic="Maximum", period=FIVE_MINUTES
            ),
            threshold=oldest_message_age.to_seconds(),
            periods=2,
            description="The registrar's queue is not drained: Consul unreachable, the function "
            "failing or throttled. The catalog lags behind ECS.",
        )

    def _function_alarms(self, registrar: Registrar, reconciler: Reconciler) -> None:
        self._alarm(
            "RegistrarErrorsAlarm",
            registrar.function.metric_errors(statistic="Sum", period=FIVE_MINUTES),
            threshold=0,
            description="The registrar function crashed or timed out (it reports message "
            "failures without raising, so any error is unexpected).",
        )
        self._alarm(
            "ReconcilerErrorsAlarm",
            reconciler.function.metric_errors(statistic="Sum", period=FIVE_MINUTES),
            threshold=0,
            description="A reconcile pass failed (Consul unreadable, crash or timeout).",
        )

    def _reconcile_alarms(self, drift_threshold: int) -> None:
        interval = self._interval
        self._alarm(
            "DriftAlarm",
            self.metric(DRIFT_TOTAL, period=interval),
            threshold=drift_threshold,
            description=f"A reconcile pass repaired more than {drift_threshold} entries: events "
            "are being lost (rule DLQ, purged queue, registrar down) or written wrong.",
        )
        self._alarm(
            "DeletionsHeldBackAlarm",
            self.metric("DeletionsHeldBack", period=interval),
            threshold=0,
            description="The reconcile pass found more stale entries than its deletion cap "
            "allows (reconcile_max_deletions); check why before raising the cap.",
        )
        self._alarm(
            "DriftResurrectedAlarm",
            self.metric("DriftResurrected", period=interval),
            threshold=0,
            description="A task the reconcile pass had removed because DescribeTasks answered "
            "MISSING is listed and described RUNNING again: it was registered again, after "
            "being out of the mesh since that pass. MISSING was wrong (an ECS fault beyond its "
            "documented eventual consistency); see docs/runbook.md.",
        )
        self._alarm(
            "HostAddressRefusedAlarm",
            self.metric("HostAddressRefused", period=interval),
            threshold=0,
            description="A host's address cannot go in the catalog (loopback, link-local, "
            "unspecified, or Docker's bridge 172.17.0.0/16 reported by SSM): its tasks are out of "
            "the mesh. Set the container instance attribute consul-mesh.address (docs/runbook.md).",
        )
        self._alarm(
            "ReconcileIncompleteAlarm",
            self.metric("ReconcileIncomplete", period=interval),
            threshold=0,
            periods=3,
            description="Three reconcile passes in a row could not read the whole ECS listing "
            "(throttling, permissions): stale entries are not being removed.",
        )

    def _consul_alarms(self, groups: Sequence[elbv2.INetworkTargetGroup]) -> list[cw.IMetric]:
        metrics: list[cw.IMetric] = []
        for n, group in enumerate(groups):
            healthy = group.metrics.healthy_host_count(
                statistic="Minimum", period=Duration.minutes(1)
            )
            metrics.append(healthy)
            self._alarm(
                f"ConsulQuorumAlarm{n}",
                healthy,
                threshold=self.quorum,
                comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                periods=3,
                missing=cw.TreatMissingData.BREACHING,
                description=f"Fewer than {self.quorum} Consul servers pass the load balancer's "
                "health check: the Raft quorum is at risk or lost, the catalog rejects writes.",
            )
        return metrics

    def _snapshot_alarm(self, snapshots: cw.IMetric) -> None:
        self._alarm(
            "ConsulSnapshotAlarm",
            snapshots,
            threshold=1,
            comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            periods=3,
            missing=cw.TreatMissingData.BREACHING,
            description="No Consul snapshot reached S3 for three snapshot intervals: the "
            "leader's consul-snapshot.timer is failing or not running (journalctl -u "
            "consul-snapshot on the leader). Also raised right after a new deploy, until the "
            "first snapshot lands (about 20 minutes after the servers boot).",
        )

    # --- dashboard ----------------------------------------------------------------------------

    def _dashboard(
        self, registrar: Registrar, reconciler: Reconciler, consul_health: list[cw.IMetric]
    ) -> cw.Dashboard:
        minute = Duration.minutes(1)
        dashboard = cw.Dashboard(self, "Dashboard", default_interval=Duration.hours(6))
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Queue depth",
                left=[
                    registrar.queue.metric_approximate_number_of_messages_visible(period=minute),
                    registrar.queue.metric_approximate_number_of_messages_not_visible(
                        period=minute
                    ),
                ],
            ),
            cw.GraphWidget(
                title="Oldest message age (s)",
                left=[registrar.queue.metric_approximate_age_of_oldest_message(period=minute)],
            ),
            cw.GraphWidget(
                title="Dead-letter queues",
                left=[
                    registrar.dead_letter_queue.metric_approximate_number_of_messages_visible(
                        label="Registrar DLQ", period=minute
                    ),
                    registrar.target_dead_letter_queue.metric_approximate_number_of_messages_visible(
                        label="Rule DLQ", period=minute
                    ),
                ],
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Registrations, deregistrations, failures",
                left=[self.metric(name, period=minute) for name in EVENT_METRICS],
            ),
            cw.GraphWidget(
                title="Event-to-catalog lag (ms)",
                left=[
                    self.metric(LAG_METRIC, statistic, minute)
                    for statistic in ("p50", "p99", "Maximum")
                ],
            ),
            cw.GraphWidget(
                title="Functions: errors and throttles",
                left=[
                    registrar.function.metric_errors(label="Registrar errors", period=minute),
                    registrar.function.metric_throttles(label="Registrar throttles", period=minute),
                    reconciler.function.metric_errors(label="Reconcile errors", period=minute),
                ],
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Drift repaired per reconcile pass",
                left=[self.metric(DRIFT_TOTAL, period=self._interval)],
                right=[self.metric(name, period=self._interval) for name in DRIFT_METRICS],
            ),
            cw.GraphWidget(
                title="Reconcile safety",
                left=[self.metric(name, period=self._interval) for name in RECONCILE_METRICS],
            ),
            cw.GraphWidget(
                title="Host agents",
                left=[self.metric(name, period=minute) for name in HOST_METRICS],
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Healthy Consul servers (per listener)",
                left=consul_health,
                left_annotations=[
                    cw.HorizontalAnnotation(value=self.quorum, label="quorum", color="#d62728")
                ],
            ),
            cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=12),
        )
        return dashboard
