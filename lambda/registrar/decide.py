"""Pure decisions: what the catalog should hold for a task, and what to write to get there.

No I/O here. `triage` and `mesh_target` decide from the event and the task definition alone
whether the task concerns the registrar at all (so that opted-out tasks cost no Consul
request); `desired_registration` computes the catalog entries of a running task (reused by
the reconcile pass); `decide` compares the wanted state with the state record and returns the
one action to take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import identity
from model import (
    EXTERNAL,
    MAX_PORTS,
    RUNNING,
    SUPPORTED_NETWORK_MODES,
    ContainerDefinition,
    ExposePath,
    HealthCheck,
    Host,
    InvalidTaskDefinition,
    MalformedEvent,
    MeshLabels,
    ProxyUpstream,
    Registration,
    ServiceInstance,
    SidecarProxy,
    StateRecord,
    TaskDefinition,
    TaskEvent,
    parse_labels,
)

# Statuses after which a task never runs again (ECS task lifecycle): a stop is terminal.
STOP_STATUSES = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"})

# consul-esm runs checks at this pace; Consul's own default for agent checks is similar.
CHECK_INTERVAL = "10s"
CHECK_TIMEOUT = "5s"

# Upstream listeners: in bridge mode the app reaches Envoy through a container link, so Envoy
# must listen on all interfaces of its own network namespace; in host mode only on loopback.
UPSTREAM_BIND = {"bridge": "0.0.0.0", "host": "127.0.0.1"}  # noqa: S104 - inside the container
# The public listener binds inside the Envoy container (DESIGN.md: bind_address/bind_port).
PUBLIC_BIND_ADDRESS = "0.0.0.0"  # noqa: S104
# Expose paths: Consul's allowed protocols are "http" and "http2" (agent/structs
# connect_proxy_config.go allowedExposeProtocols); consul-esm's HTTP check speaks HTTP/1.1.
EXPOSE_PROTOCOL = "http"

Phase = Literal["run", "stop"]
SkipKind = Literal["ignored", "stale", "duplicate", "invalid"]


@dataclass(frozen=True)
class Skip:
    """Nothing to write. `kind` picks the metric; `reason` goes to the log line."""

    kind: SkipKind
    reason: str


def triage(event: TaskEvent, cluster_arn: str) -> Phase | Skip:
    """Does this event concern the registrar, and is the task to be run or stopped?"""
    if event.cluster_arn != cluster_arn:
        return Skip("ignored", f"task of cluster {event.cluster_arn}, not {cluster_arn}")
    if event.launch_type != EXTERNAL:
        return Skip("ignored", f"launchType {event.launch_type} is not {EXTERNAL}")
    if event.desired_status == "STOPPED" or event.last_status in STOP_STATUSES:
        return "stop"
    if event.desired_status == "RUNNING" and event.last_status == "RUNNING":
        return "run"
    return Skip(
        "ignored",
        f"not running yet (desiredStatus {event.desired_status}, lastStatus {event.last_status})",
    )


def mesh_target(task_definition: TaskDefinition) -> ContainerDefinition | Skip:
    """The opted-in application container, or why the task stays out of the mesh."""
    opted = task_definition.opted_in
    if not opted:
        return Skip("ignored", f"no container sets {identity.LABEL_ENABLED}=true")
    if task_definition.network_mode not in SUPPORTED_NETWORK_MODES:
        return Skip(
            "invalid",
            f"network mode {task_definition.network_mode!r} is not supported on ECS Anywhere "
            f"meshes (allowed: {', '.join(SUPPORTED_NETWORK_MODES)})",
        )
    if len(opted) > 1:
        names = ", ".join(c.name for c in opted)
        return Skip(
            "invalid",
            f"several containers set {identity.LABEL_ENABLED}=true ({names}); one Envoy per "
            "task serves exactly one application container",
        )
    return opted[0]


def _check(
    *, check_id: str, name: str, service_id: str, address: str, port: int, path: str | None
) -> HealthCheck:
    """TCP connect to address:port, or HTTP GET of `path` there when the owner set one."""
    target = f"{_host(address)}:{port}"
    return HealthCheck(
        check_id=check_id,
        name=name,
        service_id=service_id,
        tcp=None if path else target,
        http=f"http://{target}{path}" if path else None,
        interval=CHECK_INTERVAL,
        timeout=CHECK_TIMEOUT,
    )


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _registered_ports(app: ContainerDefinition, labels: MeshLabels, mode: str) -> tuple[int, ...]:
    mapped = [pm.container_port for pm in app.port_mappings if pm.protocol == "tcp"]
    if mode == "host" and labels.ports is not None:
        # In host mode a container binds host ports without any mapping; a mesh app maps none,
        # since it listens on 127.0.0.1 only (MeshService sets consul-mesh.ports instead).
        ports = labels.ports
    elif labels.ports is None:
        ports = tuple(dict.fromkeys(mapped))
        if not ports:
            raise InvalidTaskDefinition(
                f"container {app.name} maps no TCP port; add portMappings or set "
                f"{identity.LABEL_PORTS}"
            )
    else:
        ports = labels.ports
        missing = [p for p in ports if p not in mapped]
        if missing:
            raise InvalidTaskDefinition(
                f"label {identity.LABEL_PORTS} names {missing}, which container {app.name} "
                f"does not map over TCP (mapped: {mapped})"
            )
    if len(ports) > MAX_PORTS:
        raise InvalidTaskDefinition(
            f"container {app.name} registers {len(ports)} ports, at most {MAX_PORTS} allowed"
        )
    return ports


def _host_port(
    event: TaskEvent, task_definition: TaskDefinition, container: str, port: int, host: Host
) -> int:
    """The host port Consul must advertise for `container`'s container port `port`."""
    if task_definition.network_mode == "host":
        return port
    state = event.container(container)
    bound = state.host_port(port, ipv6=":" in host.address) if state else None
    if bound is not None:
        return bound
    definition = task_definition.container(container)
    mappings = definition.port_mappings if definition else ()
    static = next((pm.host_port for pm in mappings if pm.container_port == port), None)
    if static:
        return static
    raise MalformedEvent(
        f"detail.containers[name={container}] has no TCP network binding for container port "
        f"{port} (bridge mode needs it to know the host port)"
    )


def _host_ports_held(
    task_definition: TaskDefinition,
    labels: MeshLabels,
    ports: tuple[int, ...],
    *,
    own: tuple[str, int],
) -> dict[int, str]:
    """Host mode: who else holds each port of the network namespace every container shares.

    A TCP port mapping is a port its container listens on (in host mode hostPort equals
    containerPort: ECS developer guide, task definition parameters, `portMappings`); `own` is
    the (proxy container, port) mapping that reserves the listener being checked itself.
    """
    held: dict[int, str] = {}
    for container in task_definition.containers:
        for pm in container.port_mappings:
            if pm.protocol == "tcp" and (container.name, pm.container_port) != own:
                held.setdefault(pm.container_port, f"a port mapping of container {container.name}")
    held.update((p, f"registered app port {p}") for p in ports)
    held.update((u.local_bind_port, identity.LABEL_UPSTREAMS) for u in labels.upstreams)
    return held


def _check_proxy_port(
    task_definition: TaskDefinition,
    proxy: ContainerDefinition,
    labels: MeshLabels,
    ports: tuple[int, ...],
) -> None:
    """Host mode: Envoy's public listener must be free in the task (else Envoy NACKs it)."""
    port = labels.proxy_port
    held = _host_ports_held(task_definition, labels, ports, own=(proxy.name, port))
    if port in held:
        raise InvalidTaskDefinition(
            f"label {identity.LABEL_PROXY_PORT}: Envoy's public listener port {port} collides "
            f"with {held[port]}; set {identity.LABEL_PROXY_PORT} to a free port"
        )


def _expose_port(
    task_definition: TaskDefinition,
    proxy: ContainerDefinition,
    labels: MeshLabels,
    ports: tuple[int, ...],
) -> int:
    """Host mode: the Envoy listener that serves the health path, distinct from other ports.

    The proxy container's port mappings are Envoy's listeners: its public one, the health
    listener and static ones such as metrics, which a mapping does not tell apart. A mapping
    of the health listener's port on the proxy container counts as its reservation only when
    the label names that port; under the default port it may as well be the metrics listener
    (MeshService always writes the label).
    """
    port = labels.expose_port or labels.proxy_port + identity.EXPOSE_PORT_OFFSET
    held = _host_ports_held(task_definition, labels, ports, own=(proxy.name, port))
    mapped_by_proxy = any(
        pm.protocol == "tcp" and pm.container_port == port for pm in proxy.port_mappings
    )
    if labels.expose_port is None and mapped_by_proxy:
        held.setdefault(
            port,
            f"a port mapping of proxy container {proxy.name} (another Envoy listener, such as "
            f"its metrics; if it reserves the health listener, set {identity.LABEL_EXPOSE_PORT}"
            f"={port})",
        )
    held[labels.proxy_port] = identity.LABEL_PROXY_PORT
    if port > 65535 or port in held:
        why = "is above 65535" if port > 65535 else f"collides with {held[port]}"
        raise InvalidTaskDefinition(
            f"label {identity.LABEL_EXPOSE_PORT}: Envoy's health listener port {port} {why}; "
            f"set {identity.LABEL_EXPOSE_PORT} to a free port"
        )
    return port


def desired_registration(
    event: TaskEvent,
    task_definition: TaskDefinition,
    app: ContainerDefinition,
    host: Host,
) -> Registration:
    """The catalog entries of a running task (DESIGN.md section 3, docs/architecture.md).

    Host mode (the app listens on 127.0.0.1 only) routes every check through Envoy, because
    consul-esm checks from the Consul servers: an HTTP health path becomes a Consul expose
    path served on Envoy's expose listener, and a TCP check dials the public listener.
    Bridge mode checks the app's published port.

    Raises InvalidTaskDefinition (labels, ports, proxy container) or MalformedEvent (a bridge
    port without a network binding).
    """
    labels = parse_labels(app)
    mode = task_definition.network_mode
    ports = _registered_ports(app, labels, mode)
    proxy = task_definition.container(labels.proxy_container)
    if proxy is None:
        raise InvalidTaskDefinition(
            f"proxy container {labels.proxy_container!r} is not in the task definition; add "
            f"the Envoy container or set {identity.LABEL_PROXY_CONTAINER}"
        )
    if event.container_instance_arn is None:
        raise MalformedEvent("detail.containerInstanceArn is missing for a RUNNING task")
    meta = {
        "task-arn": event.task_arn,
        "task-id": event.task_id,
        "cluster-arn": event.cluster_arn,
        "container-instance-arn": event.container_instance_arn,
        "source": identity.SOURCE,
    }
    path = labels.health_check_path
    envoy_port = _host_port(event, task_definition, proxy.name, labels.proxy_port, host)
    expose: tuple[ExposePath, ...] = ()
    if mode == "host":
        _check_proxy_port(task_definition, proxy, labels, ports)
    if mode == "host" and path:
        listener = _expose_port(task_definition, proxy, labels, ports)
        expose = (ExposePath(listener, path, ports[0], EXPOSE_PROTOCOL),)
    services = []
    for port in ports:
        svc_id = identity.service_id(
            labels.service, event.task_arn, port if len(ports) > 1 else None
        )
        host_port = _host_port(event, task_definition, app.name, port, host)
        if mode == "bridge":
            # The app's port is published on the host: check it there.
            name, target, check_path = f"{labels.service} on", host_port, path
        elif expose:
            # Host mode: the app is on loopback; Envoy serves its health path (expose path).
            name, target, check_path = "health path through Envoy on", expose[0].listener_port, path
        else:
            # Host mode without a path: Envoy's public listener stands in for the app.
            name, target, check_path = "Envoy public listener on", envoy_port, None
        services.append(
            ServiceInstance(
                id=svc_id,
                name=labels.service,
                port=host_port,
                tags=labels.tags,
                meta=meta,
                check=_check(
                    check_id=f"service:{svc_id}",
                    name=f"{name} {host.address}:{target}",
                    service_id=svc_id,
                    address=host.address,
                    port=target,
                    path=check_path,
                ),
            )
        )
    primary = services[0]
    proxy_id = identity.proxy_id(primary.id)
    # Envoy's public listener answers ...
    proxy_checks = [
        _check(
            check_id=f"service:{proxy_id}",
            name=f"Envoy public listener on {host.address}:{envoy_port}",
            service_id=proxy_id,
            address=host.address,
            port=envoy_port,
            path=None,
        )
    ]
    if mode == "bridge" or expose:
        # ... and the app behind it is healthy: Consul routes mesh traffic by the proxy's
        # checks alone, so the app's check is mirrored here (an agent would use an alias
        # check, which consul-esm does not run). Host mode without a path has nothing more to
        # check than the public listener.
        proxy_checks.append(
            _check(
                check_id=f"service:{proxy_id}:destination",
                name=f"{labels.service} behind the proxy",
                service_id=proxy_id,
                address=host.address,
                port=expose[0].listener_port if expose else primary.port,
                path=path,
            )
        )
    sidecar = SidecarProxy(
        id=proxy_id,
        name=f"{labels.service}-sidecar-proxy",
        port=envoy_port,
        tags=labels.tags,
        meta=meta,
        destination_name=labels.service,
        destination_id=primary.id,
        local_service_address=host.address if mode == "bridge" else "127.0.0.1",
        local_service_port=primary.port if mode == "bridge" else ports[0],
        bind_port=labels.proxy_port,
        upstreams=tuple(
            ProxyUpstream(u.destination_name, u.local_bind_port, UPSTREAM_BIND[mode])
            for u in labels.upstreams
        ),
        checks=tuple(proxy_checks),
        expose=expose,
    )
    return Registration(
        task_arn=event.task_arn,
        node=identity.node_name(event.task_arn),
        address=host.address,
        node_meta={
            "external-node": "true",
            "external-probe": "false",
            "source": identity.SOURCE,
            "cluster-arn": event.cluster_arn,
        },
        services=tuple(services),
        sidecar=sidecar,
    )


# --------------------------------------------------------------------------------------------
# Ordering: the decision against the task's state record


@dataclass(frozen=True)
class Register:
    """Write the registration (txn + sidecar + re-check)."""

    registration: Registration


@dataclass(frozen=True)
class Deregister:
    """Delete the task's node and write the tombstone, in one txn."""


@dataclass(frozen=True)
class VerifySidecar:
    """Nothing to write unless the sidecar of `record` is missing from the catalog.

    A duplicate of the event that wrote the record may be the redelivery of a message whose
    txn landed but whose sidecar write failed; one read tells.
    """

    record: StateRecord
    skip: Skip


@dataclass(frozen=True)
class VerifyAbsent:
    """Nothing to write unless the node of a tombstoned task is back in the catalog.

    A RUNNING event behind a tombstone may be the retry of a writer whose sidecar write landed
    after the stop and whose clean-up failed; one read tells.
    """

    skip: Skip


Action = Register | Deregister | VerifySidecar | VerifyAbsent | Skip


def decide(
    desired: Registration | None,
    version: int,
    record: StateRecord | None,
    *,
    repair: bool = False,
) -> Action:
    """What to write for an event of `version` whose wanted state is `desired` (None: stopped).

    - A stopped record is a tombstone: a stop is terminal in ECS, so nothing runs the task
      again whatever its version says.
    - Otherwise an event whose version is not above the record's is stale or a duplicate.
    - A running event equal to the record writes nothing.

    `repair` is for the reconcile pass, which has already seen the catalog differ from the
    record (node missing, address moved, node of a stopped task present): it rewrites at a
    version equal to or above the record's, and checks a tombstoned task's node is gone. The
    ordering rules above still hold: never below the record's version, never over a tombstone
    that ECS reported.

    The one exception is a tombstone the pass inferred from DescribeTasks' MISSING
    (`StateRecord.inferred_from_missing`): a pass that lists the task and describes it RUNNING
    (the only caller passing `repair` with a registration) overwrites it, cas on its ModifyIndex,
    since MISSING proved wrong. A stop event that meets it writes the tombstone ECS reported,
    so a pass that still lists the task for a moment after its stop cannot bring it back.
    """
    # A tombstone inferred from MISSING is overwritten like no record at all, by a pass
    # registering a listed RUNNING task or by a stop event (not by a RUNNING event, which may
    # be late, nor by a pass's stop, which it already says).
    if record is None or (record.inferred_from_missing and repair == (desired is not None)):
        return Deregister() if desired is None else Register(desired)
    if record.status != RUNNING:
        if repair and desired is None:
            return VerifyAbsent(Skip("duplicate", f"already stopped at version {record.version}"))
        return _behind_tombstone(desired, version, record)
    if version < record.version:
        return Skip("stale", f"version {version} is older than {record.version}")
    if repair:
        return Deregister() if desired is None else Register(desired)
    return _over_running(desired, version, record)


def _behind_tombstone(desired: Registration | None, version: int, record: StateRecord) -> Action:
    if desired is None:
        return Skip("duplicate", f"already stopped at version {record.version}")
    return VerifyAbsent(
        Skip("stale", f"version {version} runs a task stopped at version {record.version}")
    )


def _over_running(desired: Registration | None, version: int, record: StateRecord) -> Action:
    if version == record.version:
        skip = Skip("duplicate", f"version {version} already applied")
        return skip if desired is None else VerifySidecar(record, skip)
    if desired is None:
        return Deregister()
    if desired.digest() == record.digest:
        return VerifySidecar(
            record, Skip("duplicate", f"version {version} changes nothing in the catalog")
        )
    return Register(desired)
