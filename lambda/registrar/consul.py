"""A small Consul HTTP client (http.client + ssl, no dependency) behind a Protocol.

Requests go over the container's kept-alive connections (connections.py), which also decides
what may be sent again when a reused connection turns out to be dead (reads only).

Errors are mapped to what the caller does about them:
- ConsulUnavailable (retryable): 429, 5xx, timeouts, refused or reset connections;
- TxnConflict: 409 from /v1/txn, with Consul's per-op Errors (a lost cas among them);
- ConsulAuthError: 403 even after reading the token again (it may have been rotated);
- ConsulRequestError: any other refusal (400, 413, ...): retrying the same request is useless.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import retry
from connections import ConnectionPool, NotSent
from retry import RetryableError

T = TypeVar("T")

Json = dict[str, Any]


class ConsulError(Exception):
    """Any failure talking to Consul."""


class ConsulUnavailable(ConsulError, RetryableError):
    """Consul did not answer, or answered 429/5xx: try again later.

    `unanswered`: the request may have reached Consul and no answer came back (a timeout, a
    reset, a dropped connection; not a failed connect). Consul may still apply such a write
    later, and nothing bounds how much later: in 1.21 `CatalogRegister`
    (agent/catalog_endpoint.go) passes `req.Context()` to `s.agent.RPC`, but `(*Server).RPC`
    (agent/consul/server.go) uses the context only for the caller's address (rate limiting)
    and the Raft apply takes none, so a client giving up stops nothing; how long the servers
    may hold the write is in recheck.py.
    """

    def __init__(self, message: str, *, unanswered: bool = False) -> None:
        super().__init__(message)
        self.unanswered = unanswered


class ConsulAuthError(ConsulError):
    """403 with the freshest token we can get: the ACL policy or the token is wrong."""


class ConsulRequestError(ConsulError):
    """Consul refused the request itself (4xx other than 403/409)."""


@dataclass(frozen=True)
class TxnOpError:
    op_index: int
    what: str


class TxnConflict(ConsulError):
    """409: the transaction was rolled back; `errors` say which op failed and why."""

    def __init__(self, errors: Sequence[TxnOpError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"op {e.op_index}: {e.what}" for e in self.errors))

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


class TokenProvider(Protocol):
    """The ACL token, cached; `refresh=True` reads it again from its source."""

    @property
    def refreshable(self) -> bool: ...

    def get(self, *, refresh: bool = False) -> str | None: ...


class StaticToken:
    """CONSUL_HTTP_TOKEN (local runs) or no token at all."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    @property
    def refreshable(self) -> bool:
        return False

    def get(self, *, refresh: bool = False) -> str | None:
        return self._token


def parse_address(address: str) -> tuple[str, str]:
    """`CONSUL_HTTP_ADDR` -> (scheme, base URL). Accepts http(s)://host:port, with no path."""
    parsed = urllib.parse.urlsplit(address.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"CONSUL_HTTP_ADDR must look like https://consul.example:8501 or "
            f"http://127.0.0.1:8500, got {address!r}"
        )
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError(f"CONSUL_HTTP_ADDR must not carry a path or query, got {address!r}")
    return parsed.scheme, f"{parsed.scheme}://{parsed.netloc}"


_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class HttpConsul:
    """Consul's HTTP API. Per-request timeout: min(timeout_s, remaining budget).

    `connections` is the container's pool for `address` (registrar.Runtime keeps it), so an
    invocation's client reuses the connections of the previous invocations.
    """

    def __init__(
        self,
        address: str,
        *,
        token: TokenProvider,
        connections: ConnectionPool,
        timeout_s: float = 5.0,
        remaining_s: Callable[[], float] | None = None,
    ) -> None:
        parse_address(address)
        self._token = token
        self._connections = connections
        self._timeout_s = timeout_s
        self._remaining_s = remaining_s

    # -- transport ---------------------------------------------------------------------------

    def _timeout(self) -> float:
        left = self._remaining_s() if self._remaining_s else self._timeout_s
        return max(0.05, min(self._timeout_s, left))

    def _send(
        self, method: str, path: str, body: bytes | None, token: str | None
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["X-Consul-Token"] = token
        try:
            return self._connections.request(
                method, path, body=body, headers=headers, timeout=self._timeout()
            )
        except (http.client.HTTPException, OSError) as err:
            # OSError covers timeouts, refused/reset connections and TLS failures. A write that
            # fails here may have been applied, or may still be: RetryingConsul's resend is
            # guarded (see there). Only a failed connect proves nothing was sent.
            raise ConsulUnavailable(
                f"{method} {path}: {str(err) or type(err).__name__}",
                unanswered=not isinstance(err, (ConnectionRefusedError, NotSent)),
            ) from err

    def _request(
        self, method: str, path: str, payload: object = None, *, ok_statuses: tuple[int, ...] = ()
    ) -> tuple[int, bytes]:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self._send(method, path, body, self._token.get())
        if status == 403 and self._token.refreshable:
            status, data = self._send(method, path, body, self._token.get(refresh=True))
        if 200 <= status < 300 or status in ok_statuses:
            return status, data
        excerpt = data[:300].decode("utf-8", "replace").strip()
        if status in _RETRYABLE_STATUS:
            raise ConsulUnavailable(f"{method} {path}: HTTP {status}: {excerpt}")
        if status == 403:
            raise ConsulAuthError(f"{method} {path}: HTTP 403: {excerpt}")
        raise ConsulRequestError(f"{method} {path}: HTTP {status}: {excerpt}")

    @staticmethod
    def _json(method: str, path: str, data: bytes) -> Any:
        try:
            return json.loads(data) if data else None
        except ValueError as err:
            # A proxy or load balancer answering instead of Consul: worth another try.
            raise ConsulUnavailable(f"{method} {path}: response is not JSON: {err}") from err

    # -- API ---------------------------------------------------------------------------------

    def kv_get(self, key: str, *, consistent: bool = False) -> KVEntry | None:
        path = "/v1/kv/" + urllib.parse.quote(key, safe="/") + ("?consistent" if consistent else "")
        status, data = self._request("GET", path, ok_statuses=(404,))
        if status == 404:
            return None
        entries = self._json("GET", path, data)
        if not isinstance(entries, list) or not entries:
            return None
        entry = entries[0]
        raw = entry.get("Value")
        return KVEntry(
            value=base64.b64decode(raw) if raw else b"",
            modify_index=int(entry["ModifyIndex"]),
        )

    def txn(self, ops: Sequence[Mapping[str, Any]]) -> Json:
        status, data = self._request("PUT", "/v1/txn", list(ops), ok_statuses=(409,))
        doc = self._json("PUT", "/v1/txn", data)
        if status == 409:
            errors = (doc or {}).get("Errors") or []
            raise TxnConflict(
                [TxnOpError(int(e.get("OpIndex", -1)), str(e.get("What", ""))) for e in errors]
            )
        return doc if isinstance(doc, dict) else {}

    def catalog_register(self, body: Mapping[str, Any]) -> None:
        self._request("PUT", "/v1/catalog/register", dict(body))

    def catalog_deregister(self, node: str) -> None:
        self._request("PUT", "/v1/catalog/deregister", {"Node": node})

    def service_instances(self, service: str, *, node: str) -> list[Json]:
        query = urllib.parse.urlencode({"filter": f'Node == "{node}"'})
        path = f"/v1/catalog/service/{urllib.parse.quote(service, safe='')}?{query}"
        _, data = self._request("GET", path)
        doc = self._json("GET", path, data)
        return [e for e in doc if isinstance(e, dict)] if isinstance(doc, list) else []

    def node_services(self, node: str) -> list[Json] | None:
        """Services on `node`, or None when the node does not exist."""
        path = f"/v1/catalog/node/{urllib.parse.quote(node, safe='')}"
        status, data = self._request("GET", path, ok_statuses=(404,))
        doc = self._json("GET", path, data) if status != 404 else None
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
    `unanswered_registers` counts them, and the handler sends a delayed re-check of the
    message to its queue (recheck.py), which checks the catalog again. (A late deregister
    only removes a node whose task stopped: a stop is final, so it is harmless.)
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
