"""The registrar's slice of Consul's API (KV, txn, catalog) behind a Protocol, with retries.

The client itself (transport, kept-alive connections, TLS, token, error mapping) is the one
every Lambda asset bundles: lambda/shared/consul_http.py. Besides its errors, a txn can fail
with TxnConflict: 409 from /v1/txn, with Consul's per-op Errors (a lost cas among them).
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import retry
from consul_http import (
    ConsulAuthError,
    ConsulError,
    ConsulHttp,
    ConsulRequestError,
    ConsulUnavailable,
    Json,
    StaticToken,
    TokenProvider,
    parse_address,
)

# Re-exported: the registrar's modules and tests name them through this module.
__all__ = [
    "Consul",
    "ConsulAuthError",
    "ConsulError",
    "ConsulRequestError",
    "ConsulUnavailable",
    "HttpConsul",
    "Json",
    "KVEntry",
    "RetryingConsul",
    "StaticToken",
    "TokenProvider",
    "TxnConflict",
    "TxnOpError",
    "parse_address",
]

T = TypeVar("T")


@dataclass(frozen=True)
class TxnOpError:
    op_index: int
    what: str


class TxnConflict(ConsulError):
    """409: the transaction was rolled back; `errors` say which op failed and why."""

    def __init__(self, errors: Sequence[TxnOpError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"op {e.op_index}: {e.what}" for e in self.errors), status=409)

    def failed_op(self, index: int) -> bool:
        return any(e.op_index == index for e in self.errors)


@dataclass(frozen=True)
class KVEntry:
    value: bytes
    modify_index: int


class Consul(Protocol):
    """The calls the registrar needs; tests may substitute any implementation."""

    def kv_get(self, key: str, *, consistent: bool = False) -> KVEntry | None: ...

    def txn(self, ops: Sequence[Mapping[str, Any]]) -> Json: ...

    def catalog_register(self, body: Mapping[str, Any]) -> None: ...

    def catalog_deregister(self, node: str) -> None: ...

    def service_instances(self, service: str, *, node: str) -> list[Json]: ...

    def node_services(self, node: str) -> list[Json] | None: ...


class HttpConsul(ConsulHttp):
    """The registrar's calls over the shared client (consul_http.ConsulHttp: transport, TLS,
    token, error mapping); RetryingConsul adds the retries."""

    # -- API ---------------------------------------------------------------------------------

    def kv_get(self, key: str, *, consistent: bool = False) -> KVEntry | None:
        path = "/v1/kv/" + urllib.parse.quote(key, safe="/") + ("?consistent" if consistent else "")
        status, data = self.request("GET", path, ok_statuses=(404,))
        if status == 404:
            return None
        entries = self.json("GET", path, data)
        if not isinstance(entries, list) or not entries:
            return None
        entry = entries[0]
        raw = entry.get("Value")
        return KVEntry(
            value=base64.b64decode(raw) if raw else b"",
            modify_index=int(entry["ModifyIndex"]),
        )

    def txn(self, ops: Sequence[Mapping[str, Any]]) -> Json:
        status, data = self.request("PUT", "/v1/txn", list(ops), ok_statuses=(409,))
        doc = self.json("PUT", "/v1/txn", data)
        if status == 409:
            errors = (doc or {}).get("Errors") or []
            raise TxnConflict(
                [TxnOpError(int(e.get("OpIndex", -1)), str(e.get("What", ""))) for e in errors]
            )
        return doc if isinstance(doc, dict) else {}

    def catalog_register(self, body: Mapping[str, Any]) -> None:
        self.request("PUT", "/v1/catalog/register", dict(body))

    def catalog_deregister(self, node: str) -> None:
        self.request("PUT", "/v1/catalog/deregister", {"Node": node})

    def service_instances(self, service: str, *, node: str) -> list[Json]:
        query = urllib.parse.urlencode({"filter": f'Node == "{node}"'})
        path = f"/v1/catalog/service/{urllib.parse.quote(service, safe='')}?{query}"
        _, data = self.request("GET", path)
        doc = self.json("GET", path, data)
        return [e for e in doc if isinstance(e, dict)] if isinstance(doc, list) else []

    def node_services(self, node: str) -> list[Json] | None:
        """Services on `node`, or None when the node does not exist."""
        path = f"/v1/catalog/node/{urllib.parse.quote(node, safe='')}"
        status, data = self.request("GET", path, ok_statuses=(404,))
        doc = self.json("GET", path, data) if status != 404 else None
        if not isinstance(doc, dict) or not doc.get("Node"):
            return None
        services = doc.get("Services") or {}
        return [s for s in services.values() if isinstance(s, dict)]


class RetryingConsul:
    """A Consul whose every call retries ConsulUnavailable within the invocation's budget.

    Every call the registrar makes is idempotent or guarded: a txn retried after a lost
    response fails its cas (409) and the caller decides again from the record it then reads;
    a catalog register or deregister writes the same state again. This is the only place a
    write is sent twice (the transport resends reads only: connections.py).

    One hazard is left to the caller: a catalog register sent without an answer may land after
    everything the caller does next, its resend and its re-read of the record included, and
    then recreate the node of a task stopped meanwhile. Nothing here can wait for it, so
    `unanswered_registers` counts them, and a message that sent one is not acknowledged
    (registrar.Registrar.handle): SQS redelivers it after the visibility timeout, and the
    redelivery checks the catalog again. (A late deregister only removes a node whose task
    stopped: a stop is final, so it is harmless.)
    """

    def __init__(
        self,
        inner: Consul,
        *,
        policy: retry.RetryPolicy,
        budget: retry.Budget,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._budget = budget
        self._sleep = sleep
        self.unanswered_registers = 0

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return retry.call(
            fn, what=what, policy=self._policy, budget=self._budget, sleep=self._sleep
        )

    def kv_get(self, key: str, *, consistent: bool = False) -> KVEntry | None:
        return self._call(f"GET kv {key}", lambda: self._inner.kv_get(key, consistent=consistent))

    def txn(self, ops: Sequence[Mapping[str, Any]]) -> Json:
        return self._call("PUT txn", lambda: self._inner.txn(ops))

    def catalog_register(self, body: Mapping[str, Any]) -> None:
        def attempt() -> None:
            try:
                self._inner.catalog_register(body)
            except ConsulUnavailable as err:
                if err.unanswered:
                    self.unanswered_registers += 1
                raise

        self._call("PUT catalog/register", attempt)

    def catalog_deregister(self, node: str) -> None:
        self._call("PUT catalog/deregister", lambda: self._inner.catalog_deregister(node))

    def service_instances(self, service: str, *, node: str) -> list[Json]:
        return self._call(
            f"GET catalog/service/{service}",
            lambda: self._inner.service_instances(service, node=node),
        )

    def node_services(self, node: str) -> list[Json] | None:
        return self._call(f"GET catalog/node/{node}", lambda: self._inner.node_services(node))
