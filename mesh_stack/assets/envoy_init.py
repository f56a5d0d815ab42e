"""Envoy init container: writes the sidecar's bootstrap when an ECS Anywhere task starts.

The proxy's `node.id` contains the task id, which exists only once the task runs, so it cannot
be rendered at synth time. This program asks the ECS task metadata endpoint for the task ARN,
derives the IDs with the registrar's own `identity` functions, renders the bootstrap with
`envoy.render_bootstrap` and writes it (mode 0600, owned by the Envoy user) to the task volume
that the Envoy container reads. It also hands the directory of Envoy's admin socket (a second
task volume) to the Envoy user with mode 0700, so no other user can reach the socket, not even
in the instant between Envoy's bind and its chmod to 0600. Envoy starts only after this
container exits 0.

It runs in a stock Python image as `python3 -c <identity.py + envoy.py + this file>` (built by
`mesh_stack/init_program.py`), which preloads the two modules under the names below; run from
the repository (tests), it loads the same files from their homes instead.

Environment (set by MeshService; the two secrets come from Secrets Manager via ECS `secrets`):
  ECS_CONTAINER_METADATA_URI_V4  set by the ECS agent
  CONSUL_MESH_SERVICE            Consul service name of the application
  CONSUL_MESH_PRIMARY_PORT       only when the app registers several ports: the first one,
                                 which the registrar appends to the service ID
  CONSUL_GRPC_HOST               Consul servers' load balancer (DNS name or IP)
  CONSUL_GRPC_PORT               default 8503 (TLS) / 8502 (plaintext)
  CONSUL_GRPC_PLAINTEXT          "true" opts into plaintext gRPC; anything else means TLS
  CONSUL_TLS_SERVER_NAME         name on the server certificates; default CONSUL_GRPC_HOST
  CONSUL_HTTP_TOKEN              secret: the service's ACL token
  CONSUL_CACERT_PEM              secret: the Consul CA certificate (PEM), required with TLS
  ENVOY_ADMIN_SOCKET             default /consul-mesh-admin/admin.sock: the admin API's unix
                                 socket; its directory must be a volume Envoy mounts writable
  ENVOY_PROMETHEUS_BIND          default 0.0.0.0:9102; empty disables the metrics listener
  ENVOY_BOOTSTRAP_PATH           default /consul-mesh/envoy-bootstrap.json
  ENVOY_UID / ENVOY_GID          owner of the written file (the Envoy image's user), optional
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

# Names under which the combined program preloads the shared modules (see init_program.py).
IDENTITY_MODULE = "consul_mesh_identity"
ENVOY_MODULE = "consul_mesh_envoy"

DEFAULT_BOOTSTRAP_PATH = "/consul-mesh/envoy-bootstrap.json"
METADATA_ATTEMPTS = 5
CA_HINT = "inject the Consul CA through ECS secrets"


class InitError(Exception):
    """A problem the operator must fix; its message is printed and the container exits 1."""


def load_modules() -> tuple[ModuleType, ModuleType]:
    """(identity, envoy): preloaded in the container, loaded from the repository otherwise."""
    identity, envoy = sys.modules.get(IDENTITY_MODULE), sys.modules.get(ENVOY_MODULE)
    if identity is not None and envoy is not None:
        return identity, envoy
    root = Path(__file__).resolve().parents[2]
    loaded = []
    for name, relative in (
        (IDENTITY_MODULE, "lambda/registrar/identity.py"),
        (ENVOY_MODULE, "mesh_stack/envoy.py"),
    ):
        spec = importlib.util.spec_from_file_location(name, root / relative)
        if spec is None or spec.loader is None:
            raise InitError(f"cannot load {relative} from {root}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        loaded.append(module)
    return loaded[0], loaded[1]


def fetch_task_metadata(base_uri: str, attempts: int = METADATA_ATTEMPTS) -> dict[str, Any]:
    """GET `<base>/task`; retried briefly because the agent may still be wiring the task."""
    url = base_uri.rstrip("/") + "/task"
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (agent URL)
                body = json.loads(response.read().decode("utf-8"))
            if not isinstance(body, dict):
                raise InitError(f"task metadata from {url} is not a JSON object")
            return body
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = exc
            time.sleep(min(2**attempt, 8) * 0.25)
    raise InitError(f"cannot read task metadata from {url} after {attempts} attempts: {last}")


def _required(env: Mapping[str, str], name: str, hint: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise InitError(f"environment variable {name} is missing or empty: {hint}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise InitError(f"environment variable {name} must be a port in 1..65535, got {raw!r}")
    return int(raw)


def build_bootstrap(
    env: Mapping[str, str], task: Mapping[str, Any], identity: ModuleType, envoy: ModuleType
) -> dict[str, Any]:
    """The bootstrap for this task: IDs from `identity`, everything else from `env`."""
    service = _required(env, "CONSUL_MESH_SERVICE", "the Consul service name of the app")
    if not identity.valid_service_name(service):
        raise InitError(
            f"CONSUL_MESH_SERVICE must be a DNS label (lowercase letters, digits, '-', at most "
            f"63 characters), got {service!r}"
        )
    task_arn = task.get("TaskARN")
    if not isinstance(task_arn, str):
        raise InitError(f"task metadata has no TaskARN string, got keys {sorted(task)}")
    primary_port = _int(env, "CONSUL_MESH_PRIMARY_PORT", 0) or None
    plaintext = env.get("CONSUL_GRPC_PLAINTEXT", "").strip().lower() == "true"
    prometheus = env.get("ENVOY_PROMETHEUS_BIND", envoy.DEFAULT_PROMETHEUS_BIND).strip()
    port = _int(env, "CONSUL_GRPC_PORT", 0)
    if env.get("ENVOY_ADMIN_PORT", "").strip():
        raise InitError(
            "ENVOY_ADMIN_PORT is no longer used: the admin API listens only on the unix socket "
            "ENVOY_ADMIN_SOCKET (a TCP admin port would expose the token); remove it"
        )
    try:
        bootstrap: dict[str, Any] = envoy.render_bootstrap(
            proxy_id=identity.proxy_id(identity.service_id(service, task_arn, primary_port)),
            service=service,
            node_name=identity.node_name(task_arn),
            token=_required(env, "CONSUL_HTTP_TOKEN", "inject the ACL token through ECS secrets"),
            xds_host=_required(env, "CONSUL_GRPC_HOST", "the Consul servers' load balancer"),
            xds_port=port or None,
            ca_pem=None if plaintext else _required(env, "CONSUL_CACERT_PEM", CA_HINT),
            tls_server_name=env.get("CONSUL_TLS_SERVER_NAME", "").strip() or None,
            plaintext=plaintext,
            admin_socket=env.get("ENVOY_ADMIN_SOCKET", "").strip() or envoy.DEFAULT_ADMIN_SOCKET,
            prometheus_bind=prometheus or None,
        )
    except ValueError as exc:
        raise InitError(str(exc)) from exc
    return bootstrap


def prepare_socket_dir(path: str, uid: int | None, gid: int | None) -> None:
    """Give the socket's directory to the Envoy user, mode 0700: only Envoy may enter it."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise InitError(
            f"admin socket directory {directory} does not exist (is the admin volume mounted?)"
        )
    if uid is not None or gid is not None:
        os.chown(directory, -1 if uid is None else uid, -1 if gid is None else gid)
    os.chmod(directory, 0o700)


def write_private(path: str, text: str, uid: int | None, gid: int | None) -> None:
    """Write `text` to `path` as 0600, owned by the Envoy user; atomic rename, never partial."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise InitError(f"bootstrap directory {directory} does not exist (is the volume mounted?)")
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if uid is not None or gid is not None:
                os.fchown(handle.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            os.fchmod(handle.fileno(), 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _owner(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise InitError(f"environment variable {name} must be a numeric id, got {raw!r}")
    return int(raw)


def run(
    env: Mapping[str, str],
    fetch: Callable[[str], dict[str, Any]] = fetch_task_metadata,
) -> dict[str, Any]:
    """Do the whole job; returns the summary it logs (never the token)."""
    identity, envoy = load_modules()
    base = _required(env, "ECS_CONTAINER_METADATA_URI_V4", "this must run as an ECS container")
    task = fetch(base)
    bootstrap = build_bootstrap(env, task, identity, envoy)
    path = env.get("ENVOY_BOOTSTRAP_PATH", "").strip() or DEFAULT_BOOTSTRAP_PATH
    uid, gid = _owner(env, "ENVOY_UID"), _owner(env, "ENVOY_GID")
    socket_path = bootstrap["admin"]["address"]["pipe"]["path"]
    if os.path.dirname(socket_path) == os.path.dirname(path):
        raise InitError(
            f"ENVOY_ADMIN_SOCKET {socket_path} must not share the bootstrap's directory: Envoy "
            "mounts that one read-only"
        )
    prepare_socket_dir(socket_path, uid, gid)
    write_private(path, json.dumps(bootstrap), uid, gid)
    return {
        "msg": "envoy bootstrap written",
        "path": path,
        "task-arn": task.get("TaskARN"),
        "cluster": task.get("Cluster"),
        "node-id": bootstrap["node"]["id"],
        "node-name": bootstrap["node"]["metadata"]["node_name"],
        "admin-socket": socket_path,
    }


def main() -> int:
    try:
        summary = run(os.environ)
    except InitError as exc:
        print(json.dumps({"level": "error", "msg": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps({"level": "info", **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
