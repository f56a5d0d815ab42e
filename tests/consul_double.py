"""An in-process HTTP double of the Consul HTTP API, faithful where our code depends on Consul.

No Consul binary can run on the build machines, so the registrar Lambda and the ACL/config-entry
custom resource are tested against this double instead. It answers over real HTTP on 127.0.0.1 so
clients exercise their real transport, retries and timeouts, and it lets a test inject the
failures a real cluster produces (5xx, 429, dropped connections, slow answers, writes applied
after their client gave up, no leader).

Usage::

    with ConsulDouble(acl_tokens={"root-token"}) as consul:
        os.environ["CONSUL_HTTP_ADDR"] = consul.url
        consul.inject(kind="status", path_prefix="/v1/txn", status=500, times=1)
        ...
        assert consul.services(node="ecs-task-abc")[0]["ServiceMeta"]["task-id"] == "abc"

Beyond the interface the registrar and custom-resource tests were promised, the double offers
``seed_register``/``seed_kv``/``seed_config_entry`` (state without HTTP traffic), ``warnings``
(things Consul accepts but this project must never do, such as a ``serfHealth`` check),
``blocked_queries`` (to write only once a watcher is waiting), ``land_late``/``wait_idle`` (to
decide when writes whose client gave up land, and to wait for every request to be served) and
``internal_errors`` (bugs in the double itself; the pytest fixtures fail the test when it is not
empty).

Standard library only. One lock (a Condition) guards all state; blocking queries wait on it.
This module holds the server, faults, recording and the public API; ``tests/consul_double_impl/``
holds Consul's behaviour, one module per concern (state store, txn, catalog, kv, acl, ...).

What was checked against hashicorp/consul sources (read through the code search index; the newest
stored versions unless noted), and where:

- agent/txn_endpoint.go (``convertOps``): at most 128 ops (``maxTxnOps = 128``), else 413
  "Transaction contains too many operations (N > 128)"; body over 512 KiB -> 413; undecodable body
  -> 400 "Failed to parse body: ..."; ops with no KV/Node/Service/Check member are silently dropped
  (so OpIndex counts only the kept ops); a read-only txn goes to ``Txn.Read`` (no raft index used);
  409 carries the whole ``{"Results": null, "Errors": [...]}`` body. The Service op mapping keeps
  only ID, Service, Kind, Tags, Address, Meta, Port, Weights (always set: absent Weights become
  {0,0}, which the state store then replaces by {1,1}), EnableTagOverride and, from Proxy, only
  DestinationServiceName, DestinationServiceID, LocalServiceAddress, LocalServicePort,
  LocalServiceSocketPath, MeshGateway.Mode and TransparentProxy{DialedDirectly,
  OutboundListenerPort}. Everything else (Proxy.Upstreams, Proxy.Config, Proxy.Expose, Proxy.Mode,
  TaggedAddresses, SocketPath, Connect) is dropped, and a txn ``set`` replaces the whole service.
- agent/consul/txn_endpoint.go (``preCheck``): per-op validation before raft; a failure here is a
  409 without using a raft index. Service set/cas/delete/delete-cas all run ``servicePreApply``
  (so a Service *delete* needs ``Service.Service`` when it has an ID: "Must provide service name
  (Service.Service) when service ID is provided"), and an existing service ID may not be written
  under another name ("service name does not match existing service name ..."). Node ops need a
  node name ("Must provide node"); unknown verbs fail with "unknown node operation: X" etc.
- agent/consul/state/txn.go: verbs and error texts; dispatch runs EVERY op (ops see the effects
  of earlier ops) and reports every failing OpIndex; any error rolls the whole txn back. ``get``
  of a missing KV/node/service/check fails the txn ("key \\"k\\" doesn't exist"); ``check-index``,
  ``check-not-exists``, ``check-session``, ``get-or-empty``, ``lock``/``unlock`` (no sessions
  exist here, so they fail like Consul does with an unknown session). Set/cas results carry the
  entry without its value; delete verbs return no result.
- agent/consul/state/kvs.go: cas index 0 = "only if absent"; KV delete-cas of a missing key
  returns true; a set that changes nothing keeps the old ModifyIndex. Single-key reads report the
  key's ModifyIndex (the KV table index when absent).
- agent/consul/state/catalog.go: register skips unchanged node/service/check writes (indexes keep
  their value); node delete removes its services and checks; service delete removes its checks;
  services and checks need their node ("Missing node registration") and checks their service
  ("Missing service registration"); node/service/check cas semantics (0 = must not exist).
- agent/consul/catalog_endpoint.go + agent/http.go: validation errors of catalog register are
  plain RPC errors, which the HTTP layer answers with **500**, not 400 ("Must provide node",
  "Must provide address if SkipNodeUpdate is not set", the multierror text of
  ``NodeService.Validate`` such as "Proxy.DestinationServiceName must be non-empty for Connect
  proxy services"). hashicorp/consul-esm#9 shows the same 500. Deregister precedence: ServiceID,
  then CheckID, then the whole node; deregistering something absent still answers ``true``.
- agent/catalog_endpoint.go: ``CatalogRegister``/``CatalogDeregister`` read the whole body, then
  make the RPC. Older versions call ``s.agent.RPC("Catalog.Register", &args, &out)``; current
  ones (1.21) ``s.agent.RPC(req.Context(), "Catalog.Register", &args, &out)``, but
  ``(*Server).RPC`` (agent/consul/server.go) uses the context only for the caller's address
  (rate limiting) and the Raft apply takes no context. Either way a client that times out or
  drops the connection does not stop the write, which Consul applies when the RPC gets to it
  (the ``late`` fault). ``land_late`` lands kept writes in arrival order; Consul may apply two
  concurrent late writes in either order.
- agent/catalog_endpoint.go: ``/v1/catalog/node/:n`` answers 200 ``null`` for an unknown node;
  ``/v1/catalog/node-services/:n`` answers ``{"Node": null, "Services": null}``; nil tags become [].
- agent/http.go: ``X-Consul-Index`` is never 0 (0 is sent as 1); ``X-Consul-KnownLeader`` and
  ``X-Consul-LastContact`` on reads; a wrong method is 405 with an Allow header; ACL "not found"
  and "permission denied" errors are 403 with the error text; any other RPC error is **500**,
  including a bad ``?filter=`` ("Failed to create boolean expression evaluator: ...": the filter
  is compiled in the RPC, so it is not a 400 as one might expect).
- agent/kvs_endpoint.go: 404 with headers for a missing key, ``?raw``, ``?keys`` (+separator),
  ``?recurse``, ``?cas``, ``?flags``, "Conflicting flags" 400, PUT answers true (or the cas
  result), DELETE answers true (or the delete-cas result).
- agent/acl_endpoint.go, agent/consul/auth/token_writer.go, agent/consul/acl_endpoint.go: ACLs off
  -> 401 "ACL support disabled"; caller-chosen AccessorID/SecretID must be UUIDs and unused
  ("Invalid Token: AccessorID is already in use" -- a plain error, so **500**, not 400); policy
  links by ID or Name ("No such ACL policy with name ..."); missing policy/token on GET -> 404;
  DELETE of a missing policy/token -> true; a token cannot delete itself.
- agent/config_endpoint.go, state/config_entry.go: PUT answers the bool, ``?cas`` (0 = create
  only), GET missing -> 404 "Config entry not found for \\"kind\\" / \\"name\\"", DELETE answers
  ``{}`` (or the bool with ``?cas``; delete-cas of a missing entry is false), unknown kind -> 400.

Deliberate simplifications (documented so nobody mistakes them for Consul behaviour):

- ACL: "default deny". A request with an accepted token may do anything (policy Rules are stored
  verbatim, never parsed nor enforced). An unknown token gets 403 "ACL not found" on every
  endpoint but /v1/status/* and /v1/acl/token/self (404, see below). A request without a token is
  the anonymous token: writes get 403 "Permission denied: ...", txn write ops get a "Permission
  denied" error each (409), catalog and health reads are filtered to empty (with
  ``X-Consul-Results-Filtered-By-ACLs: true``), KV and config single reads get 403. Accepted
  tokens: the constructor's (or ``set_tokens``) plus the SecretIDs of tokens created through the
  API. The initial tokens are not listed by /v1/acl/tokens.
- Raft: one simulated log index, ``index``. Every accepted write (including one that changes
  nothing, or a cas/txn that fails inside the state store) consumes an index, as in Consul;
  rejections before raft (validation, ACL, preCheck) do not. Never assume indexes are contiguous.
- Blocking: ``?index=N&wait=D`` waits until the endpoint's index > N or D elapses (no jitter; D
  defaults to 5m and is capped at 10m like Consul). Per-endpoint indexes follow Consul's tables
  (nodes, services, per-service-name, checks, kvs+tombstones, config, acl).
- Filters: a subset of go-bexpr (``consul_double_impl/bexpr.py`` lists it). Selectors are
  checked against the documented field set of each endpoint; unknown selectors and bad syntax
  are 500 like Consul.
- No leader (``has_leader = False``): /v1/status/leader answers ``""`` and every other endpoint
  500 "No cluster leader", except GETs with ``?stale``.
- Leader elected, ACLs not ready (``acls_not_ready_for(seconds)``): /v1/status/leader already
  names a leader, but for ``seconds`` the initial tokens and the anonymous token do not exist
  yet. A new leader creates the ``initial_management`` token (and the anonymous token) only in
  ``initializeACLs``, which ``establishLeadership`` runs after the Raft barrier
  (agent/consul/leader.go). In that window Consul answers two different ways, and so does the
  double:

  - ``GET /v1/acl/token/self`` does not resolve the caller's token: ``ACLTokenSelf``
    (agent/acl_endpoint.go, hashicorp/consul 7fa1034, lines 344-378) calls the RPC
    ``ACL.TokenRead`` with ``TokenIDType: ACLTokenSecret``, and ``TokenRead``
    (agent/consul/acl_endpoint.go) only reads ``state.ACLTokenGetBySecret`` for that type ("no
    extra validation is needed here. If you have the secret ID you can read it."). No token,
    no error: the endpoint answers **404 "Supplied token does not exist"** (line 374). It
    answers the same for any secret that is not a token, in or out of the window.
  - Every endpoint that resolves the caller's token (policies, tokens, catalog, KV, config...)
    gets ``acl.ErrNotFound`` from the resolver, which agent/http.go answers with **403 "ACL not
    found"**; so does a request without a token (the anonymous token is missing too).

  Tokens created through the API stay valid (they are in the Raft state already). The window is
  real time, measured by ``time.monotonic``.
- Not modelled: sessions, namespaces/partitions, peering, virtual IPs, node IDs as identity
  (renames), prepared queries, agent endpoints, ``?near``, consistency modes beyond ``?stale``,
  HCL parsing of policy Rules, normalisation of config entries (stored as sent, Kind/Name set).
  Catalog node names are matched case-insensitively, as Consul's lowercase index does.

Not confirmed (wording or behaviour taken from memory or inference, not read in source): the exact
404 text of a missing ACL policy/token, the check-node-mismatch text, the Upstream validation
texts, the meta validation texts, the anonymous "Permission denied" detail, and whether Consul
answers a catalog read filtered by ACLs for an unknown *node* with null.
"""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from tests.consul_double_impl import acl, catalog, config, kv, txn
from tests.consul_double_impl.errors import HTTPError, RaftError
from tests.consul_double_impl.records import check_view, node_view, service_node_view
from tests.consul_double_impl.routing import (
    Reply,
    Request,
    Route,
    blocking_params,
    dumps,
    text_reply,
)
from tests.consul_double_impl.store import Store

__all__ = ["ConsulDouble", "RecordedRequest"]

# Every endpoint, in match order (first match wins; a path matched with another method is a 405).
ROUTES: tuple[Route, ...] = (
    *catalog.router.routes,
    *kv.router.routes,
    *txn.router.routes,
    *config.router.routes,
    *acl.router.routes,
)
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
FaultKind = Literal["status", "refuse", "delay", "late"]


@dataclass
class RecordedRequest:
    """One request the double received. ``status`` 0 means the connection was dropped."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    body: bytes


@dataclass
class _Fault:
    kind: FaultKind
    path_prefix: str
    method: str | None
    status: int
    delay: float
    times: int
    exact: bool = False

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method is None or self.method.upper() == method
        if self.exact:
            return method_ok and path == self.path_prefix
        return method_ok and path.startswith(self.path_prefix)


_FAULT_TEXT = {
    429: "rate limit exceeded, try again later or against a different server",
    500: "rpc error making call: injected fault",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops SYNs when many clients connect at once (each
    # then waits a 1 s retransmit); Go's listener, like Consul's, uses the system maximum.
    request_queue_size = socket.SOMAXCONN
    double: ConsulDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped connections are normal here (refuse faults, stop()); anything else is a bug."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            self.double._internal_error(f"connection from {client_address}: {error!r}")


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead of stderr."""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._track(self.connection, opened=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.double._track(self.connection, opened=False)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(split.path),
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.double._dispatch(request)
        if reply is None:  # refuse: drop the connection without a response
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client went away (or stop() dropped the connection)
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve


class ConsulDouble:
    """A Consul server (single-node cluster, one datacenter) speaking the HTTP API on 127.0.0.1.

    acl_tokens: None disables ACLs; otherwise the SecretIDs accepted for HTTP auth (in
    ``X-Consul-Token``, ``Authorization: Bearer`` or ``?token=``), with default-deny for anonymous.
    datacenter: the only datacenter; requests for another get 500 "No path to datacenter".
    """

    def __init__(self, *, acl_tokens: Iterable[str] | None = None, datacenter: str = "dc1") -> None:
        self._cond = threading.Condition()
        self._store = Store(datacenter)
        self._backend = _Backend(self)
        self._initial_tokens: frozenset[str] | None = (
            None if acl_tokens is None else frozenset(acl_tokens)
        )
        self._faults: list[_Fault] = []
        self._late: list[Request] = []
        self._serving = 0
        self._acls_ready_at = 0.0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._blocked = 0
        self.datacenter = datacenter
        self.url = ""
        self.latency = 0.0
        self.has_leader = True
        # Key prefixes the accepted tokens may not read (see hide_keys).
        self.unreadable_keys: tuple[str, ...] = ()
        self.requests: list[RecordedRequest] = []
        self.internal_errors: list[str] = []  # bugs in the double itself; fixtures assert empty

    # -- lifecycle
    def start(self) -> ConsulDouble:
        server = _Server(("127.0.0.1", 0), _RequestHandler)
        server.double = self
        self._server = server
        self._stopping = False
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},  # shutdown() waits up to one interval
            name="consul-double",
            daemon=True,
        )
        self._thread.start()
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving, wake blocked queries and drop open keep-alive connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            connections = list(self._connections)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _internal_error(self, text: str) -> None:
        with self._cond:
            self.internal_errors.append(text)

    def _track(self, connection: socket.socket, *, opened: bool) -> None:
        with self._cond:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # -- configuration at runtime
    @property
    def index(self) -> int:
        """The raft-like index: every accepted write consumes one."""
        with self._cond:
            return self._store.index

    @property
    def blocked_queries(self) -> int:
        """Blocking queries waiting right now: lets a test write only once a watcher waits."""
        with self._cond:
            return self._blocked

    @property
    def warnings(self) -> list[str]:
        """Things Consul accepts but this project must never do (e.g. a 'serfHealth' check)."""
        with self._cond:
            return list(self._store.warnings)

    def set_tokens(self, tokens: Iterable[str] | None) -> None:
        """Replace the initial tokens (None turns ACLs off). API-created tokens stay valid."""
        with self._cond:
            self._initial_tokens = None if tokens is None else frozenset(tokens)

    def hide_keys(self, *prefixes: str) -> None:
        """The accepted tokens lose key:read on `prefixes`, as a policy without a matching
        `key_prefix` rule: a recursive KV read leaves those entries out and answers
        ``X-Consul-Results-Filtered-By-ACLs: true``, on its 200 and on the 404 of a prefix
        filtered to nothing (agent/consul/kvs_endpoint.go KVS.List: ``FilterDirEnt`` then
        ``ResultsFilteredByACLs = total != len(ent)``; agent/kvs_endpoint.go KVSGet: setMeta
        before the 404 of an empty list; agent/http.go setResultsFilteredByACLs)."""
        with self._cond:
            self.unreadable_keys = prefixes

    def acls_not_ready_for(self, seconds: float) -> None:
        """A leader exists but has not created the initial tokens yet, for `seconds`:
        /v1/acl/token/self answers 404 "Supplied token does not exist" for them, every endpoint
        that resolves a token 403 "ACL not found" (see the module docstring)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._cond:
            self._acls_ready_at = time.monotonic() + seconds

    def inject(
        self,
        *,
        kind: FaultKind,
        path_prefix: str = "/",
        method: str | None = None,
        status: int = 500,
        delay: float = 0.0,
        times: int = 1,
        exact: bool = False,
    ) -> None:
        """Make the next ``times`` matching requests fail (-1: all of them), oldest fault first.

        A request matches when its path (without the query) starts with ``path_prefix``, or
        with ``exact``, equals it (a KV prefix's read but not the reads of its sub-prefixes).

        status: answer ``status`` without touching state (429/503 carry ``Retry-After: 1``).
        refuse: close the connection without any response. delay: sleep, then serve normally.
        late: close the connection without any response and keep the request; ``land_late()``
        applies it later, as Consul does with a write whose client gave up on it (the client
        cannot tell this from ``refuse``). Unlike ``delay``, when it lands is up to the test,
        not to a race between a sleep and the client's timeout.
        """
        if kind not in ("status", "refuse", "delay", "late"):
            raise ValueError(f"kind must be 'status', 'refuse', 'delay' or 'late', got {kind!r}")
        if times == 0 or times < -1:
            raise ValueError(f"times must be a positive count or -1 (forever), got {times}")
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        with self._cond:
            self._faults.append(_Fault(kind, path_prefix, method, status, delay, times, exact))

    def clear_faults(self) -> None:
        """Forget the faults not yet used up (requests kept by ``late`` faults stay kept)."""
        with self._cond:
            self._faults.clear()

    def land_late(self) -> int:
        """Apply the requests kept by ``late`` faults, in arrival order; how many there were."""
        with self._cond:
            kept, self._late = self._late, []
        for request in kept:  # recorded when it arrived, with status 0
            self._serve_request(request, record=False)
        return len(kept)

    def requests_in_service(self) -> int:
        """Requests read and not yet answered (those kept by ``late`` faults are not counted)."""
        with self._cond:
            return self._serving

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being served: every answer given, every write applied.

        Raises TimeoutError after ``timeout`` seconds (a blocking query never ends by itself).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._serving == 0, timeout):
                raise TimeoutError(f"{self._serving} request(s) still being served")

    # -- recorded traffic
    def reset_requests(self) -> None:
        with self._cond:
            self.requests.clear()

    def count(self, *, method: str | None = None, path_prefix: str = "/") -> int:
        with self._cond:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
            )

    def writes(self) -> int:
        """Recorded PUT/POST/DELETE requests, whatever their outcome (faults included)."""
        with self._cond:
            return sum(1 for r in self.requests if r.method in WRITE_METHODS)

    # -- direct state inspection (deep copies in Consul's JSON shapes)
    def nodes(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {n["Node"]: copy.deepcopy(node_view(n)) for n in self._store.t.nodes.values()}

    def services(self, node: str | None = None) -> list[dict[str, Any]]:
        """Catalog/service shaped entries (ServiceNode), for one node or all, by (node, ID)."""
        with self._cond:
            store = self._store
            return [
                copy.deepcopy(service_node_view(store.t.nodes[node_key], service))
                for (node_key, _), service in sorted(store.t.services.items())
                if node is None or node_key == node.lower()
            ]

    def checks(self, node: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [
                copy.deepcopy(check_view(check))
                for (node_key, _), check in sorted(self._store.t.checks.items())
                if node is None or node_key == node.lower()
            ]

    def kv(self) -> dict[str, tuple[bytes, int]]:
        with self._cond:
            return {
                key: (entry["Value"] or b"", entry["ModifyIndex"])
                for key, entry in sorted(self._store.t.kv.items())
            }

    def config_entries(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._store.t.config)

    def acl_policies(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._store.t.policies)

    def acl_tokens(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {a: self._store.token_view(t) for a, t in self._store.t.tokens.items()}

    # -- seeding without HTTP (not recorded; consumes raft indexes like the HTTP calls)
    def seed_register(self, registration: dict[str, Any]) -> None:
        """Apply a /v1/catalog/register body directly. Raises ValueError on a rejected body."""
        request = Request("PUT", "/v1/catalog/register", {}, {}, dumps(registration))
        self._seed(lambda: catalog.register(self._backend, request, _EMPTY_MATCH))

    def seed_txn(self, ops: list[dict[str, Any]]) -> None:
        """Apply a /v1/txn body directly, as Consul would (all or nothing); for building large
        catalogs fast (bench/reconcile_scale.py). Raises ValueError when Consul would refuse."""
        request = Request("PUT", "/v1/txn", {}, {}, dumps(ops))
        self._seed(lambda: txn._txn(self._backend, request, _EMPTY_MATCH))

    @contextlib.contextmanager
    def bulk_seeding(self) -> Iterator[None]:
        """Seed without the all-or-nothing snapshot of every write (a copy of every table, so
        seeding n entries costs O(n^2)): for the bench's 100,000-task catalogs. A seed that
        fails inside leaves what it had written; the caller fails anyway."""
        with self._cond:
            self._store.snapshots = False
        try:
            yield
        finally:
            with self._cond:
                self._store.snapshots = True

    def seed_kv(self, key: str, value: bytes, flags: int = 0) -> int:
        """Set a KV entry directly; returns its ModifyIndex."""
        with self._cond:
            entry = self._store.apply(lambda idx: self._store.kv_set(idx, key, value, flags))
            self._cond.notify_all()
            modify_index: int = entry["ModifyIndex"]
            return modify_index

    def seed_config_entry(self, entry: dict[str, Any]) -> None:
        """Apply a /v1/config body directly. Raises ValueError on a rejected entry."""
        request = Request("PUT", "/v1/config", {}, {}, dumps(entry))
        self._seed(lambda: config.apply_entry(self._backend, request, _EMPTY_MATCH))

    def _seed(self, call: Callable[[], Reply]) -> None:
        with self._cond:
            try:
                reply = call()
            except (HTTPError, RaftError) as exc:
                raise ValueError(f"Consul would reject this: {exc}") from None
            finally:
                self._cond.notify_all()
            if reply.status != 200:
                raise ValueError(f"Consul would reject this: {reply.body.decode()}")

    # -- request handling
    def _take_fault(self, request: Request) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(request.method, request.path):
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _record(self, request: Request, status: int) -> None:
        self.requests.append(
            RecordedRequest(
                request.method, request.path, copy.deepcopy(request.query), status, request.body
            )
        )

    def _dispatch(self, request: Request) -> Reply | None:
        with self._cond:
            self._serving += 1
        try:
            return self._dispatch_serving(request)
        finally:
            with self._cond:
                self._serving -= 1
                self._cond.notify_all()

    def _dispatch_serving(self, request: Request) -> Reply | None:
        if self.latency > 0:
            time.sleep(self.latency)
        with self._cond:
            fault = self._take_fault(request)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        elif fault is not None:
            with self._cond:
                self._record(request, 0 if fault.kind in ("refuse", "late") else fault.status)
                if fault.kind == "late":
                    self._late.append(request)
            if fault.kind in ("refuse", "late"):
                return None
            reply = text_reply(
                fault.status, _FAULT_TEXT.get(fault.status, f"injected fault {fault.status}")
            )
            if fault.status in (429, 503):
                reply.headers["Retry-After"] = "1"
            return reply
        return self._serve_request(request)

    def _serve_request(self, request: Request, *, record: bool = True) -> Reply:
        try:
            reply = self._handle(request)
        except HTTPError as exc:
            reply = text_reply(exc.status, exc.message)
            reply.headers.update(exc.headers)
        except RaftError as exc:
            reply = text_reply(500, str(exc))
        except Exception as exc:  # a bug in the double: answer, and make the fixture fail
            self._internal_error(f"{request.method} {request.path}: {exc!r}")
            reply = text_reply(500, f"consul double internal error: {exc!r}")
        if record:
            with self._cond:
                self._record(request, reply.status)
        return reply

    def _handle(self, request: Request) -> Reply:
        route, match = self._find_route(request)
        if not route.status_endpoint:
            self._check_leader_and_dc(request)
            self._authenticate(request, route)
        if route.query and request.method == "GET":
            return self._run_query(route, request, match)
        with self._cond:
            try:
                return route.handler(self._backend, request, match)
            finally:
                self._cond.notify_all()

    def _find_route(self, request: Request) -> tuple[Route, re.Match[str]]:
        allowed: list[str] = []
        for route in ROUTES:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method in route.methods:
                return route, match
            allowed.extend(route.methods)
        if allowed:
            methods = ",".join(("OPTIONS", *allowed))
            raise HTTPError(405, f"method {request.method} not allowed", {"Allow": methods})
        raise HTTPError(404, "Invalid URL path: not a recognized HTTP API endpoint\n")

    def _check_leader_and_dc(self, request: Request) -> None:
        stale_read = request.method == "GET" and request.flag("stale")
        if not self.has_leader and not stale_read:
            raise HTTPError(500, "No cluster leader")
        dc = request.param("dc")
        if dc and dc != self.datacenter:
            raise HTTPError(500, "No path to datacenter")

    def _authenticate(self, request: Request, route: Route) -> None:
        token = request.headers.get("x-consul-token", "")
        authorization = request.headers.get("authorization", "")
        if not token and authorization.lower().startswith("bearer "):
            token = authorization[len("bearer ") :].strip()
        token = token or (request.param("token") or "")
        request.token = token
        if not route.resolves_token:
            return  # the handler looks the secret up itself
        with self._cond:
            initial = self._existing_initial_tokens()
            if initial is None:
                return
            if not token:
                if not self._acls_ready():  # the anonymous token does not exist yet either
                    raise HTTPError(403, "ACL not found")
                request.anonymous = True
                return
            if token not in initial and self._store.token_by_secret(token) is None:
                raise HTTPError(403, "ACL not found")

    def _acls_ready(self) -> bool:
        return time.monotonic() >= self._acls_ready_at

    def _existing_initial_tokens(self) -> frozenset[str] | None:
        """The initial tokens the leader has created so far; None when ACLs are off."""
        with self._cond:
            if self._initial_tokens is None:
                return None
            return self._initial_tokens if self._acls_ready() else frozenset()

    def _run_query(self, route: Route, request: Request, match: re.Match[str]) -> Reply:
        min_index, wait = blocking_params(request)
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                reply = route.handler(self._backend, request, match)
                index = reply.index or 0
                remaining = deadline - time.monotonic()
                if min_index == 0 or index > min_index or remaining <= 0 or self._stopping:
                    break
                self._blocked += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._blocked -= 1
        reply.headers["X-Consul-Index"] = str(max(reply.index or 0, 1))
        reply.headers["X-Consul-KnownLeader"] = "true" if self.has_leader else "false"
        reply.headers["X-Consul-LastContact"] = "0"
        return reply


class _Backend:
    """The double as endpoint handlers see it (``routing.Backend``)."""

    def __init__(self, double: ConsulDouble) -> None:
        self._double = double

    @property
    def store(self) -> Store:
        return self._double._store

    @property
    def datacenter(self) -> str:
        return self._double.datacenter

    @property
    def has_leader(self) -> bool:
        return self._double.has_leader

    @property
    def accepted_tokens(self) -> frozenset[str] | None:
        return self._double._existing_initial_tokens()

    @property
    def unreadable_keys(self) -> tuple[str, ...]:
        return self._double.unreadable_keys


def _empty_match() -> re.Match[str]:
    """Handlers take the route's match; seeding calls them without a URL."""
    match = re.fullmatch("", "")
    assert match is not None
    return match


_EMPTY_MATCH = _empty_match()
