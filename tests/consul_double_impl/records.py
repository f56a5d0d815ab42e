"""What a registration or txn op turns into: Consul's records, their validation and views."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

from .decode import Fields, go_duration, json_kind, parse_go_duration
from .errors import DecodeError, HTTPError, RaftError, multierror

META_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
GATEWAY_KINDS = frozenset({"mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"})


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def node_record(fields: Fields, datacenter: str) -> dict[str, Any]:
    return {
        "ID": fields.string("ID"),
        "Node": fields.string("Node"),
        "Address": fields.string("Address"),
        "Datacenter": fields.string("Datacenter") or datacenter,
        "TaggedAddresses": fields.str_map("TaggedAddresses"),
        "Meta": fields.str_map("Meta"),
    }


def _weights(fields: Fields | None) -> dict[str, int]:
    """ToServiceNode: invalid or absent weights become {1, 1}."""
    if fields is None:
        return {"Passing": 1, "Warning": 1}
    passing, warning = fields.integer("Passing"), fields.integer("Warning")
    if passing < 1 or warning < 0 or passing > 65535 or warning > 65535:
        return {"Passing": 1, "Warning": 1}
    return {"Passing": passing, "Warning": warning}


def _tagged_service_addresses(fields: Fields) -> dict[str, Any] | None:
    raw = fields.get("TaggedAddresses")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DecodeError(
            f"json: cannot unmarshal {json_kind(raw)} into Go struct field "
            f"{fields.struct}.TaggedAddresses of type map[string]structs.ServiceAddress"
        )
    out: dict[str, Any] = {}
    for name, value in raw.items():
        entry = Fields(value, "structs.ServiceAddress")
        out[name] = {"Address": entry.string("Address"), "Port": entry.integer("Port")}
    return out


def _proxy_record(fields: Fields | None, *, txn_subset: bool) -> dict[str, Any]:
    """The ConnectProxyConfig as Consul stores it. ``txn_subset`` applies convertOps' mapping."""
    if fields is None:
        return {"Mode": "", "MeshGateway": {}, "Expose": {}}
    out: dict[str, Any] = {}
    for name in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress"):
        if fields.string(name):
            out[name] = fields.string(name)
    if fields.integer("LocalServicePort"):
        out["LocalServicePort"] = fields.integer("LocalServicePort")
    if fields.string("LocalServiceSocketPath"):
        out["LocalServiceSocketPath"] = fields.string("LocalServiceSocketPath")
    out["Mode"] = "" if txn_subset else fields.string("Mode")
    if not txn_subset:
        out.update(_proxy_opaque_parts(fields, "Config", "Upstreams"))
    gateway = fields.sub("MeshGateway", "structs.MeshGatewayConfig")
    out["MeshGateway"] = (
        {"Mode": gateway.string("Mode")} if gateway and gateway.string("Mode") else {}
    )
    expose = None if txn_subset else fields.raw("Expose", dict, "structs.ExposeConfig")
    out["Expose"] = expose or {}
    transparent = _transparent_proxy(fields.sub("TransparentProxy", "TransparentProxyConfig"))
    if transparent:
        out["TransparentProxy"] = transparent
    if not txn_subset:
        out.update(_proxy_opaque_parts(fields, "AccessLogs"))
    return out


_OPAQUE_TYPES: dict[str, tuple[type, str]] = {
    "Config": (dict, "map[string]interface {}"),
    "Upstreams": (list, "structs.Upstreams"),
    "AccessLogs": (dict, "structs.AccessLogsConfig"),
}


def _proxy_opaque_parts(fields: Fields, *names: str) -> dict[str, Any]:
    """Proxy parts kept as sent (only on a catalog register; a txn drops them)."""
    parts: dict[str, Any] = {}
    for name in names:
        kind, go_type = _OPAQUE_TYPES[name]
        value = fields.raw(name, kind, go_type)
        if value:
            parts[name] = value
    return parts


def _transparent_proxy(fields: Fields | None) -> dict[str, Any]:
    if fields is None:
        return {}
    out: dict[str, Any] = {}
    if fields.integer("OutboundListenerPort"):
        out["OutboundListenerPort"] = fields.integer("OutboundListenerPort")
    if fields.boolean("DialedDirectly"):
        out["DialedDirectly"] = True
    return out


def service_record(fields: Fields, *, txn_subset: bool) -> dict[str, Any]:
    """A NodeService from a catalog registration (full) or a txn Service op (convertOps subset)."""
    record: dict[str, Any] = {}
    if fields.string("Kind"):
        record["Kind"] = fields.string("Kind")
    record["ID"] = fields.string("ID")
    record["Service"] = fields.string("Service")
    record["Tags"] = fields.str_list("Tags") or []
    record["Address"] = fields.string("Address")
    if not txn_subset:
        tagged = _tagged_service_addresses(fields)
        if tagged:
            record["TaggedAddresses"] = tagged
    record["Meta"] = fields.str_map("Meta")
    if fields.integer("Port"):
        record["Port"] = fields.integer("Port")
    if not txn_subset and fields.string("SocketPath"):
        record["SocketPath"] = fields.string("SocketPath")
    record["Weights"] = _weights(fields.sub("Weights", "structs.Weights"))
    record["EnableTagOverride"] = fields.boolean("EnableTagOverride")
    record["Proxy"] = _proxy_record(
        fields.sub("Proxy", "structs.ConnectProxyConfig"), txn_subset=txn_subset
    )
    connect = None if txn_subset else fields.sub("Connect", "structs.ServiceConnect")
    record["Connect"] = (
        {"Native": True} if connect is not None and connect.boolean("Native") else {}
    )
    if not txn_subset and fields.get("Locality") is not None:
        record["Locality"] = fields.raw("Locality", dict, "structs.Locality")
    return record


_CHECK_DEFINITION_FIELDS: tuple[tuple[str, type], ...] = (
    ("HTTP", str),
    ("TLSServerName", str),
    ("TLSSkipVerify", bool),
    ("Header", dict),
    ("Method", str),
    ("Body", str),
    ("DisableRedirects", bool),
    ("TCP", str),
    ("UDP", str),
    ("GRPC", str),
    ("GRPCUseTLS", bool),
    ("OSService", str),
    ("H2PING", str),
)


_CHECK_DURATIONS = ("Interval", "Timeout", "DeregisterCriticalServiceAfter", "TTL")
_CHECK_TYPES = (
    ("TTL", "ttl"),
    ("HTTP", "http"),
    ("TCP", "tcp"),
    ("UDP", "udp"),
    ("GRPC", "grpc"),
    ("H2PING", "h2ping"),
    ("OSService", "os_service"),
)


def _check_definition(fields: Fields | None) -> dict[str, Any]:
    definition: dict[str, Any] = {}
    if fields is None:
        return definition
    for name, kind in _CHECK_DEFINITION_FIELDS:
        value = fields.raw(name, kind, kind.__name__)
        if value not in (None, "", False, {}):
            definition[name] = value
    for name in _CHECK_DURATIONS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            ns = value  # Go durations may be sent as nanoseconds
        elif isinstance(value, str):
            try:
                ns = parse_go_duration(value)
            except ValueError as exc:
                raise DecodeError(str(exc)) from None
        elif value is None:
            continue
        else:
            raise DecodeError(
                f"json: cannot unmarshal {json_kind(value)} into Go struct field "
                f"HealthCheckDefinition.{name} of type time.Duration"
            )
        if ns:
            definition[name] = go_duration(ns)
    return definition


def check_record(fields: Fields, node: str) -> dict[str, Any]:
    definition = _check_definition(fields.sub("Definition", "structs.HealthCheckDefinition"))
    check_type = next((kind for name, kind in _CHECK_TYPES if definition.get(name)), "")
    name = fields.string("Name")
    return {
        "Node": fields.string("Node") or node,
        "CheckID": fields.string("CheckID") or name,
        "Name": name,
        "Status": fields.string("Status") or "critical",
        "Notes": fields.string("Notes"),
        "Output": fields.string("Output"),
        "ServiceID": fields.string("ServiceID"),
        "ServiceName": fields.string("ServiceName"),
        "ServiceTags": fields.str_list("ServiceTags") or [],
        "Type": check_type,
        "Interval": definition.get("Interval", ""),
        "Timeout": definition.get("Timeout", ""),
        "ExposedPort": fields.integer("ExposedPort"),
        "Definition": definition,
    }


def _validate_upstreams(proxy: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    keys: set[tuple[str, ...]] = set()
    binds: set[str] = set()
    for raw in proxy.get("Upstreams") or []:
        upstream = Fields(raw, "structs.Upstream")
        name = upstream.string("DestinationName")
        central = upstream.boolean("CentrallyConfigured")
        port, socket_path = (
            upstream.integer("LocalBindPort"),
            upstream.string("LocalBindSocketPath"),
        )
        if not name:
            errors.append("upstream destination name cannot be empty")
            continue
        if not port and not socket_path and not central:
            errors.append(
                "upstream local bind port or local socket path must be defined and nonzero"
            )
            continue
        key = (upstream.string("DestinationType") or "service", name, upstream.string("Datacenter"))
        if key in keys:
            errors.append(f"upstreams cannot contain duplicates of {key[0]}:{key[1]}")
            continue
        keys.add(key)
        bind = socket_path or f"{upstream.string('LocalBindAddress') or '127.0.0.1'}:{port}"
        if bind in binds and not central:
            errors.append(
                "upstreams cannot contain duplicates by local bind address and port or unix "
                f'path; "{bind}" is specified twice'
            )
            continue
        binds.add(bind)
    return errors


# agent/structs/connect_proxy_config.go allowedExposeProtocols.
_EXPOSE_PROTOCOLS = ("http", "http2")


def _validate_expose(proxy: dict[str, Any]) -> list[str]:
    """agent/structs/structs.go NodeService.Validate, its `s.Proxy.Expose.Paths` loop (1.21).

    Consul checks neither that a path starts with '/' nor LocalPathPort; the listener is
    built from whatever is stored (agent/xds/listeners.go makeExposedCheckListener).
    """
    errors: list[str] = []
    raw = proxy.get("Expose") or {}
    paths = Fields(raw, "structs.ExposeConfig").raw("Paths", list, "[]structs.ExposePath") or []
    seen: set[int] = set()
    for item in paths:
        path = Fields(item, "structs.ExposePath")
        if not path.string("Path"):
            errors.append("expose.paths: empty path exposed")
        port = path.integer("ListenerPort")
        if port in seen:
            errors.append("expose.paths: duplicate listener ports exposed")
        seen.add(port)
        if port <= 0 or port > 65535:
            errors.append(f"expose.paths: invalid listener port: {port}")
        protocol = path.string("Protocol").lower()
        if protocol and protocol not in _EXPOSE_PROTOCOLS:
            errors.append(
                f"protocol '{protocol}' not supported for path: {path.string('Path')}, "
                f"must be in: [{' '.join(_EXPOSE_PROTOCOLS)}]"
            )
    return errors


def _validate_service(record: dict[str, Any]) -> list[str]:
    """agent/structs NodeService.Validate (the parts that apply to a catalog-only service)."""
    errors: list[str] = []
    kind = record.get("Kind", "")
    proxy = record["Proxy"]
    port, socket_path = record.get("Port", 0), record.get("SocketPath", "")
    native = bool(record["Connect"].get("Native"))
    if kind == "connect-proxy":
        if not port and not socket_path:
            errors.append("Port or SocketPath must be set for a connect-proxy")
        destination = proxy.get("DestinationServiceName", "")
        if not destination.strip():
            errors.append(
                "Proxy.DestinationServiceName must be non-empty for Connect proxy services"
            )
        if destination == "*":
            errors.append(
                "Proxy.DestinationServiceName must not be a wildcard for Connect proxy services"
            )
        if native:
            errors.append("A Proxy cannot also be Connect Native, only typical services")
        errors.extend(_validate_upstreams(proxy))
        errors.extend(_validate_expose(proxy))
    if kind in GATEWAY_KINDS:
        if not port and kind not in ("ingress-gateway", "api-gateway"):
            errors.append(f"Port must be non-zero for a {kind}")
        for name in (
            "DestinationServiceName",
            "DestinationServiceID",
            "LocalServiceAddress",
            "LocalServicePort",
            "LocalServiceSocketPath",
            "Upstreams",
        ):
            if proxy.get(name):
                errors.append(f"The Proxy.{name} configuration is invalid for a {kind}")
    if native and not port and not socket_path:
        errors.append("Port or SocketPath must be set for a Connect native service.")
    return errors


def service_pre_apply(record: dict[str, Any], *, require_id: bool = True) -> None:
    """agent/consul/catalog_endpoint.go servicePreApply (minus the ACL part). Mutates the ID."""
    errors = _validate_service(record)
    if errors:
        raise HTTPError(500, multierror(errors))
    if not record["ID"] and record["Service"]:
        record["ID"] = record["Service"]
    if record["ID"] and not record["Service"]:
        raise HTTPError(
            500, "Must provide service name (Service.Service) when service ID is provided"
        )
    if not record["ID"] and require_id:
        # Consul would hand an empty ID to memdb and fail there; name the actual problem.
        raise HTTPError(500, "Must provide service name (Service.Service)")
    if record["Address"] in ("0.0.0.0", "::", "[::]"):
        raise HTTPError(500, "Invalid service address")


def validate_service_meta(record: dict[str, Any], node: str) -> None:
    """structs.ValidateServiceMetadata, raised inside the state store like Consul does."""
    meta = record.get("Meta") or {}
    problem = ""
    if len(meta) > 64:
        problem = "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        if problem:
            break
        if not key:
            problem = "Key cannot be blank"
        elif not META_KEY_RE.match(key):
            problem = "Key contains invalid characters"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
    if problem:
        raise RaftError(
            f"Invalid Service Meta for node {node} and serviceID {record['ID']}: {problem}"
        )


def without_indexes(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("CreateIndex", "ModifyIndex")}


# JSON views: new top-level dicts sharing nested values with the records. Records are never
# mutated in place (a write replaces them) and replies are serialized at once, so no copy is
# needed here; the inspection methods of ConsulDouble deep-copy what they hand out.


def node_view(node: dict[str, Any]) -> dict[str, Any]:
    return dict(node)


def node_service_view(service: dict[str, Any]) -> dict[str, Any]:
    return dict(service)


def service_node_view(node: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {
        "ID": node["ID"],
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": node["Datacenter"],
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceKind": service.get("Kind", ""),
        "ServiceID": service["ID"],
        "ServiceName": service["Service"],
        "ServiceTags": service["Tags"],
        "ServiceAddress": service["Address"],
    }
    if service.get("TaggedAddresses"):
        view["ServiceTaggedAddresses"] = service["TaggedAddresses"]
    view["ServiceWeights"] = service["Weights"]
    view["ServiceMeta"] = service["Meta"]
    view["ServicePort"] = service.get("Port", 0)
    if service.get("SocketPath"):
        view["ServiceSocketPath"] = service["SocketPath"]
    view["ServiceEnableTagOverride"] = service["EnableTagOverride"]
    view["ServiceProxy"] = service["Proxy"]
    view["ServiceConnect"] = service["Connect"]
    view["CreateIndex"] = service["CreateIndex"]
    view["ModifyIndex"] = service["ModifyIndex"]
    return view


def check_view(check: dict[str, Any]) -> dict[str, Any]:
    return dict(check)


def kv_view(entry: dict[str, Any], *, with_value: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "LockIndex": entry["LockIndex"],
        "Key": entry["Key"],
        "Flags": entry["Flags"],
        "Value": None,
    }
    if with_value and entry["Value"] is not None:
        view["Value"] = base64.b64encode(entry["Value"]).decode()
    if entry["Session"]:
        view["Session"] = entry["Session"]
    view["CreateIndex"] = entry["CreateIndex"]
    view["ModifyIndex"] = entry["ModifyIndex"]
    return view
