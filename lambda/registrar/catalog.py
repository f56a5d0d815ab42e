"""Consul JSON bodies for a Registration: the txn ops and the sidecar's catalog/register body.

Field names follow Consul's HTTP API (`api-docs/txn.mdx`, `api-docs/catalog.mdx`). The split
between the two is forced by Consul: a txn Service op keeps only ID, Service, Tags, Address,
Meta, Port (and a few more) and drops `Proxy.Upstreams`, `Proxy.Config` and `Proxy.Expose`,
so the plain service instances and their checks go in the txn, atomically with the state
record, and the connect-proxy goes through /v1/catalog/register afterwards, which keeps the
whole NodeService after `NodeService.Validate` (agent/consul/catalog_endpoint.go
servicePreApply).
"""

from __future__ import annotations

import base64
from typing import Any

from model import HealthCheck, Registration, StateRecord

# ESM and Consul start a check in this state. ECS reports RUNNING only once the containers
# started, so the entry is usable at once; consul-esm (when deployed) corrects it within one
# interval. Starting "critical" would leave a mesh without consul-esm with no endpoints.
INITIAL_CHECK_STATUS = "passing"

Json = dict[str, Any]


def check_body(node: str, check: HealthCheck) -> Json:
    definition: Json = {"Interval": check.interval, "Timeout": check.timeout}
    if check.http:
        definition.update(HTTP=check.http, Method="GET")
    else:
        definition["TCP"] = check.tcp
    return {
        "Node": node,
        "CheckID": check.check_id,
        "Name": check.name,
        "ServiceID": check.service_id,
        "Status": INITIAL_CHECK_STATUS,
        "Type": "http" if check.http else "tcp",
        "Definition": definition,
    }


def kv_cas_op(key: str, record: StateRecord, index: int) -> Json:
    """Set the state record only if it is unchanged since it was read (index 0: absent)."""
    value = base64.b64encode(record.encode()).decode()
    return {"KV": {"Verb": "cas", "Key": key, "Value": value, "Index": index}}


def register_ops(registration: Registration) -> list[Json]:
    """Node, service instances and their checks (everything but the sidecar)."""
    node = registration.node
    ops: list[Json] = [
        {
            "Node": {
                "Verb": "set",
                "Node": {
                    "Node": node,
                    "Address": registration.address,
                    "Meta": dict(registration.node_meta),
                },
            }
        }
    ]
    for svc in registration.services:
        ops.append(
            {
                "Service": {
                    "Verb": "set",
                    "Node": node,
                    "Service": {
                        "ID": svc.id,
                        "Service": svc.name,
                        "Tags": list(svc.tags),
                        "Address": registration.address,
                        "Port": svc.port,
                        "Meta": dict(svc.meta),
                    },
                }
            }
        )
    ops.extend(
        {"Check": {"Verb": "set", "Check": check_body(node, svc.check)}}
        for svc in registration.services
    )
    return ops


def deregister_ops(node: str) -> list[Json]:
    """Deleting the node deletes every service and check on it (a no-op if it is absent)."""
    return [{"Node": {"Verb": "delete", "Node": {"Node": node}}}]


def sidecar_body(registration: Registration) -> Json:
    """PUT /v1/catalog/register body of the connect-proxy, with Upstreams and Config intact.

    SkipNodeUpdate keeps the node as the txn wrote it; NodeMeta is still given so that a node
    this call recreates (after a concurrent stop) carries the ownership meta reconcile needs.
    """
    sc = registration.sidecar
    proxy: Json = {
        "DestinationServiceName": sc.destination_name,
        "DestinationServiceID": sc.destination_id,
        "LocalServiceAddress": sc.local_service_address,
        "LocalServicePort": sc.local_service_port,
        "Config": {"bind_address": "0.0.0.0", "bind_port": sc.bind_port},  # noqa: S104
        "Upstreams": [
            {
                "DestinationType": "service",
                "DestinationName": u.destination_name,
                "LocalBindPort": u.local_bind_port,
                "LocalBindAddress": u.local_bind_address,
            }
            for u in sc.upstreams
        ],
    }
    if sc.expose:
        # api/agent.go ExposeConfig/ExposePath. Explicit paths, not `Checks: true`: Consul
        # limits listeners made from registered checks to sources 127.0.0.1 and its own
        # advertise address (agent/xds/listeners.go makeExposedCheckListener), which would
        # shut out consul-esm on the servers.
        proxy["Expose"] = {
            "Paths": [
                {
                    "ListenerPort": p.listener_port,
                    "Path": p.path,
                    "LocalPathPort": p.local_path_port,
                    "Protocol": p.protocol,
                }
                for p in sc.expose
            ]
        }
    return {
        "Node": registration.node,
        "Address": registration.address,
        "NodeMeta": dict(registration.node_meta),
        "SkipNodeUpdate": True,
        "Service": {
            "ID": sc.id,
            "Service": sc.name,
            "Kind": "connect-proxy",
            "Tags": list(sc.tags),
            "Address": registration.address,
            "Port": sc.port,
            "Meta": dict(sc.meta),
            "Proxy": proxy,
        },
        "Checks": [check_body(registration.node, c) for c in sc.checks],
    }


def sidecar_matches(body: Json, entries: list[Json]) -> bool:
    """Does a /v1/catalog/service listing hold the sidecar `body` describes?

    Compares what a reader of the mesh depends on: node, address, port, destination,
    upstreams and exposed paths (the checks of a host-mode task need them). Consul adds
    defaults to what it stores, so whole-object equality would not do.
    """
    service = body["Service"]
    want_upstreams = sorted(
        (u["DestinationName"], u["LocalBindPort"]) for u in service["Proxy"]["Upstreams"]
    )
    want_expose = _expose_paths(service["Proxy"])
    for entry in entries:
        if entry.get("ServiceID") != service["ID"] or entry.get("Node") != body["Node"]:
            continue
        proxy = entry.get("ServiceProxy") or {}
        upstreams = sorted(
            (u.get("DestinationName"), u.get("LocalBindPort")) for u in proxy.get("Upstreams") or []
        )
        return (
            entry.get("ServiceAddress") == service["Address"]
            and entry.get("ServicePort") == service["Port"]
            and proxy.get("DestinationServiceID") == service["Proxy"]["DestinationServiceID"]
            and upstreams == want_upstreams
            and _expose_paths(proxy) == want_expose
        )
    return False


def _expose_paths(proxy: Json) -> list[tuple[object, object, object]]:
    paths = (proxy.get("Expose") or {}).get("Paths") or []
    return sorted((p.get("ListenerPort"), p.get("Path"), p.get("LocalPathPort")) for p in paths)
