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

A container carrying the docker label `consul-mesh.enabled` is a mesh app: its traffic should
enter only through its Envoy sidecar's public listener, where mTLS and intentions apply (Consul
puts the RBAC filter on the public listener only, `agent/xds/listeners.go`). A published port of
such an app container lets any client that reaches the host bypass both, so it is flagged.

The sidecar's metrics listener binds where the init container's `ENVOY_PROMETHEUS_BIND` says
(mesh_stack/mesh_service.py): in host mode the host's 127.0.0.1 by default, or every interface
of the host when `prometheus_bind_address` opts into off-host scraping; the endpoint names the
service and its upstreams and counts their traffic, so the opt-in is flagged too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.review.load import Assembly, Json
from tools.review.model import Res
from tools.review.refs import flatten

TASK_DEFINITION = "AWS::ECS::TaskDefinition"
MESH_ENABLED = "consul-mesh.enabled"
PROXY_CONTAINER = "consul-mesh.proxy-container"
PROXY_PORT = "consul-mesh.proxy-port"
METRICS_BIND = "ENVOY_PROMETHEUS_BIND"  # `<address>:<port>` in the init container's environment
LOOPBACK = "127.0.0.1"
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
    role: str  # "app", "mesh listener", "Envoy metrics ...", "sidecar", "other"
    bypasses_mesh: bool  # an app port reachable without Envoy (no mTLS, no intentions)
    metrics_on_every_interface: bool = False  # host mode: scrapable from off the host

    @property
    def static(self) -> bool:
        return self.host_port.isdigit()


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


def _metrics_bind(containers: list[dict[str, Json]]) -> tuple[str, int] | None:
    """The sidecar metrics listener's (address, port), from the task's environment."""
    for container in containers:
        for variable in container.get("Environment") or []:
            if isinstance(variable, dict) and variable.get("Name") == METRICS_BIND:
                address, _, port = flatten(variable.get("Value")).rpartition(":")
                number = _int(port)
                return (address, number) if address and number else None
    return None


def _role(
    container: str,
    port: int | None,
    apps: dict[str, dict[str, str]],
    metrics: tuple[str, int] | None,
) -> tuple[str, bool]:
    """What listens on the port, and whether it is an app port that bypasses the mesh."""
    if container in apps:
        return "app", True
    for labels in apps.values():
        if labels.get(PROXY_CONTAINER) == container:
            if port is not None and labels.get(PROXY_PORT) == str(port):
                return "mesh listener (mTLS, intentions)", False
            if metrics is not None and port == metrics[1]:
                where = "127.0.0.1 only" if metrics[0] == LOOPBACK else f"{metrics[0]}"
                return f"Envoy metrics (/stats/prometheus) on {where}", False
            return "sidecar", False
    return "other", False


def task_networks(assembly: Assembly) -> list[TaskNetwork]:
    found: list[TaskNetwork] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(TASK_DEFINITION):
            props = resource.get("Properties") or {}
            given = props.get("NetworkMode")
            mode = flatten(given) if given is not None else DEFAULT_MODE
            containers = [c for c in props.get("ContainerDefinitions") or [] if isinstance(c, dict)]
            apps = {flatten(c.get("Name")): _labels(c) for c in containers if _is_mesh_app(c)}
            metrics = _metrics_bind(containers)
            res = stack.res(logical_id)
            ports: list[PublishedPort] = []
            for container in containers if mode in HOST_MODES else []:
                name = flatten(container.get("Name"))
                for mapping in container.get("PortMappings") or []:
                    port = _int(mapping.get("ContainerPort"))
                    role, bypasses = _role(name, port, apps, metrics)
                    ports.append(
                        PublishedPort(
                            task_definition=res,
                            network_mode=mode,
                            container=name,
                            container_port=port,
                            host_port=_host_port(mode, mapping),
                            protocol=flatten(mapping.get("Protocol") or "tcp"),
                            role=role,
                            bypasses_mesh=bypasses,
                            metrics_on_every_interface=(
                                mode == "host"
                                and role.startswith("Envoy metrics")
                                and metrics is not None
                                and metrics[0] != LOOPBACK
                            ),
                        )
                    )
            found.append(
                TaskNetwork(res, mode, given is not None, tuple(sorted(apps)), tuple(ports))
            )
    return found
