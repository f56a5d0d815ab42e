"""The ports a mesh service holds, and the rules they follow. Pure: no CDK.

In host mode (the default) the app and its Envoy share the host's network namespace, so every
port below is a port of the host: the app's (on 127.0.0.1), Envoy's public and expose
listeners (which the Consul servers and other hosts dial), its metrics listener and its
upstream listeners (on 127.0.0.1). Two host-mode services that can land on the same host must
not share any of them. In bridge mode (an explicit opt-in) each task has its own namespace and
ECS maps the published ports to dynamic host ports.

MeshService builds one `ServicePorts` per service; configuration (issue 15) can build and
check the same plan before any construct exists.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mesh_stack.init_program import load_identity
from mesh_stack.ports import ECS_RESERVED_HOST_PORTS, ENVOY_INBOUND_PORTS, fixed_host_port_problem

identity = load_identity()

# Envoy's user in the sidecar; the app runs as a non-root user too. Neither may bind a host
# port below 1024 (only root may), which is what host mode asks of them.
ENVOY_USER_ID = 1337
MIN_UNPRIVILEGED_PORT = 1024


# "a container instance might have up to 100 reserved ports at a time, including the default
# reserved ports" (ECS developer guide, task definition parameters, `hostPort`): the six of
# ports.ECS_RESERVED_HOST_PORTS, and each host-mode task's mapped ports while it runs.
MAX_RESERVED_HOST_PORTS = 100


def reserved_host_ports_problem(plans: Iterable[ServicePorts]) -> str | None:
    """Why the host-mode services of one cluster cannot all run on one host, or None."""
    host = [p for p in plans if p.network_mode == "host"]
    reserved = len(ECS_RESERVED_HOST_PORTS) + sum(len(p.envoy_ports()) for p in host)
    if reserved <= MAX_RESERVED_HOST_PORTS:
        return None
    return (
        f"{len(host)} host-mode services reserve {reserved} host ports on a host that runs "
        f"them all (ECS's six included), more than the {MAX_RESERVED_HOST_PORTS} ECS allows "
        "per container instance; ECS would not place the later tasks. Put some in bridge mode, "
        "or on other hosts with placement constraints in teams' own CDK apps"
    )


def health_check_path_problem(path: str) -> str | None:
    """Why Consul's check of `path` can never pass, or None. Consul routes the expose listener
    by an exact path match (hashicorp/consul agent/xds/listeners.go, `makeHTTPFilter`:
    `RouteMatch_Path{Path: opts.routePath}`), which Envoy compares "with the `:path` header
    once the query string is removed" (envoyproxy/data-plane-api
    envoy/config/route/v3/route_components.proto, `RouteMatch.path`): a path with `?` or `#`
    never matches, and the check stays critical."""
    if not path.startswith("/") or any(c.isspace() for c in path):
        return "must be an HTTP path starting with '/', without spaces"
    if "?" in path or "#" in path:
        return (
            "must be a path without '?' or '#': Consul routes it by an exact match of the "
            "path without its query string, so the check would never pass"
        )
    return None


# MeshService's default metrics listener port; in bridge mode each task has its own namespace.
BRIDGE_METRICS_PORT = 9102
LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - bridge mode: inside the app's own namespace
NETWORK_MODES = ("host", "bridge")
# Ports chosen for configured services (`services` key) that set none: slot s gives the proxy
# port 20000+s, the expose port 20500+s (the registrar's default, proxy + 500) and the metrics
# port 21000+s. Slots 0-249 only: proxy ports 20250-20499 are never chosen, so service teams'
# own CDK apps (whose ports this app cannot see) can take theirs there (docs/services.md).
AUTO_SLOTS = 250
AUTO_METRICS_BASE = 21000


def _port(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{name} must be a port in 1..65535, got {value!r}")
    return value


@dataclass(frozen=True)
class ServicePorts:
    """The validated port plan of one mesh service; build it with `plan`."""

    service: str
    network_mode: str
    app: int
    proxy: int
    expose: int | None  # Envoy's listener for the health path (host mode with a path)
    metrics: int | None
    upstreams: Mapping[str, int] = field(default_factory=dict)

    def named(self) -> dict[str, int]:
        """Every port the task listens on, by the MeshService argument that sets it."""
        named = {"port": self.app, "proxy_port": self.proxy}
        if self.expose is not None:
            named["expose_port"] = self.expose
        if self.metrics is not None:
            named["prometheus_port"] = self.metrics
        named.update((f"upstreams[{name}]", port) for name, port in self.upstreams.items())
        return named

    def envoy_ports(self) -> list[int]:
        """The port mappings of the Envoy container: its public, expose and metrics listeners.
        In host mode ECS reserves each on the host while the task runs."""
        return [p for p in (self.proxy, self.expose, self.metrics) if p is not None]

    def host_ports(self) -> dict[str, int]:
        """The ports this service holds on the host itself (none in bridge mode: dynamic)."""
        return self.named() if self.network_mode == "host" else {}

    def inbound(self) -> dict[str, int]:
        """The host-mode ports other hosts and the Consul servers dial (public, expose)."""
        if self.network_mode != "host":
            return {}
        inbound = {"proxy_port": self.proxy}
        if self.expose is not None:
            inbound["expose_port"] = self.expose
        return inbound


def plan(
    *,
    service: str,
    network_mode: str,
    port: int,
    proxy_port: int,
    expose_port: int | None,
    health_check_path: str | None,
    prometheus_port: int | None,
    upstreams: Mapping[str, int],
) -> ServicePorts:
    """The ports of one service, or ValueError naming the argument, its value and the rule."""
    if network_mode not in NETWORK_MODES:
        raise ValueError(
            f"network_mode must be 'host' or 'bridge' (ECS Anywhere has no awsvpc), "
            f"got {network_mode!r}"
        )
    host = network_mode == "host"
    if expose_port is not None and not (host and health_check_path):
        raise ValueError(
            f"expose_port {expose_port!r} is used only in host mode with a health_check_path "
            "(Envoy serves that path on it); remove it"
        )
    if host and health_check_path and expose_port is None:
        expose_port = proxy_port + identity.EXPOSE_PORT_OFFSET
    ports = ServicePorts(
        service=service,
        network_mode=network_mode,
        app=_port("port", port),
        proxy=_port("proxy_port", proxy_port),
        expose=None if expose_port is None else _port("expose_port", expose_port),
        metrics=None if prometheus_port is None else _port("prometheus_port", prometheus_port),
        upstreams={name: _port(f"upstreams[{name}]", local) for name, local in upstreams.items()},
    )
    _check_within_task(ports)
    if host:
        _check_host_rules(ports)
    return ports


def _check_within_task(ports: ServicePorts) -> None:
    """Ports sharing Envoy's network namespace (in host mode also the app's) must differ."""
    named = ports.named()
    if ports.network_mode == "bridge":
        named.pop("port")  # the app has its own network namespace in bridge mode
    seen: dict[int, str] = {}
    for name, value in named.items():
        if value in seen:
            raise ValueError(
                f"{name} {value} collides with {seen[value]} ({ports.network_mode} mode)"
            )
        seen[value] = name


def _check_host_rules(ports: ServicePorts) -> None:
    for name, value in ports.named().items():
        if value < MIN_UNPRIVILEGED_PORT:
            raise ValueError(
                f"{name} {value} is below {MIN_UNPRIVILEGED_PORT}: in host mode it is a port of "
                f"the host, bound by Envoy (uid {ENVOY_USER_ID}) or the non-root app, and only "
                f"root may bind ports below {MIN_UNPRIVILEGED_PORT}"
            )
        problem = fixed_host_port_problem(value)
        if problem:
            raise ValueError(f"{name} {problem}")
    low, high = ENVOY_INBOUND_PORTS
    for name, value in ports.inbound().items():
        if not low <= value <= high:
            raise ValueError(
                f"{name} {value} must lie in {low}..{high} in host mode: the Consul servers "
                "and other hosts may reach Envoy on that range only (ENVOY_INBOUND_PORTS)"
            )


def metrics_bind_address(
    network_mode: str, has_metrics: bool, bind_address: str | None
) -> str | None:
    """Where Envoy's metrics listener binds (None without one), or ValueError.

    Host mode defaults to the host's loopback: the endpoint names the service and its upstreams
    and counts their traffic, so a scraper on the host itself reads it and nothing else on the
    network does; "0.0.0.0" (every interface of the host) is the explicit opt-in for an
    off-host Prometheus. In bridge mode the listener binds every interface of the Envoy
    container, the only address a port mapping reaches.
    """
    if not has_metrics:
        if bind_address is not None:
            raise ValueError(
                "prometheus_bind_address applies only with a prometheus_port; remove it"
            )
        return None
    if bind_address is None:
        return LOOPBACK if network_mode == "host" else ALL_INTERFACES
    if bind_address not in (LOOPBACK, ALL_INTERFACES):
        raise ValueError(
            f"prometheus_bind_address must be {LOOPBACK!r} or {ALL_INTERFACES!r}, "
            f"got {bind_address!r}"
        )
    if network_mode == "bridge" and bind_address == LOOPBACK:
        raise ValueError(
            f"prometheus_bind_address {LOOPBACK!r} in bridge mode is the Envoy container's own "
            "loopback, which no scraper reaches; leave it unset"
        )
    return bind_address


def check_distinct(ports: ServicePorts, others: Iterable[ServicePorts]) -> None:
    """Host-mode services that can share a host must not share any host port."""
    mine = ports.host_ports()
    for other in others:
        theirs = {port: name for name, port in other.host_ports().items()}
        for name, port in mine.items():
            if port in theirs:
                raise ValueError(
                    f"{name} {port} of mesh service {ports.service!r} collides with "
                    f"{theirs[port]} of mesh service {other.service!r}: host-mode services "
                    "of one cluster share each host's ports; give one of them another port"
                )


@dataclass(frozen=True)
class PortRequest:
    """What `assign` needs of one service; None for a port it should choose.

    fixed: the service's own host ports that are not Envoy's (app, upstream listeners).
    """

    service: str
    host_mode: bool
    needs_expose: bool  # host mode with a health_check_path
    proxy: int | None = None
    expose: int | None = None
    metrics: int | None = None
    metrics_enabled: bool = True
    fixed: tuple[int, ...] = ()


@dataclass(frozen=True)
class Assigned:
    proxy: int
    expose: int | None
    metrics: int | None


def home_slot(service: str) -> int:
    """The slot a service's automatic ports start from: a stable hash of its name only."""
    return zlib.crc32(service.encode()) % AUTO_SLOTS


def _ports_at(request: PortRequest, slot: int) -> Assigned:
    proxy = request.proxy if request.proxy is not None else ENVOY_INBOUND_PORTS[0] + slot
    expose = request.expose
    if request.needs_expose and expose is None:
        expose = proxy + identity.EXPOSE_PORT_OFFSET
    metrics = request.metrics
    if request.metrics_enabled and metrics is None:
        metrics = AUTO_METRICS_BASE + slot
    return Assigned(
        proxy=proxy, expose=expose, metrics=metrics if request.metrics_enabled else None
    )


def assign(requests: Sequence[PortRequest]) -> dict[str, Assigned]:
    """Envoy's ports for each service: the ones it set, the others chosen deterministically.

    A host-mode service that leaves a port unset gets the ports of the first free slot from
    its home slot (a hash of its name), so its ports depend on its name, not on the order of
    the configuration, and adding or removing another service leaves them alone unless the two
    names hash to the same slot; the name that sorts first keeps the slot then. Free means:
    no service's app, upstream or explicitly set port, and no port chosen before. A bridge-mode
    service maps its ports dynamically: unset ports take MeshService's defaults.
    Raises ValueError when no slot is free.
    """
    taken: set[int] = set()
    for request in requests:
        if request.host_mode:
            taken.update(request.fixed)
            taken.update(p for p in (request.proxy, request.expose, request.metrics) if p)
    result: dict[str, Assigned] = {}
    for request in sorted(requests, key=lambda r: r.service):
        if not request.host_mode:
            proxy = request.proxy if request.proxy is not None else identity.DEFAULT_PROXY_PORT
            metrics = request.metrics if request.metrics is not None else BRIDGE_METRICS_PORT
            result[request.service] = Assigned(
                proxy=proxy,
                expose=request.expose,
                metrics=metrics if request.metrics_enabled else None,
            )
            continue
        explicit = {request.proxy, request.expose, request.metrics} - {None}
        home = home_slot(request.service)
        for offset in range(AUTO_SLOTS):
            ports = _ports_at(request, (home + offset) % AUTO_SLOTS)
            chosen = {ports.proxy, ports.expose, ports.metrics} - {None} - explicit
            if not chosen & taken:
                break
        else:
            raise ValueError(
                f"no free port slot is left for mesh service {request.service!r} "
                f"({AUTO_SLOTS} slots); set its proxy_port and prometheus_port"
            )
        taken.update(p for p in chosen if p is not None)
        result[request.service] = ports
    return result
