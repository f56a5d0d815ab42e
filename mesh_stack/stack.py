"""The one stack of the app: composes the constructs and wires them together.

Thin on purpose: each capability lives in its own construct; this file only passes what one
construct exposes (security groups, secrets, addresses) to the next and adds the outputs.
Construct IDs below are a contract: the logical IDs of stateful resources derive from them
(tests/infra/test_logical_ids.py pins them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jsii
from aws_cdk import Aspects, CfnOutput, Fn, IAspect, Stack
from aws_cdk import aws_ec2 as ec2
from constructs import Construct, IConstruct

from mesh_stack import demo, server_image
from mesh_stack.config import MeshConfig
from mesh_stack.configured_services import ConfiguredServices, check_template_quotas
from mesh_stack.consul_fleet import ConsulFleet
from mesh_stack.consul_objects import ConsulObjects
from mesh_stack.ecs_anywhere import EcsAnywhere
from mesh_stack.keys import Keys
from mesh_stack.mesh_service import MeshService
from mesh_stack.monitoring import Monitoring
from mesh_stack.network import Network
from mesh_stack.outputs import add_outputs
from mesh_stack.platform_parameters import PlatformParameters
from mesh_stack.ports import ENVOY_INBOUND_PORTS
from mesh_stack.reconcile import Reconciler
from mesh_stack.registrar import Registrar
from mesh_stack.retention import retain_except_on_create
from mesh_stack.sidecar_images import RegistryCredentials, SidecarImages


class MeshStack(Stack):
    """Consul server fleet, ECS Anywhere cluster, mesh services and the registrar."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: MeshConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config

        keys = Keys(self, "Keys")
        network = Network(self, "Network", config=config, log_key=keys.key)
        self.vpc = network.vpc
        image_id, recorded = server_image.resolve(
            server_ami=config.server_ami, region=config.region, arm64=config.arm64
        )
        fleet = ConsulFleet(
            self,
            "ConsulFleet",
            vpc=self.vpc,
            consul_version=config.consul_version,
            image_id=image_id,
            datacenter=config.datacenter,
            server_count=config.server_count,
            instance_type=config.instance_type,
            arm64=config.arm64,
            esm_version=config.consul_esm_version,
            plaintext_listeners=config.plaintext_listeners,
            snapshot_interval_hours=config.snapshot_interval_hours,
            snapshot_retention_days=config.snapshot_retention_days,
        )
        for cidr in config.onprem_cidrs:
            fleet.allow_clients(ec2.Peer.ipv4(cidr), f"ECS Anywhere hosts in {cidr}")
            # consul-esm checks the host-mode sidecars' public and expose listeners.
            fleet.allow_checks_to(
                ec2.Peer.ipv4(cidr), ENVOY_INBOUND_PORTS, f"Envoy listeners in {cidr}"
            )
        for cidr in config.operator_cidrs:
            fleet.allow_operators(ec2.Peer.ipv4(cidr), f"Operators in {cidr}")
        self.fleet = fleet
        # Not a synth warning: the nag gate fails on any unacknowledged one. app.py prints it,
        # `make deploy` repeats it (tools/server_ami.py check) and goes on.
        self.server_image_unrecorded = (
            ""
            if recorded
            else server_image.unrecorded_warning(region=config.region, arm64=config.arm64)
        )
        # At synthesis, once, over whatever the stack holds by then (whoever added it, and when):
        # a service whose listeners lie outside ENVOY_INBOUND_PORTS (bridge mode: ECS's dynamic
        # host ports) gets its range opened too, and a failed first create deletes what it made
        # while a deleted stack keeps it (retention.py).
        _SynthesisPass(self, _OpenServiceCheckPorts(fleet, config.onprem_cidrs))

        # ACL policies, tokens and config entries, applied once every server signalled healthy.
        objects = ConsulObjects(
            self,
            "ConsulObjects",
            vpc=self.vpc,
            consul_https_address=fleet.https_address,
            tls_server_name=fleet.tls_server_name,
            management_token_secret=fleet.management_token_secret,
            ca_cert_secret=fleet.ca_cert_secret,
            kms_key=keys.key,
            apply_generation=config.consul_objects_generation,
        )
        fleet.allow_from(objects)
        objects.depend_on(fleet)

        ecs_anywhere = EcsAnywhere(
            self,
            "EcsAnywhere",
            vpc=self.vpc,
            key=keys.key,
            registration_limit=config.activation_registration_limit,
            expiry_days=config.activation_expiry_days,
        )
        self.cluster = ecs_anywhere.cluster

        registrar_token = objects.registrar_token()
        operator_token = objects.operator_token()
        self.images = SidecarImages(
            envoy_repository=config.envoy_image,
            init_image=config.init_image,
            credentials=RegistryCredentials(
                config.registry_credentials_secret_arn, config.registry_credentials_kms_key_arn
            )
            if config.registry_credentials_secret_arn
            else None,
        )
        registrar = Registrar(
            self,
            "Registrar",
            vpc=self.vpc,
            cluster=ecs_anywhere.cluster,
            consul_http_addr=fleet.https_address,
            token_secret=registrar_token,
            ca_secret=fleet.ca_cert_secret,
            key=keys.key,
            max_concurrency=config.registrar_concurrency,
            reserve_concurrency=config.reserve_concurrency,
        )
        fleet.allow_from(registrar.function)
        self.registrar = registrar

        # Repairs lost events on a schedule; drains the catalog before Consul goes on delete.
        reconciler = Reconciler(
            self,
            "Reconciler",
            registrar=registrar,
            interval_minutes=config.reconcile_interval_minutes,
            max_deletions=config.reconcile_max_deletions,
            host_disconnect_grace_minutes=config.host_disconnect_grace_minutes,
            drain_on_delete=config.drain_on_delete,
            reserve_concurrency=config.reserve_concurrency,
        )
        # Drain while the token and servers exist, and while the registrar's security group
        # still has its egress rule to the NLB (a standalone resource nothing else depends on,
        # which CloudFormation would otherwise delete first: the drain would time out).
        reconciler.drain.node.add_dependency(objects, registrar.security_group)
        Monitoring(
            self,
            "Monitoring",
            registrar=registrar,
            reconciler=reconciler,
            cluster=ecs_anywhere.cluster,
            consul_target_groups=fleet.target_groups,
            consul_server_count=config.server_count,
            consul_snapshots=fleet.snapshot_metric,
            key=keys.key,
            alarm_email=config.alarm_email,
        )

        # Mesh services are configuration (`services`, `team_services`); the demo is two such
        # entries under its own construct scope, which keeps its logical IDs. Each MeshService
        # grants its execution role its secrets' keys in the role's own policy (key_use.py).
        common: dict[str, Any] = {
            "ports": config.service_ports,
            "consul": objects,
            "cluster": ecs_anywhere.cluster,
            "ca_secret": fleet.ca_cert_secret,
            # Always gRPC-TLS 8503: plaintext_listeners opens 8500/8502 for other clients and
            # never downgrades the project's own sidecars.
            "consul_grpc_host": fleet.grpc_host,
            "consul_tls_server_name": fleet.tls_server_name,
            "envoy_version": config.envoy_version,
            "log_key": keys.key,
            "images": self.images,
        }
        configured: list[ConfiguredServices] = []
        if config.demo_services:
            configured.append(
                ConfiguredServices(
                    self, demo.SCOPE, services=config.demo_services, config_key="demo", **common
                )
            )
        services = ConfiguredServices(
            self,
            "Services",
            services=config.services,
            team_services=config.team_services,
            **common,
        )
        configured.append(services)
        # Deregister the hosts before any service is deleted: a DAEMON service's deletion waits
        # for its tasks to stop, which never happens on a host that is gone.
        ecs_anywhere.tear_down_before(*configured)
        # What a service team's own CDK app reads to build its services into this mesh.
        PlatformParameters(
            self,
            "MeshParameters",
            prefix=config.prefix,
            environment=config.environment,
            cluster=ecs_anywhere.cluster,
            consul_grpc_host=fleet.grpc_host,
            consul_tls_server_name=fleet.tls_server_name,
            ca_secret=fleet.ca_cert_secret,
            envoy_version=config.envoy_version,
            key=keys.key,
            team_tokens=services.team_tokens,
            images=self.images,
        )

        add_outputs(
            self,
            {
                "ClusterName": ecs_anywhere.cluster.cluster_name,
                "ClusterArn": ecs_anywhere.cluster.cluster_arn,
                "RegisterHostCommand": ecs_anywhere.registration_command,
                "ActivationSecretArn": ecs_anywhere.activation_secret.secret_arn,
                "ActivationFunctionName": ecs_anywhere.function.function_name,
                "ConsulHttpsAddress": fleet.https_address,
                "ConsulGrpcAddress": Fn.join("", [fleet.grpc_host, ":8503"]),
                "ConsulUiUrl": fleet.ui_url,
                "ConsulCaCertSecretArn": fleet.ca_cert_secret.secret_arn,
                "OperatorTokenSecretArn": operator_token.secret_arn,
                "ConsulManagementTokenSecretArn": fleet.management_token_secret.secret_arn,
                "RegistrarTokenSecretArn": registrar_token.secret_arn,
                "ConsulSnapshotBucket": fleet.snapshot_bucket.bucket_name,
                "ConsulServerGroupName": fleet.auto_scaling_group.auto_scaling_group_name,
                "RegistrarDeadLetterQueueUrl": registrar.dead_letter_queue.queue_url,
                "EventRuleDeadLetterQueueUrl": registrar.target_dead_letter_queue.queue_url,
            },
        )
        if network.onprem is not None:
            for name, (value, description) in network.onprem.outputs().items():
                CfnOutput(self, name, value=value, description=description)
        check_template_quotas(self)


@jsii.implements(IAspect)
class _SynthesisPass:
    """What the stack does to its whole tree at synthesis, in one pass from Python.

    An aspect on the stack would be called back from jsii once per construct (two aspects:
    ~880 round trips, bench/README.md figure 1); this one sits on a construct of its own with
    no children, so CDK calls it once, when it invokes aspects at synthesis, and it reads the
    stack's constructs in one call. Anything added to the stack before synthesis is covered,
    from the constructor, app code or configuration alike; what another aspect might add
    after it ran is not (none of this app's aspects adds resources).
    """

    def __init__(self, stack: Stack, service_ports: _OpenServiceCheckPorts) -> None:
        self._stack = stack
        self._service_ports = service_ports
        Aspects.of(Construct(stack, "SynthesisPass")).add(self)

    def visit(self, node: IConstruct) -> None:
        constructs = self._stack.node.find_all()
        self._service_ports.open_for(constructs)
        # The egress rules open_for adds are never Retain: the same walk serves retention.
        retain_except_on_create(constructs)


class _OpenServiceCheckPorts:
    """Lets consul-esm reach every MeshService of the stack on the host ports it listens on.

    The stack opens `ENVOY_INBOUND_PORTS` to each on-prem CIDR itself (host mode). A service
    listening elsewhere (`MeshService.inbound_host_ports`: a bridge-mode service publishes on
    ECS's dynamic host port range) would otherwise stay critical: the servers' egress is
    closed to everything else, and Consul routes no mesh traffic to an instance whose checks
    fail. Run at synthesis (`_SynthesisPass`), so services added after the stack's
    constructor (in app code, or from configuration) are covered too; each range opens once
    per CIDR.
    """

    def __init__(self, fleet: ConsulFleet, onprem_cidrs: Sequence[str]) -> None:
        self._fleet = fleet
        self._cidrs = list(onprem_cidrs)
        self._opened: set[tuple[int, int]] = {ENVOY_INBOUND_PORTS}

    def open_for(self, constructs: Sequence[IConstruct]) -> None:
        """Open the ranges of the MeshServices among `constructs` not opened yet."""
        for node in constructs:
            if not isinstance(node, MeshService) or node.inbound_host_ports in self._opened:
                continue
            low, high = node.inbound_host_ports
            self._opened.add(node.inbound_host_ports)
            for cidr in self._cidrs:
                self._fleet.allow_checks_to(
                    ec2.Peer.ipv4(cidr),
                    node.inbound_host_ports,
                    f"mesh services' host ports {low}-{high} in {cidr}",
                )
