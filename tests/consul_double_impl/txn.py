"""/v1/txn: convertOps, preCheck and the state-store dispatch of Consul's transactions."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Literal

from .decode import UUID_RE, Fields, json_kind
from .errors import DecodeError, HTTPError, RaftError, denied_text
from .kv import MAX_KV_VALUE
from .records import (
    check_record,
    check_view,
    kv_view,
    node_record,
    node_service_view,
    node_view,
    service_pre_apply,
    service_record,
)
from .routing import (
    Backend,
    Reply,
    Request,
    Router,
    json_reply,
)
from .store import Store

router = Router()


MAX_TXN_OPS = 128  # agent/txn_endpoint.go, Consul >= 1.14
MAX_TXN_BYTES = 512 * 1024  # txn_max_req_len default


@dataclass
class _TxnOp:
    kind: Literal["KV", "Node", "Service", "Check"]
    verb: str
    body: dict[str, Any]

    @property
    def is_write(self) -> bool:
        """agent/txn_endpoint.go isWrite: decides between Txn.Apply and the read-only Txn.Read."""
        if self.kind == "KV":
            return self.verb in _KV_WRITE_VERBS
        return self.verb != "get"


_KV_WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"})
_EMPTY_ENTRY = {
    "LockIndex": 0,
    "Key": "",
    "Flags": 0,
    "Value": None,
    "Session": "",
    "CreateIndex": 0,
    "ModifyIndex": 0,
}
_CATALOG_VERBS = frozenset({"set", "cas", "get", "delete", "delete-cas"})


def _convert_txn_ops(backend: Backend, request: Request) -> list[_TxnOp]:
    """agent/txn_endpoint.go convertOps: size limits, decoding, the Service field mapping."""
    prefix = "Failed to parse body: "
    if len(request.body) > MAX_TXN_BYTES:
        raise HTTPError(
            413,
            f"Request body({len(request.body)} bytes) too large, max size: {MAX_TXN_BYTES} "
            "bytes. See https://www.consul.io/docs/agent/config/config-files#txn_max_req_len.",
        )
    raw = request.json(prefix)
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise HTTPError(
            400,
            f"{prefix}json: cannot unmarshal {json_kind(raw)} into Go value of type api.TxnOps",
        )
    if len(raw) > MAX_TXN_OPS:
        raise HTTPError(
            413, f"Transaction contains too many operations ({len(raw)} > {MAX_TXN_OPS})"
        )
    ops: list[_TxnOp] = []
    try:
        for item in raw:
            op = _convert_txn_op(Fields(item, "api.TxnOp"), backend.datacenter)
            if op is not None:
                ops.append(op)
    except DecodeError as exc:
        raise HTTPError(400, f"{prefix}{exc}") from None
    return ops


def _convert_txn_op(item: Fields, datacenter: str) -> _TxnOp | None:
    kv = item.sub("KV", "api.KVTxnOp")
    if kv is not None:
        value_raw = kv.get("Value")
        value: bytes | None = None
        if value_raw is not None:
            if not isinstance(value_raw, str):
                raise DecodeError(
                    f"json: cannot unmarshal {json_kind(value_raw)} into Go struct field "
                    "KVTxnOp.KV.Value of type []uint8"
                )
            try:
                value = base64.b64decode(value_raw, validate=True)
            except ValueError:
                raise DecodeError("illegal base64 data at input byte 0") from None
        if value is not None and len(value) > MAX_KV_VALUE:
            raise HTTPError(
                413,
                f'Value for key "{kv.string("Key")}" is too large ({len(value)} > '
                f"{MAX_KV_VALUE} bytes)",
            )
        body = {
            "Key": kv.string("Key"),
            "Value": value,
            "Flags": kv.integer("Flags"),
            "Index": kv.integer("Index"),
            "Session": kv.string("Session"),
        }
        return _TxnOp("KV", kv.string("Verb"), body)
    node_op = item.sub("Node", "api.NodeTxnOp")
    if node_op is not None:
        node = node_op.sub("Node", "api.Node") or Fields({}, "api.Node")
        record = node_record(node, datacenter)
        record["Meta"] = node.str_map("Meta")
        return _TxnOp(
            "Node",
            node_op.string("Verb"),
            {"Node": record, "ModifyIndex": node.integer("ModifyIndex")},
        )
    service_op = item.sub("Service", "api.ServiceTxnOp")
    if service_op is not None:
        service = service_op.sub("Service", "api.AgentService") or Fields({}, "api.AgentService")
        return _TxnOp(
            "Service",
            service_op.string("Verb"),
            {
                "Node": service_op.string("Node"),
                "Service": service_record(service, txn_subset=True),
                "ModifyIndex": service.integer("ModifyIndex"),
            },
        )
    check_op = item.sub("Check", "api.CheckTxnOp")
    if check_op is not None:
        check = check_op.sub("Check", "api.HealthCheck") or Fields({}, "api.HealthCheck")
        record = check_record(check, check.string("Node"))
        record["CheckID"] = check.string("CheckID")  # checkPreApply fills it, in preCheck
        return _TxnOp(
            "Check",
            check_op.string("Verb"),
            {"Check": record, "ModifyIndex": check.integer("ModifyIndex")},
        )
    return None  # convertOps' switch has no default: the op is dropped


def _txn_precheck(backend: Backend, request: Request, ops: list[_TxnOp]) -> list[str | None]:
    """agent/consul/txn_endpoint.go preCheck: one error (or None) per op."""
    store = backend.store
    errors: list[str | None] = []
    for op in ops:
        error: str | None = None
        if op.kind == "KV":
            if not op.body["Key"] and op.verb != "delete-tree":
                error = "Must provide key"
            elif request.anonymous and op.verb not in ("get", "get-tree", "get-or-empty"):
                error = denied_text("key:write", op.body["Key"])
        elif op.verb not in _CATALOG_VERBS:
            error = f"unknown {op.kind.lower()} operation: {op.verb}"
        elif op.verb != "get":
            error = _txn_precheck_catalog(store, request, op)
        errors.append(error)
    return errors


def _txn_precheck_catalog(store: Store, request: Request, op: _TxnOp) -> str | None:
    if op.kind == "Node":
        node = op.body["Node"]
        if not node["Node"]:
            return "Must provide node"
        if node["ID"] and not UUID_RE.match(node["ID"]):
            return f"Bad node ID: uuid string is wrong length: {node['ID']!r}"
        return denied_text("node:write", node["Node"]) if request.anonymous else None
    if op.kind == "Service":
        return _txn_precheck_service(store, request, op)
    check = op.body["Check"]
    check["CheckID"] = check["CheckID"] or check["Name"]
    return denied_text("node:write", check["Node"]) if request.anonymous else None


def _txn_precheck_service(store: Store, request: Request, op: _TxnOp) -> str | None:
    service = op.body["Service"]
    try:
        service_pre_apply(service, require_id=op.verb in ("set", "cas"))
    except HTTPError as exc:
        return exc.message
    existing = store.service(op.body["Node"], service["ID"])
    if existing is not None and existing["Service"] != service["Service"]:
        return (
            "service name does not match existing service name for service ID "
            f'"{service["ID"]}" on node "{op.body["Node"]}"'
        )
    return denied_text("service:write", service["Service"]) if request.anonymous else None


class _TxnRunner:
    """agent/consul/state/txn.go: dispatch every op, collecting results and errors."""

    def __init__(self, store: Store, idx: int) -> None:
        self.store = store
        self.idx = idx

    def run(self, ops: list[_TxnOp]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, op in enumerate(ops):
            try:
                handler = getattr(self, f"_{op.kind.lower()}")
                results.extend(handler(op))
            except RaftError as exc:
                errors.append({"OpIndex": index, "What": str(exc)})
        return results, errors

    # -- KV
    def _kv(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, body, verb = self.store, op.body, op.verb
        key = body["Key"]
        existing = store.t.kv.get(key)
        entry: dict[str, Any] | None = None
        with_value = verb in ("get", "get-or-empty")
        if verb == "set":
            entry = store.kv_set(self.idx, key, body["Value"], body["Flags"])
        elif verb == "cas":
            entry = store.kv_cas(self.idx, key, body["Value"], body["Flags"], body["Index"])
            if entry is None:
                raise RaftError(f'failed to set key "{key}", index is stale')
        elif verb == "delete":
            store.kv_delete(self.idx, key)
        elif verb == "delete-cas":
            if not store.kv_delete_cas(self.idx, key, body["Index"]):
                raise RaftError(f'failed to delete key "{key}", index is stale')
        elif verb == "delete-tree":
            store.kv_delete_tree(self.idx, key)
        elif verb == "get":
            if existing is None:
                raise RaftError(f'key "{key}" doesn\'t exist')
            entry = existing
        elif verb == "get-or-empty":
            entry = existing or {**_EMPTY_ENTRY, "Key": key, "Flags": body["Flags"]}
        elif verb == "get-tree":
            return [{"KV": kv_view(e)} for e in store.kv_list(key)]
        else:
            entry = self._kv_checks(op, existing)
        return [] if entry is None else [{"KV": kv_view(entry, with_value=with_value)}]

    def _kv_checks(self, op: _TxnOp, existing: dict[str, Any] | None) -> dict[str, Any] | None:
        body, verb = op.body, op.verb
        key = body["Key"]
        if verb == "check-index":
            if existing is None:
                raise RaftError(f'failed to check index, key "{key}" doesn\'t exist')
            if existing["ModifyIndex"] != body["Index"]:
                raise RaftError(
                    f'failed index check for key "{key}", current modify index '
                    f"{existing['ModifyIndex']} != {body['Index']}"
                )
            return existing
        if verb == "check-not-exists":
            if existing is not None:
                raise RaftError(f'key "{key}" exists')
            return None
        if verb == "check-session":
            if existing is None:
                raise RaftError(f'failed to check session, key "{key}" doesn\'t exist')
            if existing["Session"] != body["Session"]:
                raise RaftError(
                    f'failed session check for key "{key}", current session '
                    f'"{existing["Session"]}" != "{body["Session"]}"'
                )
            return existing
        if verb in ("lock", "unlock"):
            if not body["Session"]:
                raise RaftError("missing session")
            if verb == "unlock" and existing is None:
                raise RaftError(
                    f'failed to unlock key "{key}", lock isn\'t held, or is held by another session'
                )
            raise RaftError(f'invalid session "{body["Session"]}"')
        raise RaftError(f'unknown KV verb "{verb}"')

    # -- Node
    def _node(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, node = self.store, op.body["Node"]
        name, cas = node["Node"], op.body["ModifyIndex"]
        existing = store.node(name)
        if op.verb == "get":
            if existing is None:
                raise RaftError(f'node "{name}" doesn\'t exist')
            return [{"Node": node_view(existing)}]
        if op.verb == "set":
            return [{"Node": node_view(store.ensure_node(self.idx, node))}]
        if op.verb == "cas":
            stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
            if stale or (existing is not None and existing["ModifyIndex"] != cas):
                raise RaftError(f'failed to set node "{name}", index is stale')
            return [{"Node": node_view(store.ensure_node(self.idx, node))}]
        if op.verb == "delete":
            store.delete_node(self.idx, name)
            return []
        if existing is None or existing["ModifyIndex"] != cas:
            raise RaftError(f'failed to delete node "{name}", index is stale')
        store.delete_node(self.idx, name)
        return []

    # -- Service
    def _service(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, node, service = self.store, op.body["Node"], op.body["Service"]
        sid, cas = service["ID"], op.body["ModifyIndex"]
        existing = store.service(node, sid)
        if op.verb == "get":
            if existing is None:
                raise RaftError(f'service "{sid}" on node "{node}" doesn\'t exist')
            return [{"Service": node_service_view(existing)}]
        if op.verb in ("set", "cas"):
            if op.verb == "cas":
                stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
                if stale or (existing is not None and existing["ModifyIndex"] != cas):
                    raise RaftError(
                        f'failed to set service "{sid}" on node "{node}", index is stale'
                    )
            record = store.ensure_service(self.idx, node, service)
            return [{"Service": node_service_view(record)}]
        if op.verb == "delete":
            store.delete_service(self.idx, node, sid)
            return []
        if existing is None or existing["ModifyIndex"] != cas:
            raise RaftError(f'failed to delete service "{sid}" on node "{node}", index is stale')
        store.delete_service(self.idx, node, sid)
        return []

    # -- Check
    def _check(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, check = self.store, op.body["Check"]
        node, cid, cas = check["Node"], check["CheckID"], op.body["ModifyIndex"]
        existing = store.check(node, cid)
        if op.verb == "get":
            if existing is None:
                raise RaftError(f'check "{cid}" on node "{node}" doesn\'t exist')
            return [{"Check": check_view(existing)}]
        if op.verb in ("set", "cas"):
            if op.verb == "cas":
                stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
                if stale or (existing is not None and existing["ModifyIndex"] != cas):
                    raise RaftError(f'failed to set check "{cid}" on node "{node}", index is stale')
            return [{"Check": check_view(store.ensure_check(self.idx, check))}]
        if op.verb == "delete":
            store.delete_check(self.idx, node, cid)
            return []
        if existing is None or existing["ModifyIndex"] != cas:
            raise RaftError(f'failed to delete check "{cid}" on node "{node}", index is stale')
        store.delete_check(self.idx, node, cid)
        return []


def _txn_conflict(errors: list[dict[str, Any]]) -> Reply:
    return json_reply({"Results": None, "Errors": errors}, status=409)


@router.route(r"/v1/txn", "PUT")
def _txn(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store = backend.store
    ops = _convert_txn_ops(backend, request)
    precheck = _txn_precheck(backend, request, ops)
    errors = [{"OpIndex": i, "What": e} for i, e in enumerate(precheck) if e is not None]
    if errors:
        return _txn_conflict(errors)
    if not any(op.is_write for op in ops):  # Txn.Read: no raft entry, query headers
        results, errors = _TxnRunner(store, 0).run(ops)
        reply = _txn_conflict(errors) if errors else _txn_success(results, request)
        reply.headers["X-Consul-KnownLeader"] = "true"
        reply.headers["X-Consul-LastContact"] = "0"
        return reply

    def write(idx: int) -> list[dict[str, Any]]:
        results, errors = _TxnRunner(store, idx).run(ops)
        if errors:
            raise _TxnFailed(errors)
        return results

    try:
        results = store.apply(write)
    except _TxnFailed as failed:
        return _txn_conflict(failed.errors)
    return _txn_success(results, request)


def _txn_success(results: list[dict[str, Any]], request: Request) -> Reply:
    if request.anonymous:
        results = []  # FilterTxnResults: the ops succeed, results the token may not read vanish
    return json_reply({"Results": results, "Errors": None})


class _TxnFailed(RaftError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("transaction failed")
        self.errors = errors
