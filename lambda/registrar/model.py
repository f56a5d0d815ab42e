"""Typed, validated views of everything the registrar reads and writes.

Inputs (the EventBridge "ECS Task State Change" event, a task definition, a host address, the
per-task state record in Consul KV) are parsed here, once, into frozen dataclasses; the rest of
the code never touches raw JSON. Parsing errors name the field and the value they got, so the
log line of a message that ends in the DLQ says what was wrong with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import identity

TASK_STATE_CHANGE = "ECS Task State Change"
ECS_SOURCE = "aws.ecs"
EXTERNAL = "EXTERNAL"

# Network modes of ECS Anywhere Linux tasks (awsvpc is not supported on ECS Anywhere).
SUPPORTED_NETWORK_MODES = ("bridge", "host")
# A task definition without networkMode uses bridge on Linux (ECS default for EXTERNAL).
DEFAULT_NETWORK_MODE = "bridge"

# Consul's limit is 128 ops per txn (64 before 1.14); a registration takes 3 + 2 per port.
MAX_PORTS = 16


class MalformedEvent(ValueError):
    """The message is not a usable ECS Task State Change event.

    Redelivery cannot fix it: the handler reports it failed so that SQS moves it to the DLQ
    after maxReceiveCount, where an operator can read it.
    """


class InvalidTaskDefinition(ValueError):
    """The task definition opts in but its labels or ports cannot form a registration."""


# --------------------------------------------------------------------------------------------
# Field readers: every error names the JSON path and the value it found.


def _get(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj or obj[key] is None:
        raise MalformedEvent(f"{path}.{key} is missing")
    return obj[key]


def _str(obj: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str | None:
    if not required and obj.get(key) is None:
        return None
    value = _get(obj, key, path)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{path}.{key} must be a non-empty string, got {value!r}")
    return value


def _req_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = _str(obj, key, path)
    assert value is not None  # required=True never returns None
    return value


def _int(obj: Mapping[str, Any], key: str, path: str, lo: int, hi: int) -> int:
    value = _get(obj, key, path)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MalformedEvent(f"{path}.{key} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{path} must be a JSON object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedEvent(f"{path}.{key} must be a list, got {type(value).__name__}")
    return value


def parse_time(value: Any, path: str) -> datetime:
    """An ISO 8601 string (EventBridge's `time`) -> aware datetime (naive = UTC).

    Epoch numbers are refused: EventBridge never sends them, so one means the body is not
    an EventBridge event (DescribeTasks callers pass datetimes to task_event_from_detail).
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise MalformedEvent(f"{path} must be an ISO 8601 timestamp, got {value!r}")


# --------------------------------------------------------------------------------------------
# The event


@dataclass(frozen=True)
class NetworkBinding:
    """One published port of a container: `hostPort` is what Consul's Port must be."""

    container_port: int
    host_port: int
    protocol: str
    bind_ip: str | None

    @property
    def ipv6(self) -> bool:
        return self.bind_ip is not None and ":" in self.bind_ip


@dataclass(frozen=True)
class ContainerState:
    """A container of the event. Its `networkBindings` are kept as sent and validated only when
    the registrar reads them, so that a container it never reads (a log router, a container
    publishing a port range) cannot make the whole event malformed."""

    name: str
    last_status: str | None
    raw_bindings: Any
    path: str

    @property
    def network_bindings(self) -> tuple[NetworkBinding, ...]:
        """The single-port bindings, validated (MalformedEvent names the field).

        NetworkBinding (ECS API reference) makes `containerPort` and `hostPort` optional: a
        binding of a port range carries `containerPortRange`/`hostPortRange` instead
        (amazon-ecs-agent PR #3505 shows `{"containerPortRange": "8080-8085", "hostPortRange":
        "32780-32785"}`). Such a binding gives no single host port to advertise: skipped.
        """
        if self.raw_bindings is None:
            return ()
        if not isinstance(self.raw_bindings, list):
            raise MalformedEvent(
                f"{self.path}.networkBindings must be a list, "
                f"got {type(self.raw_bindings).__name__}"
            )
        found = []
        for i, raw in enumerate(self.raw_bindings):
            binding = _binding(raw, f"{self.path}.networkBindings[{i}]")
            if binding is not None:
                found.append(binding)
        return tuple(found)

    def host_port(self, container_port: int, *, ipv6: bool = False) -> int | None:
        """Host port bound to a TCP container port, from a binding of the host's address family.

        Docker publishes a dynamic port on 0.0.0.0 and on :: separately, and the two can differ
        (moby/moby#42442; ECS hosts logged `{8080 50195 0.0.0.0} {8080 50191 ::}` in
        moby/moby#42375): the port Consul advertises must be the one bound on the family of
        the address it advertises. A binding of the other family is the fallback.
        """
        tcp = [
            b
            for b in self.network_bindings
            if b.container_port == container_port and b.protocol == "tcp"
        ]
        same_family = [b for b in tcp if b.ipv6 == ipv6]
        chosen = same_family or tcp
        return chosen[0].host_port if chosen else None


@dataclass(frozen=True)
class TaskEvent:
    """The fields of an ECS Task State Change the registrar acts on."""

    event_id: str
    event_time: datetime
    task_arn: str
    cluster_arn: str
    container_instance_arn: str | None
    task_definition_arn: str
    launch_type: str
    desired_status: str
    last_status: str
    version: int
    group: str | None
    containers: tuple[ContainerState, ...]
    stopped_reason: str | None

    @property
    def task_id(self) -> str:
        return identity.task_id(self.task_arn)

    def container(self, name: str) -> ContainerState | None:
        return next((c for c in self.containers if c.name == name), None)


def _binding(raw: Any, path: str) -> NetworkBinding | None:
    obj = _obj(raw, path)
    if obj.get("containerPort") is None or obj.get("hostPort") is None:
        return None  # a port range, or no single port to advertise
    protocol = _str(obj, "protocol", path, required=False) or "tcp"
    if protocol not in ("tcp", "udp"):
        raise MalformedEvent(f"{path}.protocol must be 'tcp' or 'udp', got {protocol!r}")
    return NetworkBinding(
        container_port=_int(obj, "containerPort", path, 1, 65535),
        host_port=_int(obj, "hostPort", path, 1, 65535),
        protocol=protocol,
        bind_ip=_str(obj, "bindIP", path, required=False),
    )


def _container(raw: Any, path: str) -> ContainerState | None:
    """A container the registrar can look up by name; None for one it never could."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        return None
    status = raw.get("lastStatus")
    return ContainerState(
        name=raw["name"],
        last_status=status if isinstance(status, str) else None,
        raw_bindings=raw.get("networkBindings"),
        path=path,
    )


def task_event_from_detail(
    detail: Mapping[str, Any], *, event_id: str, event_time: datetime, path: str = "detail"
) -> TaskEvent:
    """Build a TaskEvent from an event `detail` (or a DescribeTasks task, for reconcile)."""
    task_arn = _req_str(detail, "taskArn", path)
    cluster_arn = _req_str(detail, "clusterArn", path)
    try:
        identity.task_id(task_arn)
    except ValueError as err:
        raise MalformedEvent(f"{path}.taskArn: {err}") from None
    try:
        identity.cluster_name(cluster_arn)
    except ValueError as err:
        raise MalformedEvent(f"{path}.clusterArn: {err}") from None
    containers = _list(detail, "containers", path)
    return TaskEvent(
        event_id=event_id,
        event_time=event_time,
        task_arn=task_arn,
        cluster_arn=cluster_arn,
        container_instance_arn=_str(detail, "containerInstanceArn", path, required=False),
        task_definition_arn=_req_str(detail, "taskDefinitionArn", path),
        launch_type=_req_str(detail, "launchType", path),
        desired_status=_req_str(detail, "desiredStatus", path),
        last_status=_req_str(detail, "lastStatus", path),
        version=_int(detail, "version", path, 0, 2**63 - 1),
        group=_str(detail, "group", path, required=False),
        containers=tuple(
            state
            for i, c in enumerate(containers)
            if (state := _container(c, f"{path}.containers[{i}]")) is not None
        ),
        stopped_reason=_str(detail, "stoppedReason", path, required=False),
    )


def parse_event(body: str | bytes) -> TaskEvent:
    """An SQS message body (an EventBridge event, JSON) -> TaskEvent, or MalformedEvent."""
    try:
        raw = json.loads(body)
    except (ValueError, TypeError) as err:
        raise MalformedEvent(f"body is not JSON: {err}") from None
    envelope = _obj(raw, "event")
    source = envelope.get("source")
    if source != ECS_SOURCE:
        raise MalformedEvent(f"event.source must be {ECS_SOURCE!r}, got {source!r}")
    detail_type = envelope.get("detail-type")
    if detail_type != TASK_STATE_CHANGE:
        raise MalformedEvent(
            f"event.detail-type must be {TASK_STATE_CHANGE!r}, got {detail_type!r}"
        )
    event_id = _req_str(envelope, "id", "event")
    event_time = parse_time(_get(envelope, "time", "event"), "event.time")
    detail = _obj(_get(envelope, "detail", "event"), "event.detail")
    return task_event_from_detail(detail, event_id=event_id, event_time=event_time)


def task_arn_hint(body: str | bytes) -> str | None:
    """Best-effort task ARN of a body that failed to parse, for the log line."""
    try:
        arn = json.loads(body)["detail"]["taskArn"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return arn if isinstance(arn, str) else None


# --------------------------------------------------------------------------------------------
# The task definition (DescribeTaskDefinition; immutable per ARN)


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int | None  # None/0 = dynamic (bridge)
    protocol: str


@dataclass(frozen=True)
class ContainerDefinition:
    name: str
    labels: Mapping[str, str]
    port_mappings: tuple[PortMapping, ...]

    @property
    def opted_in(self) -> bool:
        return self.labels.get(identity.LABEL_ENABLED, "").strip().lower() == "true"


@dataclass(frozen=True)
class TaskDefinition:
    arn: str
    network_mode: str
    containers: tuple[ContainerDefinition, ...]

    def container(self, name: str) -> ContainerDefinition | None:
        return next((c for c in self.containers if c.name == name), None)

    @property
    def opted_in(self) -> tuple[ContainerDefinition, ...]:
        return tuple(c for c in self.containers if c.opted_in)


def task_definition_from_api(td: Mapping[str, Any]) -> TaskDefinition:
    """DescribeTaskDefinition's `taskDefinition` -> TaskDefinition."""
    containers = []
    for raw in td.get("containerDefinitions") or []:
        labels = raw.get("dockerLabels") or {}
        mappings = tuple(
            PortMapping(
                container_port=int(pm["containerPort"]),
                host_port=int(pm["hostPort"]) if pm.get("hostPort") else None,
                protocol=str(pm.get("protocol") or "tcp"),
            )
            for pm in raw.get("portMappings") or []
            if pm.get("containerPort")
        )
        containers.append(
            ContainerDefinition(
                name=str(raw["name"]),
                labels={str(k): str(v) for k, v in labels.items()},
                port_mappings=mappings,
            )
        )
    return TaskDefinition(
        arn=str(td["taskDefinitionArn"]),
        network_mode=str(td.get("networkMode") or DEFAULT_NETWORK_MODE),
        containers=tuple(containers),
    )


# --------------------------------------------------------------------------------------------
# Labels (the service owner's interface; docs/architecture.md "Docker labels")


@dataclass(frozen=True)
class Upstream:
    destination_name: str
    local_bind_port: int


@dataclass(frozen=True)
class MeshLabels:
    """The `consul-mesh.*` docker labels of the application container, validated."""

    container: str
    service: str
    ports: tuple[int, ...] | None  # None: every TCP port the container maps
    tags: tuple[str, ...]
    upstreams: tuple[Upstream, ...]
    health_check_path: str | None
    proxy_container: str
    proxy_port: int
    expose_port: int | None  # None: the label is absent (default proxy_port + offset)


def _label_port(label: str, raw: str) -> int:
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidTaskDefinition(f"label {label}: {raw!r} is not a port in 1..65535")
    return int(text)


def _csv(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_labels(container: ContainerDefinition) -> MeshLabels:
    """Validate the labels of an opted-in container; errors name the label and its value."""
    labels = container.labels
    service = labels.get(identity.LABEL_SERVICE, "").strip() or container.name
    if not identity.valid_service_name(service):
        source = identity.LABEL_SERVICE if identity.LABEL_SERVICE in labels else "container name"
        raise InvalidTaskDefinition(
            f"service name {service!r} (from {source}) must be a DNS label: lowercase letters, "
            f"digits and '-', at most 63 characters; set {identity.LABEL_SERVICE}"
        )
    ports: tuple[int, ...] | None = None
    if identity.LABEL_PORTS in labels:
        items = _csv(labels[identity.LABEL_PORTS])
        if not items:
            raise InvalidTaskDefinition(f"label {identity.LABEL_PORTS} is empty")
        ports = tuple(_label_port(identity.LABEL_PORTS, p) for p in items)
        if len(set(ports)) != len(ports):
            raise InvalidTaskDefinition(
                f"label {identity.LABEL_PORTS}: {labels[identity.LABEL_PORTS]!r} repeats a port"
            )
    tags = tuple(dict.fromkeys(_csv(labels.get(identity.LABEL_TAGS, ""))))
    upstreams = []
    for item in _csv(labels.get(identity.LABEL_UPSTREAMS, "")):
        name, sep, port = item.partition(":")
        if not sep or not identity.valid_service_name(name.strip()):
            raise InvalidTaskDefinition(
                f"label {identity.LABEL_UPSTREAMS}: {item!r} is not 'service:localport' "
                "with a DNS-label service name"
            )
        upstreams.append(Upstream(name.strip(), _label_port(identity.LABEL_UPSTREAMS, port)))
    bind_ports = [u.local_bind_port for u in upstreams]
    if len(set(bind_ports)) != len(bind_ports):
        raise InvalidTaskDefinition(
            f"label {identity.LABEL_UPSTREAMS}: local ports must be unique, got {bind_ports}"
        )
    path = labels.get(identity.LABEL_HEALTH_PATH, "").strip() or None
    if path is not None and (not path.startswith("/") or any(c.isspace() for c in path)):
        raise InvalidTaskDefinition(
            f"label {identity.LABEL_HEALTH_PATH}: {path!r} must be a URL path starting with '/'"
        )
    proxy_port_raw = labels.get(identity.LABEL_PROXY_PORT, "").strip()
    expose_port_raw = labels.get(identity.LABEL_EXPOSE_PORT, "").strip()
    return MeshLabels(
        container=container.name,
        service=service,
        ports=ports,
        tags=tags,
        upstreams=tuple(upstreams),
        health_check_path=path,
        proxy_container=labels.get(identity.LABEL_PROXY_CONTAINER, "").strip()
        or identity.DEFAULT_PROXY_CONTAINER,
        proxy_port=_label_port(identity.LABEL_PROXY_PORT, proxy_port_raw)
        if proxy_port_raw
        else identity.DEFAULT_PROXY_PORT,
        expose_port=_label_port(identity.LABEL_EXPOSE_PORT, expose_port_raw)
        if expose_port_raw
        else None,
    )


# --------------------------------------------------------------------------------------------
# The host


@dataclass(frozen=True)
class Host:
    """Where a container instance's published ports are reachable."""

    address: str
    instance_id: str  # SSM managed instance id (mi-...) or EC2 instance id
    source: Literal["ssm", "attribute"]
    doubt: str | None = None  # why the address may not be the host's (aws.address_doubt)


def valid_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# What lands in Consul (DESIGN.md section 3)


@dataclass(frozen=True)
class HealthCheck:
    """A catalog check carrying its Definition so that consul-esm runs it."""

    check_id: str
    name: str
    service_id: str
    tcp: str | None
    http: str | None
    interval: str
    timeout: str


@dataclass(frozen=True)
class ServiceInstance:
    id: str
    name: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    check: HealthCheck


@dataclass(frozen=True)
class ProxyUpstream:
    destination_name: str
    local_bind_port: int
    local_bind_address: str


@dataclass(frozen=True)
class ExposePath:
    """An HTTP path of the app that Envoy serves on a listener of its own, outside mTLS.

    Consul's `Proxy.Expose.Paths[]` (api/agent.go ExposePath): Envoy listens on
    `listener_port` and forwards exactly `path` to the local app on `local_path_port`.
    """

    listener_port: int
    path: str
    local_path_port: int
    protocol: str


@dataclass(frozen=True)
class SidecarProxy:
    """The connect-proxy of the task's primary service instance (one Envoy per task)."""

    id: str
    name: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    destination_name: str
    destination_id: str
    local_service_address: str
    local_service_port: int
    bind_port: int
    upstreams: tuple[ProxyUpstream, ...]
    checks: tuple[HealthCheck, ...]
    expose: tuple[ExposePath, ...] = ()  # added after the first release: see _LATER_FIELDS


@dataclass(frozen=True)
class Registration:
    """Everything one running task puts in the catalog, on its own node."""

    task_arn: str
    node: str
    address: str
    node_meta: Mapping[str, str]
    services: tuple[ServiceInstance, ...]
    sidecar: SidecarProxy

    def digest(self) -> str:
        """Stable hash: equal digests mean nothing to write.

        Stored in every running task's state record, so its canonical form must never change
        (tests/lambda/test_registrar_digest.py pins it): the JSON of `dataclasses.asdict`, with
        sorted keys and compact separators, built here without asdict's recursive deep copy
        (3x faster; it was a third of a 10,000-task reconcile pass). A field added after the
        first release (`_LATER_FIELDS`) is left out while it is empty, so a registration that
        does not use it keeps the digest its record holds.
        """
        return hashlib.sha256(_CANONICAL.encode(self).encode()).hexdigest()


# (class, field) pairs added after digests were first stored: omitted from the canonical JSON
# while empty (an empty tuple), so records written before they existed still match.
_LATER_FIELDS = frozenset({("SidecarProxy", "expose")})
_FIELD_NAMES: dict[type, tuple[tuple[str, bool], ...]] = {}


def _as_json_object(value: object) -> dict[str, Any]:
    """`default` hook of the canonical encoder: a dataclass as its fields, a Mapping as a dict."""
    cls = type(value)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if isinstance(value, Mapping):
            return dict(value)
        if not is_dataclass(value):
            raise TypeError(f"Object of type {cls.__name__} is not JSON serializable")
        names = _FIELD_NAMES.setdefault(
            cls,
            tuple((f.name, (cls.__name__, f.name) in _LATER_FIELDS) for f in fields(value)),
        )
    return {
        name: getattr(value, name) for name, later in names if not later or getattr(value, name)
    }


_CANONICAL = json.JSONEncoder(default=_as_json_object, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# The per-task state record in Consul KV (docs/architecture.md "Ordering, duplicates ...")

RUNNING: Literal["running"] = "running"
STOPPED: Literal["stopped"] = "stopped"
# A tombstone the reconcile pass wrote because DescribeTasks answered MISSING (reconcile.py
# `_may_be_forgotten`): the one tombstone that was inferred, not reported by ECS, so a later pass
# that sees the task listed and described RUNNING may overwrite it (decide.decide).
MISSING_REASON = "missing"


@dataclass(frozen=True)
class StateRecord:
    """The last applied event of a task. `stopped` is a tombstone: nothing resurrects it.

    `sidecar` holds the catalog/register body of the sidecar written for this version, so that
    whoever finds the catalog behind the record (a concurrent writer, a retry) can repair it.
    `reason` tags a tombstone that was inferred rather than reported (MISSING_REASON); absent
    from the stored JSON when None, so every other record encodes as before.
    """

    version: int
    status: Literal["running", "stopped"]
    digest: str | None = None
    sidecar: Mapping[str, Any] | None = None
    event_time: str | None = None
    reason: str | None = None

    @property
    def inferred_from_missing(self) -> bool:
        return self.status == STOPPED and self.reason == MISSING_REASON

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "version": self.version,
            "status": self.status,
            "digest": self.digest,
            "sidecar": self.sidecar,
            "event_time": self.event_time,
        }
        if self.reason is not None:
            doc["reason"] = self.reason
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> StateRecord:
        """Raises ValueError naming what is wrong with a stored record."""
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError(f"state record must be a JSON object, got {type(doc).__name__}")
        version = doc.get("version")
        status = doc.get("status")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"state record version must be an integer, got {version!r}")
        if status not in (RUNNING, STOPPED):
            raise ValueError(f"state record status must be running|stopped, got {status!r}")
        sidecar = doc.get("sidecar")
        digest = doc.get("digest")
        event_time = doc.get("event_time")
        reason = doc.get("reason")
        return cls(
            version=version,
            status=RUNNING if status == RUNNING else STOPPED,
            digest=digest if isinstance(digest, str) else None,
            sidecar=sidecar if isinstance(sidecar, dict) else None,
            event_time=event_time if isinstance(event_time, str) else None,
            reason=reason if isinstance(reason, str) else None,
        )


@dataclass(frozen=True)
class StoredRecord:
    """A state record as read from KV: `record` is None when the stored value is unreadable."""

    record: StateRecord | None
    modify_index: int
