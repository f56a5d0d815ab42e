"""An application on ECS Anywhere, joined to the Consul mesh through an agentless Envoy sidecar."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import Acknowledgment, Annotations, RemovalPolicy, Token, Validations
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from mesh_stack import envoy, init_program
from mesh_stack.container_user import may_be_root
from mesh_stack.key_use import task_secret
from mesh_stack.nag import acknowledge
from mesh_stack.ports import BRIDGE_DYNAMIC_HOST_PORTS, ENVOY_INBOUND_PORTS
from mesh_stack.service_ports import (
    ALL_INTERFACES,
    ENVOY_USER_ID,
    LOOPBACK,
    ServicePorts,
    check_distinct,
    health_check_path_problem,
    metrics_bind_address,
    plan,
)
from mesh_stack.services_config import reserved_name_problem
from mesh_stack.sidecar_images import SidecarImages

identity = init_program.load_identity()

ENVOY_CONTAINER = str(identity.DEFAULT_PROXY_CONTAINER)
INIT_CONTAINER = "envoy-init"
BOOTSTRAP_DIR = "/consul-mesh"
BOOTSTRAP_PATH = f"{BOOTSTRAP_DIR}/envoy-bootstrap.json"
BOOTSTRAP_VOLUME = "consul-mesh-bootstrap"
# Envoy's admin socket lives in a volume of its own: Envoy must create the socket there, while
# it only reads the bootstrap volume. The init container makes the directory Envoy's (0700).
ADMIN_DIR = "/consul-mesh-admin"
ADMIN_SOCKET = f"{ADMIN_DIR}/admin.sock"
ADMIN_VOLUME = "consul-mesh-admin"
NETWORK_MODES = {"host": ecs.NetworkMode.HOST, "bridge": ecs.NetworkMode.BRIDGE}
# Synth-time warning id of a host-mode service whose only check is Envoy's public listener;
# `make synth` fails on it until `MeshService.accept_tcp_check(<why>)` acknowledges it.
NO_HEALTH_PATH_WARNING = "consul-mesh:MeshService.noHealthCheckPath"
# What MeshService tells the app about where to listen (docs/services.md, "What your app must do").
LISTEN_ENV = ("CONSUL_MESH_LISTEN_ADDR", "CONSUL_MESH_LISTEN_HOST", "CONSUL_MESH_LISTEN_PORT")

_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,62}$")
# Any well-formed task ARN: the synth-time dry run of the bootstrap needs one.
_SAMPLE_ACL = "00000000-0000-0000-0000-000000000000"
_SAMPLE_TASK = "arn:aws:ecs:us-east-1:000000000000:task/cluster/00000000000000000000000000000000"


def _check_registration(health_check_path: str | None, tags: Sequence[str]) -> None:
    problem = None if health_check_path is None else health_check_path_problem(health_check_path)
    if problem is not None:
        raise ValueError(f"health_check_path {problem}, got {health_check_path!r}")
    for tag in tags:
        if not _TAG.match(tag):
            raise ValueError(
                f"tags must be 1-63 characters of letters, digits, '_.:=-' (no commas), got {tag!r}"
            )


def _check_upstream_names(service_name: str, upstreams: Mapping[str, int]) -> None:
    for name in upstreams:
        if not identity.valid_service_name(name):
            raise ValueError(f"upstream names must be Consul service names, got {name!r}")
        if name == service_name:
            raise ValueError(f"{service_name} cannot be its own upstream")


def _check_mode(network_mode: str, insecure_published_app_port: bool, app_user: str | None) -> None:
    """Host mode is the secure default; bridge publishes the app and must be acknowledged."""
    if network_mode == "bridge" and insecure_published_app_port is not True:
        raise ValueError(
            "network_mode='bridge' publishes the app's port on the host, where any client on "
            "the network reaches the app without mTLS or intentions; use host mode (the "
            "default), or pass insecure_published_app_port=True to accept that exposure "
            "(docs/services.md, 'Bridge mode')"
        )
    if network_mode != "bridge" and insecure_published_app_port:
        raise ValueError(
            "insecure_published_app_port=True applies to network_mode='bridge' only; host mode "
            "publishes no app port"
        )
    if network_mode == "host" and (app_user is None or may_be_root(app_user)):
        raise ValueError(
            "app_user must name a non-root user (e.g. '1000' or '1000:1000') in host mode, "
            f"where the app shares the host's network namespace; got {app_user!r}"
        )


@dataclass(frozen=True)
class _ClusterIdentity:
    """Which ECS cluster a MeshService runs on, as far as synth can tell.

    The name, account and region identify a cluster whatever construct refers to it (two
    imports of one cluster in two stacks are still one cluster); a part still a token at
    synth (a cluster created in the app, an environment-agnostic stack) is unknown.
    """

    path: str
    name: str | None
    account: str | None
    region: str | None

    @classmethod
    def of(cls, cluster: ecs.ICluster) -> _ClusterIdentity:
        def known(value: str) -> str | None:
            return None if Token.is_unresolved(value) else value

        return cls(
            path=cluster.node.path,
            name=known(cluster.cluster_name),
            account=known(cluster.env.account),
            region=known(cluster.env.region),
        )

    def may_be(self, other: _ClusterIdentity) -> bool:
        """Same cluster, or cannot be told apart: an unknown account or region may match."""
        if self.name is None or other.name is None:
            return self.path == other.path

        def may_match(mine: str | None, theirs: str | None) -> bool:
            return mine is None or theirs is None or mine == theirs

        return (
            self.name == other.name
            and may_match(self.account, other.account)
            and may_match(self.region, other.region)
        )


class MeshService(Construct):
    """An EXTERNAL task definition and ECS service: the app, its Envoy sidecar, an init step.

    At task start the `envoy-init` container (stock Python, essential=false) reads the task
    ARN from the ECS metadata endpoint and writes the Envoy bootstrap (mesh_stack/envoy.py)
    into a task volume; Envoy starts only after it exits 0. The ACL token and the Consul CA
    reach the init container as ECS `secrets` and exist only in that file (mode 0600, owned by
    the Envoy user). Envoy's admin API is a unix socket in a second task volume, never a TCP
    port. The app container carries the docker labels the registrar reads
    (docs/architecture.md), so the task is registered in Consul when it runs.

    Host mode (the default) is the only mode in which the mesh cannot be bypassed: the app
    listens on 127.0.0.1 only (it is told where in CONSUL_MESH_LISTEN_ADDR/_HOST/_PORT), Envoy
    reaches it there and is the only thing listening on the network, and consul-esm checks it
    through Envoy. Every host-mode service of one cluster must use ports of its own; that is
    checked across all MeshServices of the cluster at synth. Host-mode ports are >= 1024 and
    outside the ports ECS reserves (22, 2375, 2376, 51678-51680) and the ephemeral range
    32768-60999. ECS reserves only Envoy's port-mapped ports: the app's and upstream ports are
    on 127.0.0.1, unmapped, so other host-mode workloads on the hosts must avoid them.

    service_name: Consul service name (DNS label); also the app container's name.
    image / port: the application image and the container port it serves on.
    token_secret: Secrets Manager secret with this service's Consul ACL token
        (`service:write` on service_name); `token_secret_field` selects a JSON key.
    ca_secret: secret with the Consul CA certificate (PEM); `ca_secret_field` selects a key.
        Not needed with `plaintext`.
    consul_grpc_host: the Consul servers' internal load balancer DNS name.
    consul_grpc_port: default 8503 (gRPC-TLS), 8502 with `plaintext`.
    consul_tls_server_name: DNS name on the server certificates (e.g. server.dc1.consul);
        default consul_grpc_host.
    plaintext: xDS over plaintext gRPC 8502; only when the fleet opted into it.
    envoy_version: Envoy release (image `<images.envoy_repository>:v<version>`), from the
        validated config.
    images: where the Envoy and init images come from, and a private registry's credentials
        (`SidecarImages`; default: Docker Hub's envoyproxy/envoy and ECR Public's Python).
    log_key: KMS key of the service's log group.
    environment / health_check: the app container's environment and ECS health check.
    health_check_path: HTTP path Consul checks (consul-esm, from the Consul servers). In host
        mode Envoy serves exactly this path on `expose_port` (a Consul expose path), outside
        mTLS. Without it the check is TCP: in bridge mode to the app's published port, in host
        mode to Envoy's public listener, which only proves that the sidecar is up, so Consul
        routes traffic to a task whose app is still starting or hung. Set it in host mode; a
        host-mode service without it gets a synth-time warning (NO_HEALTH_PATH_WARNING), which
        `accept_tcp_check` acknowledges.
    tags: Consul service tags.
    upstreams: {service: local port}; the app reaches each at `upstream_address(service)`.
    network_mode: "host" (default: the task shares the host's network namespace, one task per
        host, ports of its own) or "bridge" (ports mapped dynamically, many tasks per host,
        but the app's port is published on the host: only with insecure_published_app_port).
    insecure_published_app_port: the explicit acknowledgement bridge mode needs: any client
        that reaches the host can call the app on its published port, around Envoy, mTLS and
        intentions (docs/services.md explains the host firewall rule that closes it).
    desired_count: running tasks (replica scheduling). A replica service whose tasks cannot be
        placed keeps CloudFormation waiting for it to stabilise, so keep it 0 until hosts joined.
    daemon: one task on every registered host instead of `desired_count` (ECS DAEMON
        scheduling). A daemon service with no host yet is stable at zero tasks, so it deploys
        before any host has joined and starts on each host as it registers.
    cpu / memory_mib: the app container's CPU units and hard memory limit.
    proxy_port: Envoy's public (inbound mTLS) listener port; default 20000.
    prometheus_port: Envoy listener serving /stats/prometheus only; None disables it.
    prometheus_bind_address: where that listener binds. Host mode: "127.0.0.1" (default, the
        host's loopback: a scraper on the host itself) or "0.0.0.0" (every interface of the
        host, for an off-host Prometheus: open the port on the host firewall to the
        Prometheus hosts only). Bridge mode: "0.0.0.0" of the Envoy container (the only value).
    proxy_port / expose_port in host mode: both in ENVOY_INBOUND_PORTS (20000-20999), the only
        range the Consul servers and other hosts may reach; expose_port defaults to
        proxy_port + 500 and exists only with a health_check_path.
    app_user: user the app container runs as; required and non-root in host mode.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: ecs.ICluster,
        service_name: str,
        image: ecs.ContainerImage,
        port: int,
        token_secret: secretsmanager.ISecret,
        consul_grpc_host: str,
        envoy_version: str,
        log_key: kms.IKey,
        ca_secret: secretsmanager.ISecret | None = None,
        token_secret_field: str | None = None,
        ca_secret_field: str | None = None,
        consul_grpc_port: int | None = None,
        consul_tls_server_name: str | None = None,
        plaintext: bool = False,
        environment: Mapping[str, str] | None = None,
        health_check: ecs.HealthCheck | None = None,
        health_check_path: str | None = None,
        tags: Sequence[str] = (),
        upstreams: Mapping[str, int] | None = None,
        network_mode: str = "host",
        insecure_published_app_port: bool = False,
        desired_count: int = 1,
        daemon: bool = False,
        cpu: int = 256,
        memory_mib: int = 512,
        proxy_port: int = identity.DEFAULT_PROXY_PORT,
        expose_port: int | None = None,
        prometheus_port: int | None = 9102,
        prometheus_bind_address: str | None = None,
        app_user: str | None = None,
        images: SidecarImages | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        images = images or SidecarImages()
        upstreams = dict(upstreams or {})
        self._validate(
            service_name=service_name,
            envoy_version=envoy_version,
            desired_count=desired_count,
            health_check_path=health_check_path,
            tags=tags,
            upstreams=upstreams,
            plaintext=plaintext,
            ca_secret=ca_secret,
        )
        _check_mode(network_mode, insecure_published_app_port, app_user)
        self.ports: ServicePorts = plan(
            service=service_name,
            network_mode=network_mode,
            port=port,
            proxy_port=proxy_port,
            expose_port=expose_port,
            health_check_path=health_check_path,
            prometheus_port=prometheus_port,
            upstreams=upstreams,
        )
        metrics_address = metrics_bind_address(
            network_mode, prometheus_port is not None, prometheus_bind_address
        )
        metrics_bind = None if metrics_address is None else f"{metrics_address}:{prometheus_port}"
        self._cluster = _ClusterIdentity.of(cluster)
        check_distinct(self.ports, self._host_mode_neighbours())
        self.service_name = service_name
        self.network_mode = network_mode
        self.health_check_path = health_check_path
        self.upstreams = upstreams
        host_mode = network_mode == "host"
        self.listen_address = f"{LOOPBACK if host_mode else ALL_INTERFACES}:{port}"
        # The host ports (inclusive range) the Consul servers (consul-esm) and other mesh hosts
        # must reach for this service: its Envoy listeners in host mode, the ECS dynamic host
        # port range in bridge mode.
        self.inbound_host_ports: tuple[int, int] = (
            ENVOY_INBOUND_PORTS if host_mode else BRIDGE_DYNAMIC_HOST_PORTS
        )
        app_environment = self._app_environment(environment, host_mode, port)

        init_environment = self._init_environment(
            service_name=service_name,
            consul_grpc_host=consul_grpc_host,
            consul_grpc_port=consul_grpc_port,
            consul_tls_server_name=consul_tls_server_name,
            plaintext=plaintext,
            metrics_bind=metrics_bind,
        )
        self._dry_run_bootstrap(init_environment, plaintext)

        self.task_definition = ecs.ExternalTaskDefinition(
            self, "TaskDefinition", network_mode=NETWORK_MODES[network_mode]
        )
        # Host volume without a source path: an empty directory ECS creates for this task.
        self.task_definition.add_volume(name=BOOTSTRAP_VOLUME)
        self.task_definition.add_volume(name=ADMIN_VOLUME)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=log_key,
            removal_policy=RemovalPolicy.DESTROY,
        )

        def mapping(container_port: int) -> ecs.PortMapping:
            # Bridge: a free host port per task; host: the container port is the host port.
            host_port = container_port if host_mode else 0
            return ecs.PortMapping(container_port=container_port, host_port=host_port)

        self.init_container = self.task_definition.add_container(
            "Init",
            container_name=INIT_CONTAINER,
            image=images.init(self),
            entry_point=init_program.ENTRY_POINT,
            command=init_program.command(),
            user=init_program.USER,
            essential=False,
            memory_limit_mib=64,
            readonly_root_filesystem=True,
            environment=init_environment,
            secrets=self._init_secrets(
                token_secret, token_secret_field, ca_secret, ca_secret_field, plaintext
            ),
            logging=ecs.LogDriver.aws_logs(stream_prefix=INIT_CONTAINER, log_group=self.log_group),
        )
        self.init_container.add_mount_points(
            ecs.MountPoint(
                container_path=BOOTSTRAP_DIR, source_volume=BOOTSTRAP_VOLUME, read_only=False
            ),
            ecs.MountPoint(container_path=ADMIN_DIR, source_volume=ADMIN_VOLUME, read_only=False),
        )

        # Host mode: these mappings publish nothing (the container is in the host's namespace)
        # but make ECS reserve the ports, so it never places two such tasks on one host.
        envoy_ports = self.ports.envoy_ports()
        self.envoy_container = self.task_definition.add_container(
            "Envoy",
            container_name=ENVOY_CONTAINER,
            image=images.envoy(self, envoy_version),
            # Hot restart shares a socket per base id: two Envoys in one network namespace
            # (host mode) would collide, and ECS restarts tasks rather than Envoy anyway.
            command=["-c", BOOTSTRAP_PATH, "--disable-hot-restart"],
            # Run the binary directly: the image's entrypoint script changes users only when
            # started as root, and its behaviour differs between releases.
            entry_point=["/usr/local/bin/envoy"],
            user=f"{ENVOY_USER_ID}:{ENVOY_USER_ID}",
            essential=True,
            memory_limit_mib=128,
            readonly_root_filesystem=True,
            port_mappings=[mapping(p) for p in envoy_ports],
            logging=ecs.LogDriver.aws_logs(stream_prefix=ENVOY_CONTAINER, log_group=self.log_group),
        )
        self.envoy_container.add_mount_points(
            ecs.MountPoint(
                container_path=BOOTSTRAP_DIR, source_volume=BOOTSTRAP_VOLUME, read_only=True
            ),
            ecs.MountPoint(container_path=ADMIN_DIR, source_volume=ADMIN_VOLUME, read_only=False),
        )
        self.envoy_container.add_container_dependencies(
            ecs.ContainerDependency(
                container=self.init_container, condition=ecs.ContainerDependencyCondition.SUCCESS
            )
        )

        self.app_container = self.task_definition.add_container(
            "App",
            container_name=service_name,
            image=image,
            essential=True,
            cpu=cpu,
            memory_limit_mib=memory_mib,
            environment=app_environment,
            health_check=health_check,
            user=app_user,
            # Only the bridge opt-in publishes the app's port; in host mode the app listens
            # on 127.0.0.1 and is reachable only through Envoy.
            port_mappings=[] if host_mode else [mapping(port)],
            docker_labels=self._labels(
                service_name=service_name,
                port=port,
                tags=tags,
                upstreams=upstreams,
                health_check_path=health_check_path,
                proxy_port=proxy_port,
                expose_port=self.ports.expose,
            ),
            logging=ecs.LogDriver.aws_logs(stream_prefix=service_name, log_group=self.log_group),
        )
        if not host_mode:
            # Bridge: the app reaches Envoy's upstream listeners as http://envoy:<local port>.
            self.app_container.add_link(self.envoy_container, ENVOY_CONTAINER)

        if daemon:
            # One task per host: the old one stops before its successor starts on that host.
            self.service = ecs.ExternalService(
                self,
                "Service",
                cluster=cluster,
                task_definition=self.task_definition,
                daemon=True,
                min_healthy_percent=0,
                max_healthy_percent=100,
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            )
        else:
            self.service = ecs.ExternalService(
                self,
                "Service",
                cluster=cluster,
                task_definition=self.task_definition,
                desired_count=desired_count,
                # Host mode holds fixed ports: the old task must stop before its successor
                # can start on the same host.
                min_healthy_percent=0 if host_mode else 100,
                max_healthy_percent=100 if host_mode else 200,
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            )
        self._acknowledge(host_mode)
        self._ecr_acknowledged = False
        images.grant_credentials_key(self.task_definition.obtain_execution_role())
        images.grant_pull_through_cache(self.task_definition.obtain_execution_role())
        if images.uses_ecr():
            self.acknowledge_ecr_pulls()
        if host_mode and not health_check_path:
            Annotations.of(self).add_warning_v2(
                NO_HEALTH_PATH_WARNING,
                f"mesh service {service_name!r} has no health_check_path: in host mode its only "
                f"Consul check is a TCP connect to its Envoy's public listener ({proxy_port}), "
                "which only proves that its Envoy sidecar is up, not that the app listens, so "
                "Consul sends it traffic while the app starts or hangs; set health_check_path "
                "(docs/services.md, 'What your app must do')",
            )

    def acknowledge_ecr_pulls(self) -> None:
        """For a task with an image in Amazon ECR (app or sidecar): its execution role's
        `ecr:GetAuthorizationToken` is on `*`. Once per task, whoever pulls from ECR."""
        if self._ecr_acknowledged:
            return
        self._ecr_acknowledged = True
        acknowledge(
            self.task_definition.obtain_execution_role(),
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken takes no resource ARN (Amazon ECR API reference); "
            "image pulls are granted on the configured repositories only.",
        )

    def accept_tcp_check(self, reason: str) -> None:
        """Accept, for `reason`, that this host-mode service without a health_check_path is
        checked only at its Envoy sidecar: acknowledges NO_HEALTH_PATH_WARNING through CDK's
        validation API, so the reason is recorded in the cloud assembly, where the synth gate
        and the review report read it (`Annotations.acknowledge_warning` records nothing)."""
        if not reason.strip():
            raise ValueError("accept_tcp_check needs the reason a TCP check is enough")
        if self.network_mode != "host" or self.health_check_path:
            raise ValueError(
                f"mesh service {self.service_name!r} is not a host-mode service without a "
                "health_check_path: there is no TCP-only check to accept"
            )
        Validations.of(self).acknowledge(
            Acknowledgment(id=f"Annotation::{NO_HEALTH_PATH_WARNING}", reason=reason.strip())
        )

    def upstream_address(self, service: str) -> str:
        """`host:port` at which the app reaches `service` through its Envoy."""
        if service not in self.upstreams:
            raise ValueError(
                f"{service!r} is not an upstream of {self.service_name}; "
                f"upstreams are {sorted(self.upstreams)}"
            )
        host = LOOPBACK if self.network_mode == "host" else ENVOY_CONTAINER
        return f"{host}:{self.upstreams[service]}"

    def _host_mode_neighbours(self) -> list[ServicePorts]:
        """The port plans of the other MeshServices of this app that may share its cluster."""
        return [
            other.ports
            for other in self.node.root.node.find_all()
            if isinstance(other, MeshService)
            and other is not self
            # unset on a MeshService whose validation failed
            and hasattr(other, "_cluster")
            and self._cluster.may_be(other._cluster)
        ]

    @staticmethod
    def _app_environment(
        environment: Mapping[str, str] | None, host_mode: bool, port: int
    ) -> dict[str, str]:
        """The app's environment plus where it must listen (127.0.0.1 in host mode)."""
        env = dict(environment or {})
        taken = sorted(set(env) & set(LISTEN_ENV))
        if taken:
            raise ValueError(f"environment must not set {taken}: MeshService sets them")
        host = LOOPBACK if host_mode else ALL_INTERFACES
        listen = dict(zip(LISTEN_ENV, (f"{host}:{port}", host, str(port)), strict=True))
        return {**env, **listen}

    @staticmethod
    def _labels(
        *,
        service_name: str,
        port: int,
        tags: Sequence[str],
        upstreams: Mapping[str, int],
        health_check_path: str | None,
        proxy_port: int,
        expose_port: int | None,
    ) -> dict[str, str]:
        """The registrar's docker labels (identity.LABEL_*, docs/architecture.md)."""
        labels = {
            str(identity.LABEL_ENABLED): "true",
            str(identity.LABEL_SERVICE): service_name,
            str(identity.LABEL_PORTS): str(port),
            str(identity.LABEL_PROXY_CONTAINER): ENVOY_CONTAINER,
            str(identity.LABEL_PROXY_PORT): str(proxy_port),
        }
        if tags:
            labels[str(identity.LABEL_TAGS)] = ",".join(tags)
        if upstreams:
            labels[str(identity.LABEL_UPSTREAMS)] = ",".join(
                f"{name}:{local}" for name, local in sorted(upstreams.items())
            )
        if health_check_path:
            labels[str(identity.LABEL_HEALTH_PATH)] = health_check_path
        if expose_port is not None:
            labels[str(identity.LABEL_EXPOSE_PORT)] = str(expose_port)
        return labels

    @staticmethod
    def _init_environment(
        *,
        service_name: str,
        consul_grpc_host: str,
        consul_grpc_port: int | None,
        consul_tls_server_name: str | None,
        plaintext: bool,
        metrics_bind: str | None,
    ) -> dict[str, str]:
        env = {
            "CONSUL_MESH_SERVICE": service_name,
            "CONSUL_GRPC_HOST": consul_grpc_host,
            "ENVOY_ADMIN_SOCKET": ADMIN_SOCKET,
            "ENVOY_PROMETHEUS_BIND": metrics_bind or "",
            "ENVOY_BOOTSTRAP_PATH": BOOTSTRAP_PATH,
            "ENVOY_UID": str(ENVOY_USER_ID),
            "ENVOY_GID": str(ENVOY_USER_ID),
        }
        if consul_grpc_port is not None:
            env["CONSUL_GRPC_PORT"] = str(consul_grpc_port)
        if consul_tls_server_name:
            env["CONSUL_TLS_SERVER_NAME"] = consul_tls_server_name
        if plaintext:
            env["CONSUL_GRPC_PLAINTEXT"] = "true"
        return env

    def _init_secrets(
        self,
        token_secret: secretsmanager.ISecret,
        token_field: str | None,
        ca_secret: secretsmanager.ISecret | None,
        ca_field: str | None,
        plaintext: bool,
    ) -> dict[str, ecs.Secret]:
        """The init container's secrets; the execution role may decrypt their keys through
        its own policy, and no key policy names it (key_use.task_secret)."""
        role = self.task_definition.obtain_execution_role()
        secrets = {
            "CONSUL_HTTP_TOKEN": task_secret(
                self, "TokenSecret", token_secret, reader=role, field=token_field
            ),
        }
        if not plaintext and ca_secret is not None:
            secrets["CONSUL_CACERT_PEM"] = task_secret(
                self, "CaSecret", ca_secret, reader=role, field=ca_field
            )
        return secrets

    @staticmethod
    def _validate(
        *,
        service_name: str,
        envoy_version: str,
        desired_count: int,
        health_check_path: str | None,
        tags: Sequence[str],
        upstreams: Mapping[str, int],
        plaintext: bool,
        ca_secret: secretsmanager.ISecret | None,
    ) -> None:
        if not identity.valid_service_name(service_name):
            raise ValueError(
                "service_name must be a DNS label (lowercase letters, digits, '-', at most 63 "
                f"characters), got {service_name!r}"
            )
        reserved = reserved_name_problem(service_name)
        if reserved is not None:
            raise ValueError(f"service_name {service_name!r} {reserved}")
        # A token: the platform's SSM contract (platform_parameters.py) supplies the version.
        if not Token.is_unresolved(envoy_version) and not _SEMVER.match(envoy_version):
            raise ValueError(f"envoy_version must look like 1.34.14, got {envoy_version!r}")
        if not isinstance(desired_count, int) or not 0 <= desired_count <= 1000:
            raise ValueError(f"desired_count must be 0..1000, got {desired_count!r}")
        _check_registration(health_check_path, tags)
        if not plaintext and ca_secret is None:
            raise ValueError("ca_secret (the Consul CA) is required unless plaintext is opted in")
        _check_upstream_names(service_name, upstreams)

    @staticmethod
    def _dry_run_bootstrap(environment: Mapping[str, str], plaintext: bool) -> None:
        """Run the init program's own renderer at synth on the environment the container gets
        (placeholders for tokens and secrets), so bad input fails `cdk synth`, not a task."""
        init = init_program.load_init()
        sample = {
            name: "consul.invalid" if Token.is_unresolved(value) else value
            for name, value in environment.items()
        }
        sample["CONSUL_HTTP_TOKEN"] = _SAMPLE_ACL
        if not plaintext:
            sample["CONSUL_CACERT_PEM"] = "-----BEGIN CERTIFICATE-----\n"
        try:
            init.build_bootstrap(sample, {"TaskARN": _SAMPLE_TASK}, identity, envoy)
        except init.InitError as err:
            raise ValueError(str(err)) from None

    def _acknowledge(self, host_mode: bool) -> None:
        execution_role = self.task_definition.execution_role
        if execution_role is not None:
            acknowledge(
                execution_role,
                "NIST.800.53.R5-IAMNoInlinePolicy",
                "CDK-generated policy of this task's execution role only: read of the two "
                "secrets the init container needs and writes to this service's log group.",
            )
        acknowledge(
            self.task_definition,
            "AwsSolutions-ECS2",
            "The environment holds only non-secret settings (service name, Consul address, "
            "ports); the ACL token and CA are injected from Secrets Manager via `secrets`.",
        )
        if host_mode:
            acknowledge(
                self.task_definition,
                "NIST.800.53.R5-ECSTaskDefinitionUserForHostMode",
                "Envoy runs as uid 1337 and the app as app_user, which MeshService refuses to "
                "be root in host mode; the init container runs as root for under a second only "
                "to hand the bootstrap and admin socket directory to uid 1337, and serves no "
                "port. None runs privileged.",
            )
