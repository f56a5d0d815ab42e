"""/v1/config: config entries, with cas."""

from __future__ import annotations

import copy
import re
from typing import Any

from .decode import Fields
from .errors import HTTPError, denied
from .routing import (
    Backend,
    Reply,
    Request,
    Router,
    json_reply,
    parse_uint,
    query_reply,
)

router = Router()


CONFIG_KINDS = frozenset(
    {
        "service-defaults",
        "proxy-defaults",
        "service-router",
        "service-splitter",
        "service-resolver",
        "ingress-gateway",
        "terminating-gateway",
        "service-intentions",
        "mesh",
        "exported-services",
        "sameness-group",
        "api-gateway",
        "bound-api-gateway",
        "inline-certificate",
        "file-system-certificate",
        "http-route",
        "tcp-route",
        "jwt-provider",
        "control-plane-request-limit",
    }
)


def _config_entry(request: Request) -> dict[str, Any]:
    prefix = "Request decoding failed: "
    raw = request.json(prefix)
    if not isinstance(raw, dict):
        raise HTTPError(400, f"{prefix}Payload does not contain a kind/Kind key at the top level")
    fields = Fields(raw, "ConfigEntry")
    kind, name = fields.get("Kind"), fields.get("Name")
    if not isinstance(kind, str) or not kind:
        raise HTTPError(400, f"{prefix}Payload does not contain a kind/Kind key at the top level")
    if kind not in CONFIG_KINDS:
        raise HTTPError(400, f"{prefix}invalid config entry kind: {kind}")
    entry = {k: copy.deepcopy(v) for k, v in raw.items() if k.lower() not in ("kind", "name")}
    entry = {"Kind": kind, "Name": name if isinstance(name, str) else "", **entry}
    entry.pop("CreateIndex", None)
    entry.pop("ModifyIndex", None)
    return entry


def _validate_config_entry(entry: dict[str, Any]) -> None:
    kind, name = entry["Kind"], entry["Name"]
    fixed = {"proxy-defaults": "global", "mesh": "mesh"}.get(kind)
    if fixed is not None and name != fixed:
        raise HTTPError(500, f'invalid name ("{name}"), only "{fixed}" is supported')
    if fixed is None and not name:
        raise HTTPError(500, "Name is required")


@router.route(r"/v1/config", "PUT")
def apply_entry(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    entry = _config_entry(request)
    cas = parse_uint(request, "cas")
    _validate_config_entry(entry)
    if request.anonymous:
        raise denied("operator:write", "")
    key = (entry["Kind"], entry["Name"])

    def write(idx: int) -> bool:
        existing = store.t.config.get(key)
        if cas is not None:
            stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
            if stale or (existing is not None and existing["ModifyIndex"] != cas):
                return False
        store.config_set(idx, entry)
        return True

    return json_reply(store.apply(write))


@router.route(r"/v1/config/(?P<kind>[^/]+)(?:/(?P<name>.+))?", "GET", query=True)
def _config_get(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    kind, name = match["kind"], match["name"]
    if kind not in CONFIG_KINDS:
        raise HTTPError(500, f"invalid config entry kind: {kind}")
    index = store.table_index("config-entries")
    if name is None:
        entries = [e for (k, _), e in sorted(store.t.config.items()) if k == kind]
        return query_reply([] if request.anonymous else entries, index)
    if request.anonymous:
        raise denied("service:read", name)
    entry = store.t.config.get((kind, name))
    if entry is None:
        raise HTTPError(404, f'Config entry not found for "{kind}" / "{name}"')
    return query_reply(entry, index)


@router.route(r"/v1/config/(?P<kind>[^/]+)/(?P<name>.+)", "DELETE")
def _config_delete(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    kind, name = match["kind"], match["name"]
    if kind not in CONFIG_KINDS:
        raise HTTPError(400, f"invalid config entry kind: {kind}")
    cas = parse_uint(request, "cas")
    if request.anonymous:
        raise denied("operator:write", "")
    if cas is None:
        store.apply(lambda idx: store.config_delete(idx, kind, name))
        return json_reply({})

    def write(idx: int) -> bool:
        existing = store.t.config.get((kind, name))
        if existing is None or existing["ModifyIndex"] != cas:
            return False
        store.config_delete(idx, kind, name)
        return True

    return json_reply(store.apply(write))
