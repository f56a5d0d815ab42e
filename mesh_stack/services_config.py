"""The `services`, `external_services` and `team_services` configuration keys. Pure: no CDK.

A platform team declares each mesh service as data (cdk.json or `-c services='{...}'`) instead
of code; docs/services.md is the user's guide. This module turns the JSON into validated,
frozen specs and checks them across services; `mesh_stack/configured_services.py` builds them.
Every error is a `ConfigError` of one line naming the service, the field, the value and what
is allowed. Values that look like secrets are never echoed back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh_stack import image_ref, service_ports
from mesh_stack.config_errors import ConfigError, fail
from mesh_stack.container_user import may_be_root
from mesh_stack.init_program import load_identity
from mesh_stack.json_values import json_object
from mesh_stack.service_environment import REDACTED, SecretRef, parse_environment, parse_secrets
from mesh_stack.suggest import closest

identity = load_identity()

KEY = "services"
EXTERNAL_KEY = "external_services"
TEAM_KEY = "team_services"
NETWORK_MODES = ("host", "bridge")
# ECS container `cpu` (CPU shares; 1024 = one vCPU): "The minimum valid CPU share value that the
# Linux kernel allows is 2" (ECS developer guide, task definition parameters, container `cpu`);
# the kernel's maximum is 262144 (MAX_SHARES = 1 << 18, kernel/sched/sched.h). The 10240 of the
# same guide is the *task-level* `cpu` of tasks on EC2 or external instances, which MeshService
# does not set. `memory` is the hard limit in MiB: Docker 20.10 reserves 6 MiB per container
# (same guide, `memory`).
CPU_RANGE = (2, 262_144)
MEMORY_RANGE = (6, 1_048_576)
COUNT_RANGE = (0, 1000)

_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,62}$")


def pascal(name: str) -> str:
    """`frontend-api` -> `FrontendApi`: construct IDs (and output names) from Consul names."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name))


@dataclass(frozen=True)
class ServiceSpec:
    """One mesh service as configured; ports left None are chosen by `service_ports.assign`."""

    name: str
    image: str
    port: int
    app_user: str | None = None
    upstreams: Mapping[str, int] = field(default_factory=dict)
    health_check_path: str | None = None
    allow_from: tuple[str, ...] = ()
    cpu: int = 256
    memory: int = 512
    # Without `count`, an entry is a DAEMON service (one task on every registered host, and
    # stable at zero tasks before any host has joined), so it deploys on a fresh account; see
    # `_schedule`. `count: N` is a REPLICA service that waits for N tasks to be placed.
    count: int = 0
    daemon: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[SecretRef, ...] = ()
    network_mode: str = "host"
    insecure_published_app_port: bool = False
    tags: tuple[str, ...] = ()
    proxy_port: int | None = None
    expose_port: int | None = None
    prometheus_port: int | None = None
    metrics: bool = True  # False: `"prometheus_port": null`, no metrics listener
    prometheus_bind_address: str | None = None  # None: MeshService's default (host: loopback)
    tcp_check_reason: str | None = None  # host mode without a health_check_path: why that is fine

    @property
    def host_mode(self) -> bool:
        return self.network_mode == "host"


@dataclass(frozen=True)
class TeamService:
    """A service a team deploys from its own CDK app; the platform owns its token and intentions."""

    name: str
    allow_from: tuple[str, ...] = ()


# --------------------------------------------------------------------------------- helpers


def _string_list(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        except json.JSONDecodeError as err:
            raise fail(key, value, f"is not a JSON list ({err.msg})") from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise fail(key, value, "must be a list of strings")
    items = tuple(v.strip() for v in value if v.strip())
    duplicates = sorted({v for v in items if items.count(v) > 1})
    if duplicates:
        raise fail(key, list(items), f"lists {duplicates} more than once")
    return items


def _int(key: str, value: object, low: int, high: int, what: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(key, value, f"must be {what} from {low} to {high}")
    return value


def _port(key: str, value: object) -> int:
    return _int(key, value, 1, 65535, "a port")


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise fail(key, value, "must be true or false")
    return value


def _str(key: str, value: object, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise fail(key, value, allowed)
    return value


# Names a mesh service may not take, and why. The app container takes the service's name, and
# container names are the keys of `dependsOn` and `links` (ECS developer guide, task definition
# parameters, `name`); the registrar finds the sidecar by its container name `envoy`
# (lambda/registrar/identity.py DEFAULT_PROXY_CONTAINER). The Consul servers register the
# service `consul` themselves (hashicorp/consul structs.ConsulServiceName). ConsulObjects names
# the intentions of the wildcard `*` `WildcardIntentions`, which `wildcard` would also read as.
RESERVED_NAMES = {
    str(identity.DEFAULT_PROXY_CONTAINER): "the Envoy sidecar's container name",
    "envoy-init": "the init container's name",
    "consul": "the Consul servers' own service",
    "wildcard": "the CDK ID of the '*' intentions",
}


def reserved_name_problem(name: str) -> str | None:
    """Why `name` cannot be a mesh service's name, or None."""
    if name in RESERVED_NAMES:
        return f"is reserved ({RESERVED_NAMES[name]}); choose another name"
    return None


def service_name(key: str, name: object) -> str:
    if not isinstance(name, str) or not identity.valid_service_name(name):
        raise fail(
            key, name, "must be a DNS label (lowercase letters, digits, '-', at most 63 characters)"
        )
    problem = reserved_name_problem(name)
    if problem is not None:
        raise fail(key, name, problem)
    return name


def _names(key: str, value: object) -> tuple[str, ...]:
    names = _string_list(key, value)
    for name in names:
        if name == "*":
            raise fail(
                key, name, "must name callers; a wildcard would undo the mesh's default deny"
            )
        service_name(key, name)
    return names


# ------------------------------------------------------------------------ per-field parsers


def _image(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise fail(key, value, "must be an image reference string")
    try:
        image_ref.parse(value)
    except ValueError as err:
        raise fail(key, value, str(err)) from None
    return value


def _app_user(key: str, value: object) -> str:
    user = _str(key, value, _USER, "must be a user like '1000' or '1000:1000' (uid[:gid] or names)")
    if may_be_root(user):
        raise fail(
            key,
            value,
            "must not be root (uid or gid 0 however written): in host mode the app shares the "
            "host's network",
        )
    return user


def _upstreams(key: str, value: object) -> dict[str, int]:
    upstreams = json_object(key, value)
    return {
        service_name(f"{key}.{name}", name): _port(f"{key}.{name}", port)
        for name, port in upstreams.items()
    }


def _health_check_path(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise fail(key, value, "must be an HTTP path starting with '/', without spaces")
    problem = service_ports.health_check_path_problem(value)
    if problem is not None:
        raise fail(key, value, problem)
    return value


def _tags(key: str, value: object) -> tuple[str, ...]:
    tags = _string_list(key, value)
    for tag in tags:
        _str(key, tag, _TAG, "Consul tags are 1-63 letters, digits or '_.:=-' (no commas)")
    return tags


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(key, value, "must be a non-empty string")
    return value.strip()


def _network_mode(key: str, value: object) -> str:
    if value not in NETWORK_MODES:
        raise fail(
            key, value, "must be host (the secure default) or bridge (ECS Anywhere has no awsvpc)"
        )
    return str(value)


# field -> parser(key, value) -> value for ServiceSpec
_FIELDS: dict[str, Callable[[str, object], Any]] = {
    "image": _image,
    "port": _port,
    "app_user": _app_user,
    "upstreams": _upstreams,
    "health_check_path": _health_check_path,
    "allow_from": _names,
    "cpu": lambda k, v: _int(k, v, *CPU_RANGE, "CPU units"),
    "memory": lambda k, v: _int(k, v, *MEMORY_RANGE, "MiB"),
    "count": lambda k, v: _int(k, v, *COUNT_RANGE, "a task count"),
    "daemon": _bool,
    "environment": parse_environment,
    "secrets": parse_secrets,
    "network_mode": _network_mode,
    "insecure_published_app_port": _bool,
    "tags": _tags,
    "proxy_port": _port,
    "expose_port": _port,
    "prometheus_port": _port,
    "prometheus_bind_address": _text,  # the values: service_ports.metrics_bind_address
    "tcp_check_reason": _text,
}
REQUIRED = ("image", "port")
FIELD_NAMES = tuple(_FIELDS)


def _unknown_field(key: str, name: str, known: Sequence[str]) -> ConfigError:
    guess = closest(name, known)
    hint = f"did you mean {guess}?" if guess else "fields are " + ", ".join(known)
    return fail(f"{key}.{name}", REDACTED, f"unknown field; {hint}")


def parse_service(key: str, name: str, entry: object) -> ServiceSpec:
    """One `services` entry (key is e.g. `services.orders`)."""
    if not isinstance(entry, Mapping):
        raise fail(key, entry, "must be a JSON object of service settings")
    for field_name in entry:
        if field_name not in _FIELDS:
            raise _unknown_field(key, str(field_name), FIELD_NAMES)
    for required in REQUIRED:
        if required not in entry:
            raise fail(f"{key}.{required}", None, "is required")
    values: dict[str, Any] = {"name": name}
    for field_name, raw in entry.items():
        where = f"{key}.{field_name}"
        if field_name == "prometheus_port" and raw is None:
            values["metrics"] = False
            continue
        parsed = _FIELDS[field_name](where, raw)
        values[field_name] = parsed
    values.update(_schedule(key, entry, values))
    spec = ServiceSpec(**values)
    _check_service(key, spec, entry)
    return spec


def _schedule(key: str, entry: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """`daemon` and `count`: a daemon unless the entry asks for replicas with `count`.

    The stack creates the cluster the hosts register with, so on a fresh account no host has
    joined while CloudFormation creates the services. A REPLICA service whose tasks cannot be
    placed keeps the stack waiting for it to stabilise, or its deployment circuit breaker fails
    the deployment and the stack rolls back (ECS developer guide, "Deployment circuit breaker");
    a DAEMON service places "exactly one task on each active container instance" (ECS
    developer guide, "Service scheduler concepts", Daemon), which is zero before any host has
    joined. Host mode runs at most one task of a service per host anyway (fixed host ports).
    MeshService's `desired_count` docstring says the same.
    """
    daemon = values.get("daemon", "count" not in entry)
    if not daemon and "count" not in entry:
        raise fail(
            f"{key}.daemon",
            False,
            'needs "count": replicas (a REPLICA service is placed only once that many hosts '
            "have joined in host mode); or leave daemon unset for one task on every host",
        )
    return {"daemon": daemon, "count": values.get("count", 0)}


def _check_service(key: str, spec: ServiceSpec, entry: Mapping[str, Any]) -> None:
    if spec.daemon and "count" in entry:
        raise fail(f"{key}.count", spec.count, "a daemon runs one task per host; remove count")
    if spec.name in spec.upstreams:
        raise fail(
            f"{key}.upstreams.{spec.name}",
            spec.upstreams[spec.name],
            "a service cannot be its own upstream",
        )
    if spec.name in spec.allow_from:
        raise fail(f"{key}.allow_from", list(spec.allow_from), "a service cannot list itself")
    if spec.host_mode and spec.app_user is None:
        raise fail(
            f"{key}.app_user",
            None,
            "is required in host mode: a non-root user like '1000:1000' (the app shares the "
            "host's network namespace)",
        )
    if spec.network_mode == "bridge" and not spec.insecure_published_app_port:
        raise fail(
            f"{key}.network_mode",
            "bridge",
            "publishes the app's port on the host, around mTLS and intentions; set "
            "insecure_published_app_port=true to accept that (docs/services.md, Bridge mode)",
        )
    if spec.host_mode and spec.insecure_published_app_port:
        raise fail(
            f"{key}.insecure_published_app_port", True, "applies to network_mode=bridge only"
        )
    if spec.expose_port is not None and not (spec.host_mode and spec.health_check_path):
        raise fail(
            f"{key}.expose_port",
            spec.expose_port,
            "is used only in host mode with a health_check_path; remove it",
        )
    try:
        service_ports.metrics_bind_address(
            spec.network_mode, spec.metrics, spec.prometheus_bind_address
        )
    except ValueError as err:
        raise fail(
            f"{key}.prometheus_bind_address", spec.prometheus_bind_address, str(err)
        ) from None
    _check_tcp_check_reason(key, spec)
    taken = sorted({s.env for s in spec.secrets} & set(spec.environment))
    if taken:
        raise fail(f"{key}.secrets", taken, "are also set in environment; set each variable once")


def _check_tcp_check_reason(key: str, spec: ServiceSpec) -> None:
    """A host-mode service without a health path is checked only at its Envoy sidecar: the
    configuration says why that is acceptable, as MeshService's synth warning asks."""
    tcp_only = spec.host_mode and spec.health_check_path is None
    if tcp_only and spec.tcp_check_reason is None:
        raise fail(
            f"{key}.health_check_path",
            None,
            "is needed in host mode: without it Consul's only check is a TCP connect to the "
            "service's Envoy, which passes while the app starts or hangs; set a path the app "
            'answers, or accept the TCP check with "tcp_check_reason": "<why>" '
            "(docs/services.md, What your app must do)",
        )
    if not tcp_only and spec.tcp_check_reason is not None:
        raise fail(
            f"{key}.tcp_check_reason",
            spec.tcp_check_reason,
            "applies only to a host-mode service without health_check_path; remove it",
        )


def parse_services(key: str, value: object) -> tuple[ServiceSpec, ...]:
    """The `services` key: {name: settings}."""
    services = json_object(key, value)
    return tuple(
        parse_service(f"{key}.{name}", service_name(f"{key}.{name}", name), entry)
        for name, entry in services.items()
    )


def parse_external(key: str, value: object) -> tuple[str, ...]:
    """The `external_services` key: names registered in Consul by other means."""
    return _names(key, value)


def parse_team(key: str, value: object) -> tuple[TeamService, ...]:
    """The `team_services` key: {name: {"allow_from": [...]}} for teams' own CDK apps."""
    teams = []
    for name, raw in json_object(key, value).items():
        where = f"{key}.{name}"
        service_name(where, name)
        entry = raw if raw is not None else {}
        if not isinstance(entry, Mapping):
            raise fail(where, entry, 'must be a JSON object like {"allow_from": ["orders"]}')
        for field_name in entry:
            if field_name != "allow_from":
                raise _unknown_field(where, str(field_name), ("allow_from",))
        allow = _names(f"{where}.allow_from", entry.get("allow_from", []))
        if name in allow:
            raise fail(f"{where}.allow_from", list(allow), "a service cannot list itself")
        teams.append(TeamService(name=name, allow_from=allow))
    return tuple(teams)


# ----------------------------------------------------------------------- across services


def check_references(
    services: Sequence[ServiceSpec],
    teams: Sequence[TeamService],
    external: Sequence[str],
    demo: Sequence[ServiceSpec] = (),
) -> None:
    """Names are unique; every upstream and caller is declared; every upstream is allowed."""
    owners: dict[str, str] = {}
    for kind, names in (
        ("the demo (demo_enabled=true)", [s.name for s in demo]),
        (KEY, [s.name for s in services]),
        (TEAM_KEY, [t.name for t in teams]),
        (EXTERNAL_KEY, list(external)),
    ):
        for name in names:
            if name in owners:
                where = EXTERNAL_KEY if kind == EXTERNAL_KEY else f"{kind}.{name}"
                raise fail(where, name, f"is already declared by {owners[name]}; names are unique")
            owners[name] = kind
    by_pascal: dict[str, str] = {}
    for name in owners:
        other = by_pascal.setdefault(pascal(name), name)
        if other != name:
            raise fail(
                f"{KEY}.{name}",
                name,
                f"reads as {pascal(name)} in CDK IDs, like {other!r}; rename one",
            )
    declared = set(owners)
    allowed_callers: dict[str, tuple[str, ...]] = {s.name: s.allow_from for s in [*demo, *services]}
    allowed_callers.update((t.name, t.allow_from) for t in teams)
    hint = f"declare it under {KEY}, {TEAM_KEY} or {EXTERNAL_KEY}"
    for spec in [*demo, *services]:
        for upstream in spec.upstreams:
            if upstream not in declared:
                raise fail(
                    f"{KEY}.{spec.name}.upstreams.{upstream}",
                    upstream,
                    f"is not a known service; {hint}",
                )
            if upstream in allowed_callers and spec.name not in allowed_callers[upstream]:
                raise fail(
                    f"{KEY}.{spec.name}.upstreams.{upstream}",
                    upstream,
                    f"{upstream} does not allow {spec.name}: the mesh denies by default; add "
                    f'"{spec.name}" to {upstream}\'s allow_from',
                )
    for name, callers in allowed_callers.items():
        for caller in callers:
            if caller not in declared:
                raise fail(
                    f"{owners[name]}.{name}.allow_from", caller, f"is not a known service; {hint}"
                )


def plan_ports(specs: Sequence[ServiceSpec]) -> dict[str, service_ports.ServicePorts]:
    """Every service's ports, chosen where unset (`service_ports.assign`) and checked: each
    service's own rules, then host-mode services against each other (they share each host)."""
    requests = [
        service_ports.PortRequest(
            service=spec.name,
            host_mode=spec.host_mode,
            needs_expose=spec.host_mode and spec.health_check_path is not None,
            proxy=spec.proxy_port,
            expose=spec.expose_port,
            metrics=spec.prometheus_port,
            metrics_enabled=spec.metrics,
            fixed=(spec.port, *spec.upstreams.values()),
        )
        for spec in specs
    ]
    try:
        assigned = service_ports.assign(requests)
    except ValueError as err:
        raise ConfigError(f"invalid context value {KEY}: {err}") from None
    plans: dict[str, service_ports.ServicePorts] = {}
    for spec in specs:
        ports = assigned[spec.name]
        try:
            plan = service_ports.plan(
                service=spec.name,
                network_mode=spec.network_mode,
                port=spec.port,
                proxy_port=ports.proxy,
                expose_port=ports.expose,
                health_check_path=spec.health_check_path,
                prometheus_port=ports.metrics,
                upstreams=spec.upstreams,
            )
            service_ports.check_distinct(plan, plans.values())
        except ValueError as err:
            raise ConfigError(f"invalid context value {KEY}.{spec.name}: {err}") from None
        plans[spec.name] = plan
    problem = service_ports.reserved_host_ports_problem(plans.values())
    if problem is not None:
        raise ConfigError(f"invalid context value {KEY}: {problem}")
    return plans


def intentions(
    services: Sequence[ServiceSpec | TeamService],
) -> list[tuple[str, str]]:
    """The allow intentions the services declare, as (source, destination) pairs."""
    return [(caller, spec.name) for spec in services for caller in spec.allow_from]
