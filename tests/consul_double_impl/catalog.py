"""/v1/status, /v1/catalog and /v1/health: register, deregister and the catalog reads."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .bexpr import (
    CHECK_SERVICE_NODE_SCHEMA,
    HEALTH_CHECK_SCHEMA,
    NODE_SCHEMA,
    NODE_SERVICE_SCHEMA,
    SERVICE_NODE_SCHEMA,
)
from .decode import UUID_RE, Fields
from .errors import DecodeError, HTTPError, denied
from .records import (
    check_record,
    check_view,
    node_service_view,
    node_view,
    service_node_view,
    service_pre_apply,
    service_record,
)
from .routing import (
    Backend,
    Reply,
    Request,
    Router,
    decode_body,
    json_reply,
    meta_matches,
    node_meta_filter,
    query_filter,
    query_reply,
)

router = Router()


LEADER_ADDRESS = "127.0.0.1:8300"


@router.route(r"/v1/status/leader", "GET", status_endpoint=True)
def _status_leader(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return json_reply(LEADER_ADDRESS if backend.has_leader else "")


@router.route(r"/v1/status/peers", "GET", status_endpoint=True)
def _status_peers(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return json_reply([LEADER_ADDRESS])  # the raft configuration, known without a leader


def _decode_registration(
    request: Request, datacenter: str
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]], bool]:
    prefix = "Request decode failed: "
    body = decode_body(request, "structs.RegisterRequest", prefix)
    try:
        node_name = body.string("Node")
        node = {
            "ID": body.string("ID"),
            "Node": node_name,
            "Address": body.string("Address"),
            "Datacenter": body.string("Datacenter") or datacenter,
            "TaggedAddresses": body.str_map("TaggedAddresses"),
            "Meta": body.str_map("NodeMeta"),
        }
        service_fields = body.sub("Service", "structs.NodeService")
        service = None
        if service_fields is not None:
            service = service_record(service_fields, txn_subset=False)
        checks = []
        single = body.sub("Check", "structs.HealthCheck")
        if single is not None:
            checks.append(check_record(single, node_name))
        for raw in body.raw("Checks", list, "structs.HealthChecks") or []:
            checks.append(check_record(Fields(raw, "structs.HealthCheck"), node_name))
        skip = body.boolean("SkipNodeUpdate")
    except DecodeError as exc:
        raise HTTPError(400, f"{prefix}{exc}") from None
    return node, service, checks, skip


@router.route(r"/v1/catalog/register", "PUT")
def register(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    node, service, checks, skip = _decode_registration(request, backend.datacenter)
    if node["Datacenter"] != backend.datacenter:
        raise HTTPError(500, "No path to datacenter")
    if not node["Node"]:
        raise HTTPError(500, "Must provide node")
    if node["ID"] and not UUID_RE.match(node["ID"]):
        raise HTTPError(500, f"Bad node ID: uuid string is wrong length: {node['ID']!r}")
    if not node["Address"] and not skip:
        raise HTTPError(500, "Must provide address if SkipNodeUpdate is not set")
    if service is not None:
        service_pre_apply(service)
    if request.anonymous:
        resource = service["Service"] if service is not None else node["Node"]
        permission = "service:write" if service is not None else "node:write"
        raise denied(permission, resource)
    store.apply(lambda idx: store.register(idx, node, service, checks, skip_node_update=skip))
    return json_reply(True)


@router.route(r"/v1/catalog/deregister", "PUT")
def _catalog_deregister(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    prefix = "Request decode failed: "
    body = decode_body(request, "structs.DeregisterRequest", prefix)
    try:
        node, service_id, check_id = (
            body.string("Node"),
            body.string("ServiceID"),
            body.string("CheckID"),
        )
        datacenter = body.string("Datacenter")
    except DecodeError as exc:
        raise HTTPError(400, f"{prefix}{exc}") from None
    if datacenter and datacenter != backend.datacenter:
        raise HTTPError(500, "No path to datacenter")
    if not node:
        raise HTTPError(500, "Must provide node")
    if request.anonymous:
        raise denied("node:write", node)

    def write(idx: int) -> None:
        if service_id:
            store.delete_service(idx, node, service_id)
        elif check_id:
            store.delete_check(idx, node, check_id)
        else:
            store.delete_node(idx, node)

    store.apply(write)
    return json_reply(True)


@router.route(r"/v1/catalog/datacenters", "GET", status_endpoint=True)
def _catalog_datacenters(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return json_reply([backend.datacenter])


@router.route(r"/v1/catalog/nodes", "GET", query=True)
def _catalog_nodes(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    predicate = query_filter(request, NODE_SCHEMA)
    wanted = node_meta_filter(request)
    index = store.table_index("nodes")
    if request.anonymous:
        return query_reply([], index, filtered=bool(store.t.nodes))
    nodes = [
        node_view(store.t.nodes[key])
        for key in sorted(store.t.nodes)
        if meta_matches(store.t.nodes[key]["Meta"], wanted)
    ]
    return query_reply([n for n in nodes if predicate is None or predicate(n)], index)


@router.route(r"/v1/catalog/services", "GET", query=True)
def _catalog_services(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    predicate = query_filter(request, SERVICE_NODE_SCHEMA)
    wanted = node_meta_filter(request)
    index = store.table_index("services")
    if request.anonymous:
        return query_reply({}, index, filtered=bool(store.t.services))
    tags: dict[str, set[str]] = {}
    for (node_key, _), service in store.t.services.items():
        node = store.t.nodes[node_key]
        if not meta_matches(node["Meta"], wanted):
            continue
        if predicate is not None and not predicate(service_node_view(node, service)):
            continue
        tags.setdefault(service["Service"], set()).update(service["Tags"])
    return query_reply({name: sorted(tags[name]) for name in sorted(tags)}, index)


def _tags_match(service: dict[str, Any], request: Request) -> bool:
    wanted = {t.lower() for t in request.query.get("tag", [])}
    return wanted <= {t.lower() for t in service["Tags"]}


def _service_instances(
    backend: Backend, request: Request, name: str, *, connect: bool
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    store = backend.store
    if connect:
        pairs = [
            (store.t.nodes[node_key], service)
            for (node_key, _), service in sorted(store.t.services.items())
            if (
                service.get("Kind") == "connect-proxy"
                and service["Proxy"].get("DestinationServiceName") == name
            )
            or (service["Service"] == name and service["Connect"].get("Native"))
        ]
    else:
        pairs = store.instances(name)
    wanted = node_meta_filter(request)
    return [
        (node, service)
        for node, service in pairs
        if meta_matches(node["Meta"], wanted) and _tags_match(service, request)
    ]


def _catalog_service_common(
    backend: Backend, request: Request, name: str, *, connect: bool
) -> Reply:
    predicate = query_filter(request, SERVICE_NODE_SCHEMA)
    index = backend.store.service_query_index(name, with_checks=False)
    pairs = _service_instances(backend, request, name, connect=connect)
    if request.anonymous:
        return query_reply([], index, filtered=bool(pairs))
    views = [service_node_view(node, service) for node, service in pairs]
    return query_reply([v for v in views if predicate is None or predicate(v)], index)


def _service_name(match: re.Match[str]) -> str:
    """The service name of a /service/ or /connect/ path; Consul answers 400 without one."""
    if not match["name"]:
        raise HTTPError(400, "Missing service name")
    return match["name"]


@router.route(r"/v1/catalog/service/(?P<name>.*)", "GET", query=True)
def _catalog_service(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return _catalog_service_common(backend, request, _service_name(match), connect=False)


@router.route(r"/v1/catalog/connect/(?P<name>.*)", "GET", query=True)
def _catalog_connect(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return _catalog_service_common(backend, request, _service_name(match), connect=True)


@router.route(r"/v1/catalog/node/(?P<node>.*)", "GET", query=True)
def _catalog_node(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    if not match["node"]:
        raise HTTPError(400, "Missing node name")
    predicate = query_filter(request, NODE_SERVICE_SCHEMA)
    index = store.table_index("nodes", "services")
    node = store.node(match["node"])
    if node is None or request.anonymous:
        return query_reply(None, index, filtered=node is not None)
    services = {
        s["ID"]: node_service_view(s)
        for s in store.node_services(node["Node"])
        if predicate is None or predicate(node_service_view(s))
    }
    return query_reply({"Node": node_view(node), "Services": services}, index)


@router.route(r"/v1/catalog/node-services/(?P<node>.*)", "GET", query=True)
def _catalog_node_services(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    if not match["node"]:
        raise HTTPError(400, "Missing node name")
    predicate = query_filter(request, NODE_SERVICE_SCHEMA)
    index = store.table_index("nodes", "services")
    node = store.node(match["node"])
    if node is None or request.anonymous:
        return query_reply({"Node": None, "Services": None}, index, filtered=node is not None)
    views = [node_service_view(s) for s in store.node_services(node["Node"])]
    services = [v for v in views if predicate is None or predicate(v)]
    return query_reply({"Node": node_view(node), "Services": services}, index)


def _health_entries(backend: Backend, request: Request, name: str, *, connect: bool) -> Reply:
    store = backend.store
    predicate = query_filter(request, CHECK_SERVICE_NODE_SCHEMA)
    index = store.service_query_index(name, with_checks=True)
    pairs = _service_instances(backend, request, name, connect=connect)
    if request.anonymous:
        return query_reply([], index, filtered=bool(pairs))
    entries = []
    for node, service in pairs:
        checks = [
            check_view(c)
            for c in store.node_checks(node["Node"])
            if c["ServiceID"] in ("", service["ID"])
        ]
        if request.flag("passing") and any(c["Status"] != "passing" for c in checks):
            continue
        entry = {"Node": node_view(node), "Service": node_service_view(service), "Checks": checks}
        if predicate is None or predicate(entry):
            entries.append(entry)
    return query_reply(entries, index)


@router.route(r"/v1/health/service/(?P<name>.*)", "GET", query=True)
def _health_service(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return _health_entries(backend, request, _service_name(match), connect=False)


@router.route(r"/v1/health/connect/(?P<name>.*)", "GET", query=True)
def _health_connect(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    return _health_entries(backend, request, _service_name(match), connect=True)


def _checks_reply(backend: Backend, request: Request, checks: Iterable[dict[str, Any]]) -> Reply:
    predicate = query_filter(request, HEALTH_CHECK_SCHEMA)
    index = backend.store.table_index("checks")
    views = [check_view(c) for c in checks]
    if request.anonymous:
        return query_reply([], index, filtered=bool(views))
    return query_reply([v for v in views if predicate is None or predicate(v)], index)


@router.route(r"/v1/health/node/(?P<node>.*)", "GET", query=True)
def _health_node(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    if not match["node"]:
        raise HTTPError(400, "Missing node name")
    return _checks_reply(backend, request, backend.store.node_checks(match["node"]))


@router.route(r"/v1/health/checks/(?P<name>.*)", "GET", query=True)
def _health_checks(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    name = _service_name(match)
    checks = sorted(backend.store.t.checks.items())
    return _checks_reply(backend, request, (c for _, c in checks if c["ServiceName"] == name))


@router.route(r"/v1/health/state/(?P<state>.*)", "GET", query=True)
def _health_state(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    state = match["state"]
    if not state:
        raise HTTPError(400, "Missing check state")
    checks = [c for _, c in sorted(backend.store.t.checks.items())]
    return _checks_reply(
        backend, request, (c for c in checks if state == "any" or c["Status"] == state)
    )
