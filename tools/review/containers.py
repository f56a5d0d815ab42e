"""Container ports published on the hosts, per task definition and network mode.

What the ECS developer guide says (awsdocs/amazon-ecs-developer-guide doc_source/
task_definition_parameters.md, task-networking.md, networking-networkmode-bridge.md):
- `NetworkMode` defaults to `bridge` on Linux when the task definition omits it;
- `host`: the container shares the host's network stack, so a container port is a port of the
  host (host and container port must match);
- `bridge`: a port mapping publishes the container port on the host, on `hostPort` when given
  (static) or, with `hostPort` 0 or omitted, on a port Docker picks from the host's ephemeral
  range (`/proc/sys/net/ipv4/ip_local_port_range`, 49153-65535 if unavailable);
- `awsvpc`: the task gets its own network interface (not the host's ports); `none`: no ports.

In host mode the port mapping only reserves the port on the host: who reaches a listener is
decided by the address the process binds, which the template states only where it tells the
process (this project's contract: envoy-init's `ENVOY_PROMETHEUS_BIND` for Envoy's metrics
listener, the app's `CONSUL_MESH_LISTEN_ADDR`/`_HOST`, mesh_stack/mesh_service.py). Each
host-mode port says where it binds: `loopback` (only processes of the host), `all interfaces`,
or `unknown` when the template does not say (then it counts as reachable). A bridge-mode
mapping is published by Docker on every host interface (docker run -p without an address).

A container carrying the docker label `consul-mesh.enabled` is a mesh app: its traffic should
enter only through its Envoy sidecar's public listener, where mTLS and intentions apply (Consul
puts the RBAC filter on the public listener only, `agent/xds/listeners.go`). A published port of
such an app container lets any client that reaches the host bypass both, so it is flagged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tools.review.load import Assembly, Json
from tools.review.model import Res
from tools.review.refs import flatten

TASK_DEFINITION = "AWS::ECS::TaskDefinition"
MESH_ENABLED = "consul-mesh.enabled"
PROXY_CONTAINER = "consul-mesh.proxy-container"
PROXY_PORT = "consul-mesh.proxy-port"
EXPOSE_PORT = "consul-mesh.expose-port"
APP_PORTS = "consul-mesh.ports"
PROMETHEUS_BIND = "ENVOY_PROMETHEUS_BIND"
# The addresses the project tells an app to listen on (mesh_stack/mesh_service.py LISTEN_ENV);
# any other variable named like a listen or bind address counts too (the demo's LISTEN_ADDR).
LISTEN_HINTS = ("LISTEN", "BIND")
LOOPBACK = "loopback"
ALL_INTERFACES = "all interfaces"
UNKNOWN_BIND = "unknown"
DEFAULT_MODE = "bridge"  # Linux default when NetworkMode is omitted
HOST_MODES = ("host", "bridge")


@dataclass(frozen=True)
class PublishedPort:
    task_definition: Res
    network_mode: str
    container: str
    container_port: int | None
    host_port: str  # "20000", or "dynamic (ephemeral range)"
    protocol: str
    role: str  # "app", "mesh listener", "sidecar", "other"
    bypasses_mesh: bool  # an app port reachable without Envoy (no mTLS, no intentions)
    bind: str = ALL_INTERFACES  # LOOPBACK, ALL_INTERFACES, an address, or UNKNOWN_BIND
    told: str = ""  # where the template tells the process to listen, `VAR=value`

    @property
    def static(self) -> bool:
        return self.host_port.isdigit()

    @property
    def reachable(self) -> bool:
        """Reachable by clients of the host (not only by its own processes)."""
        return self.bind != LOOPBACK


@dataclass(frozen=True)
class TaskNetwork:
    task_definition: Res
    network_mode: str
    mode_given: bool  # False when ECS's default applies
    mesh_apps: tuple[str, ...]  # containers labelled consul-mesh.enabled
    ports: tuple[PublishedPort, ...]


def _int(value: Json) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _labels(container: dict[str, Json]) -> dict[str, str]:
    labels = container.get("DockerLabels") or {}
    return {str(k): flatten(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _is_mesh_app(container: dict[str, Json]) -> bool:
    return _labels(container).get(MESH_ENABLED, "").lower() == "true"


def _host_port(mode: str, mapping: dict[str, Json]) -> str:
    if mode == "host":
        return str(_int(mapping.get("HostPort")) or _int(mapping.get("ContainerPort")) or "?")
    host = _int(mapping.get("HostPort"))
    if host:
        return str(host)
    if mapping.get("ContainerPortRange") is not None:
        return "dynamic range (ephemeral)"
    return "dynamic (ephemeral range)"


def _role(container: str, port: int | None, apps: dict[str, dict[str, str]]) -> tuple[str, bool]:
    """What listens on the port, and whether it is an app port that bypasses the mesh."""
    if container in apps:
        return "app", True
    for labels in apps.values():
        if labels.get(PROXY_CONTAINER) == container:
            if port is not None and labels.get(PROXY_PORT) == str(port):
                return "mesh listener (mTLS, intentions)", False
            if port is not None and labels.get(EXPOSE_PORT) == str(port):
                return "expose listener (health path, plain HTTP, no mTLS)", False
            return "sidecar", False
    return "other", False


def _environment(container: dict[str, Json]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in container.get("Environment") or []:
        if isinstance(item, dict) and isinstance(item.get("Name"), str):
            found[str(item["Name"])] = flatten(item.get("Value"))
    return found


def _address(value: str) -> tuple[str, int | None] | None:
    """`("127.0.0.1", 9102)` for `127.0.0.1:9102`, `("::", None)` for `::`; None if no IP."""
    text = value.strip()
    host, port = text, None
    if text.startswith("[") and "]" in text:  # [::1]:9102
        host, _, rest = text[1:].partition("]")
        port = _int(rest.lstrip(":")) if rest else None
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _int(rest)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def _bind_of(host: str) -> str:
    address = ipaddress.ip_address(host)
    if address.is_loopback:
        return LOOPBACK
    if address.is_unspecified:
        return ALL_INTERFACES
    return f"address {host}"


def _listen_told(env: dict[str, str], port: int | None) -> list[tuple[str, str]]:
    """(bind, `VAR=value`) for each listen/bind variable naming an IP (and this port, if any)."""
    told: list[tuple[str, str]] = []
    for name, value in sorted(env.items()):
        if not any(hint in name.upper() for hint in LISTEN_HINTS):
            continue
        parsed = _address(value)
        if parsed is None or (parsed[1] is not None and port is not None and parsed[1] != port):
            continue
        told.append((_bind_of(parsed[0]), f"{name}={value}"))
    return told


def _merge(told: list[tuple[str, str]]) -> tuple[str, str]:
    """The widest of the addresses a process is told, and where it is told."""
    if not told:
        return UNKNOWN_BIND, ""
    wide = [item for item in told if item[0] != LOOPBACK]
    chosen = wide or told
    return chosen[0][0], ", ".join(text for _, text in chosen)


def _host_bind(role: str, port: int | None, env_of_task: dict[str, str]) -> tuple[str, str]:
    """Where a host-mode Envoy port binds, from what the task tells Envoy."""
    if role.startswith("sidecar") and port is not None:
        parsed = _address(env_of_task.get(PROMETHEUS_BIND, ""))
        if parsed is not None and parsed[1] == port:
            return _bind_of(parsed[0]), f"{PROMETHEUS_BIND}={env_of_task[PROMETHEUS_BIND]}"
    if role.startswith(("mesh listener", "expose listener")):
        # Consul configures these listeners to be reached by other hosts (public listener,
        # expose paths for consul-esm's checks): they are meant to be open.
        return ALL_INTERFACES, ""
    return UNKNOWN_BIND, ""


def _app_ports(
    res: Res, containers: list[dict[str, Json]], apps: dict[str, dict[str, str]]
) -> list[PublishedPort]:
    """A host-mode mesh app's own ports: not mapped, reachable where the app binds them."""
    found: list[PublishedPort] = []
    for container in containers:
        name = flatten(container.get("Name"))
        if name not in apps:
            continue
        mapped = {_int(m.get("ContainerPort")) for m in container.get("PortMappings") or []}
        env = _environment(container)
        for text in apps[name].get(APP_PORTS, "").split(","):
            port = _int(text.strip())
            if port is None or port in mapped:
                continue
            bind, told = _merge(_listen_told(env, port))
            found.append(
                PublishedPort(
                    task_definition=res,
                    network_mode="host",
                    container=name,
                    container_port=port,
                    host_port=str(port),
                    protocol="tcp",
                    role="app (not port-mapped)",
                    bypasses_mesh=bind != LOOPBACK,
                    bind=bind,
                    told=told,
                )
            )
    return found


def task_networks(assembly: Assembly) -> list[TaskNetwork]:
    found: list[TaskNetwork] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(TASK_DEFINITION):
            props = resource.get("Properties") or {}
            given = props.get("NetworkMode")
            mode = flatten(given) if given is not None else DEFAULT_MODE
            containers = [c for c in props.get("ContainerDefinitions") or [] if isinstance(c, dict)]
            apps = {flatten(c.get("Name")): _labels(c) for c in containers if _is_mesh_app(c)}
            res = stack.res(logical_id)
            ports: list[PublishedPort] = []
            env_of_task: dict[str, str] = {}
            for container in containers:
                env_of_task.update(_environment(container))
            for container in containers if mode in HOST_MODES else []:
                name = flatten(container.get("Name"))
                for mapping in container.get("PortMappings") or []:
                    port = _int(mapping.get("ContainerPort"))
                    role, bypasses = _role(name, port, apps)
                    bind, told = ALL_INTERFACES, ""
                    if mode == "host":
                        if role == "app":
                            bind, told = _merge(_listen_told(_environment(container), port))
                        else:
                            bind, told = _host_bind(role, port, env_of_task)
                    ports.append(
                        PublishedPort(
                            task_definition=res,
                            network_mode=mode,
                            container=name,
                            container_port=port,
                            host_port=_host_port(mode, mapping),
                            protocol=flatten(mapping.get("Protocol") or "tcp"),
                            role=role,
                            bypasses_mesh=bypasses and bind != LOOPBACK,
                            bind=bind,
                            told=told,
                        )
                    )
            if mode == "host":
                ports += _app_ports(res, containers, apps)
            found.append(
                TaskNetwork(res, mode, given is not None, tuple(sorted(apps)), tuple(ports))
            )
    return found
