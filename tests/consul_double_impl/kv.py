"""/v1/kv: single keys, prefixes, key lists, cas and recursive deletes."""

from __future__ import annotations

import re

from .errors import HTTPError, RaftError, denied
from .records import (
    kv_view,
)
from .routing import (
    Backend,
    Reply,
    Request,
    Router,
    conflicting,
    json_reply,
    parse_uint,
    query_reply,
)

router = Router()


MAX_KV_VALUE = 512 * 1024  # kv_max_value_size default


@router.route(r"/v1/kv/(?P<key>.*)", "GET", query=True)
def _kv_get(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store, key = backend.store, match["key"]
    if request.flag("keys"):
        return _kv_keys(backend, request, key)
    if request.flag("recurse"):
        entries = [] if request.anonymous else store.kv_list(key)
        # KVS.List filters what the token may not read and says so (ConsulDouble.hide_keys).
        readable = [e for e in entries if not e["Key"].startswith(backend.unreadable_keys)]
        filtered = len(readable) != len(entries)
        entries = readable
        reply = query_reply(
            [kv_view(e) for e in entries], store.kv_prefix_index(key), filtered=filtered
        )
        if not entries:
            reply.status, reply.body = 404, b""
        return reply
    if not key:
        raise HTTPError(400, "Missing key name")
    if request.anonymous:
        raise denied("key:read", key)
    entry = store.t.kv.get(key)
    if entry is None:
        reply = query_reply(None, store.kv_index())
        reply.status, reply.body = 404, b""
        return reply
    if request.flag("raw"):
        reply = query_reply(None, entry["ModifyIndex"])
        reply.body = entry["Value"] or b""
        reply.content_type = "text/plain"
        reply.headers["X-Content-Type-Options"] = "nosniff"
        reply.headers["Content-Security-Policy"] = "sandbox"
        return reply
    return query_reply([kv_view(entry)], entry["ModifyIndex"])


def _kv_keys(backend: Backend, request: Request, prefix: str) -> Reply:
    store = backend.store
    separator = request.param("separator") or request.param("seperator") or ""
    keys: list[str] = []
    for entry in [] if request.anonymous else store.kv_list(prefix):
        key = entry["Key"]
        if separator:
            cut = key.find(separator, len(prefix))
            if cut != -1:
                key = key[: cut + len(separator)]
        if not keys or keys[-1] != key:
            keys.append(key)
    reply = query_reply(keys, store.kv_prefix_index(prefix))
    if not keys and prefix:
        reply.status, reply.body = 404, b""
    return reply


@router.route(r"/v1/kv/(?P<key>.*)", "PUT DELETE")
def _kv_write(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store, key = backend.store, match["key"]
    if request.method == "DELETE":
        return _kv_delete(backend, request, key)
    if not key:
        raise HTTPError(400, "Missing key name")
    conflicting(request, "cas", "acquire", "release")
    flags = parse_uint(request, "flags") or 0
    cas = parse_uint(request, "cas")
    if len(request.body) > MAX_KV_VALUE:
        raise HTTPError(
            413,
            f"Request body({len(request.body)} bytes) too large, max size: {MAX_KV_VALUE} bytes. "
            "See https://www.consul.io/docs/agent/config/config-files#kv_max_value_size.",
        )
    if request.anonymous:
        raise denied("key:write", key)
    if request.flag("acquire") or request.flag("release"):
        session = request.param("acquire") or request.param("release")
        store.apply(lambda idx: _no_sessions(session))
    if cas is None:
        store.apply(lambda idx: store.kv_set(idx, key, request.body, flags))
        return json_reply(True)
    written = store.apply(lambda idx: store.kv_cas(idx, key, request.body, flags, cas))
    return json_reply(written is not None)


def _no_sessions(session: str | None) -> None:
    """Sessions are not modelled: every lock fails the way Consul fails for an unknown one."""
    raise RaftError(f'invalid session "{session}"' if session else "missing session")


def _kv_delete(backend: Backend, request: Request, key: str) -> Reply:
    store = backend.store
    conflicting(request, "recurse", "cas")
    recurse = request.flag("recurse")
    if not recurse and not key:
        raise HTTPError(400, "Missing key name")
    cas = parse_uint(request, "cas")
    if request.anonymous:
        raise denied("key:write", key)
    if recurse:
        store.apply(lambda idx: store.kv_delete_tree(idx, key))
        return json_reply(True)
    if cas is None:
        store.apply(lambda idx: store.kv_delete(idx, key))
        return json_reply(True)
    return json_reply(store.apply(lambda idx: store.kv_delete_cas(idx, key, cas)))
