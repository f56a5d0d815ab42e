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


def _role(container: str, port: int | None, apps: dict[str, dict[str, str]]) -> tuple[str, bool]:
    """What listens on the port, and whether it is an app port that bypasses the mesh."""
    if container in apps:
        return "app", True
    for labels in apps.values():
        if labels.get(PROXY_CONTAINER) == container:
            if port is not None and labels.get(PROXY_PORT) == str(port):
                return "mesh listener (mTLS, intentions)", False
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
            res = stack.res(logical_id)
            ports: list[PublishedPort] = []
            for container in containers if mode in HOST_MODES else []:
                name = flatten(container.get("Name"))
                for mapping in container.get("PortMappings") or []:
                    port = _int(mapping.get("ContainerPort"))
                    role, bypasses = _role(name, port, apps)
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
                        )
                    )
            found.append(
                TaskNetwork(res, mode, given is not None, tuple(sorted(apps)), tuple(ports))
            )
    return found
