"""Names shared by the registrar and the Envoy bootstrap renderer.

This module is the single source of the catalog identity of an ECS task: the registrar
imports it, and the Envoy init container of every mesh task runs the same file, so the
`node.id` / `node_name` an Envoy presents are, by construction, the IDs the registrar writes.
Standard library only: it also runs inside the init container's plain Python image.
"""

from __future__ import annotations

import re

# Meta value that marks every catalog entry this project owns. Reconcile and drain delete
# only entries carrying it (together with the cluster ARN).
SOURCE = "ecs-anywhere-registrar"

# Every task gets its own synthetic catalog node. Reasons (see docs/design.md):
# - the Envoy init container knows its task ARN (task metadata endpoint) but not its
#   container instance, so the node name must derive from the task alone;
# - deleting the node removes the task's services and checks in one atomic operation;
# - no node is ever shared with a Consul agent, whose anti-entropy would delete our entries.
NODE_PREFIX = "ecs-task-"

# KV prefix of the registrar's state records (ordering, tombstones, host state); the layout
# under it, one prefix per cluster ARN, is kv_layout.py's.
STATE_PREFIX = "ecs-registrar/"

_TASK_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def task_id(task_arn: str) -> str:
    """The task ID: last segment of `arn:aws:ecs:region:acct:task/cluster/<id>`."""
    tid = task_arn.rsplit("/", 1)[-1]
    if not tid or ":" in tid or not _TASK_ID.match(tid):
        raise ValueError(f"not an ECS task ARN: {task_arn!r}")
    return tid


def cluster_name(cluster_arn: str) -> str:
    """The cluster name: last segment of `arn:aws:ecs:region:acct:cluster/<name>`."""
    name = cluster_arn.rsplit("/", 1)[-1]
    if not name or ":" in name:
        raise ValueError(f"not an ECS cluster ARN: {cluster_arn!r}")
    return name


def valid_service_name(name: str) -> bool:
    """Consul service names we accept: DNS labels (lowercase, digits, dashes, <= 63)."""
    return bool(_SERVICE_NAME.match(name))


def node_name(task_arn: str) -> str:
    """Catalog node that holds every entry of this task."""
    return NODE_PREFIX + task_id(task_arn)


def service_id(service: str, task_arn: str, port: int | None = None) -> str:
    """`<service>-<task-id>`, with `-<port>` when the task registers more than one port."""
    base = f"{service}-{task_id(task_arn)}"
    return base if port is None else f"{base}-{port}"


def proxy_id(svc_id: str) -> str:
    """ID of the connect-proxy sidecar registered for service instance `svc_id`."""
    return f"{svc_id}-sidecar-proxy"


# Docker labels a service owner sets on the application container of a task definition
# (MeshService sets them; docs/services.md documents them for hand-written task definitions).
LABEL_ENABLED = "consul-mesh.enabled"  # "true" opts the task in; anything else opts out
LABEL_SERVICE = "consul-mesh.service"  # Consul service name; default: the container name
LABEL_PORTS = "consul-mesh.ports"  # container ports to register, "8080,9090"; default: all
LABEL_TAGS = "consul-mesh.tags"  # "v1,canary"
LABEL_UPSTREAMS = "consul-mesh.upstreams"  # "backend:9001,db:9002" (service:local bind port)
LABEL_HEALTH_PATH = "consul-mesh.health-check-path"  # HTTP check path; default: TCP check
LABEL_PROXY_CONTAINER = "consul-mesh.proxy-container"  # Envoy container name; default "envoy"
LABEL_PROXY_PORT = "consul-mesh.proxy-port"  # Envoy public listener container port; 20000
# Host mode: Envoy listener that serves the health path (Consul expose path); proxy port + 500
LABEL_EXPOSE_PORT = "consul-mesh.expose-port"

DEFAULT_PROXY_CONTAINER = "envoy"
DEFAULT_PROXY_PORT = 20000
# Proxy ports 20000-20499 get expose ports 20500-20999: both inside the range the Consul servers
# may reach on-prem (mesh_stack/ports.py ENVOY_INBOUND_PORTS).
EXPOSE_PORT_OFFSET = 500
