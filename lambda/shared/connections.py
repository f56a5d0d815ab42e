"""Kept-alive HTTP(S) connections to Consul, shared by the threads of one Lambda container.

Why: a new connection per request costs a TCP handshake and, against Consul's HTTPS listener
behind the NLB, a TLS handshake and a certificate check before every request (a task start's
4 requests cost about 12 round trips where 4 would do). Lambda reuses its container across
invocations, so the Runtime keeps one pool and the connections outlive an invocation.

Rules, each for a reason:
- A connection serves one request at a time. A caller takes an idle connection (the most
  recently used first) or opens one, and gives it back only after reading the whole response,
  so threads never share a connection while it is in use. At most `max_idle` wait idle.
- Any failure, a timeout included, closes the connection: a half-sent request or an unread
  response would corrupt the next exchange. `Connection: close` from the server closes it too.
- Before reuse, a connection idle for more than `max_idle_s`, or one the server has closed
  (readable while idle: an EOF or a reset arrived), is closed and replaced without sending
  anything on it. Consul's HTTP server keeps idle connections forever, but an AWS NLB forgets a
  TCP flow after 350 s idle and answers the next packet with a reset: the age limit stays well
  under that. (Whether time passes on the monotonic clock while Lambda freezes a container is
  not documented; the next two rules cover a connection that died unseen.)
- A GET that fails on a reused connection with a reset, a broken pipe or an empty answer is
  sent once more, on a new connection: the server may have dropped the connection just as the
  request left, and reading twice is harmless. A new connection that fails is Consul's own
  failure and is reported, never resent here.
- Writes are never resent here. A PUT that fails may have been applied with only its answer
  lost; it is reported as a transport error, which consul_http.ConsulHttp maps to
  ConsulUnavailable and the registrar's consul.RetryingConsul retries with backoff like any
  other transient failure, inside the invocation's budget. That resend is safe for the reason
  the write protocol already relies on (docs/architecture.md "Ordering, duplicates and
  concurrency"): a txn carries a KV cas on the task's record at the index read before it, so a
  txn that had landed makes its resend fail the cas (409), and apply.apply reads the record
  again and decides from what is really there; a node deregister only removes a stopped task's
  node. A sidecar register has no cas: its unanswered first copy may land after everything
  else, so consul.RetryingConsul counts it and the registrar checks the catalog again later
  (recheck.py). A failed connect is NotSent: no byte of the request left, so nothing can land
  late. (The provider, consul_config, resends its writes the same way: a create whose
  answer was lost finds its object by name on the next try and adopts it.)
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import NamedTuple

# Seconds a connection may sit idle before it is replaced rather than reused: an NLB forgets a
# TCP flow after 350 s idle; Consul itself never closes an idle connection.
MAX_IDLE_S = 60.0
# Idle connections kept. A Lambda container runs one invocation at a time (one connection in
# use); the tests and benchmarks run several invocations as threads of one process.
MAX_IDLE = 8

# Only these are sent again after a reused connection turned out to be dead.
_RESENDABLE = frozenset({"GET"})
# How a connection the server (or the NLB) dropped shows up when a request is sent on it:
# a reset, a broken pipe, or an EOF before the status line (RemoteDisconnected, a BadStatusLine).
_DEAD_CONNECTION = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    http.client.BadStatusLine,
)


class NotSent(ConnectionError):
    """Connecting failed (DNS, TCP connect or its timeout, TLS handshake or verification):
    not one byte of the request left, so a write that fails this way was not applied."""


class BodyTooLarge(Exception):
    """The answer's body is longer than the caller's `max_body`: its first `max_body` bytes
    were read and the connection closed, the rest never read into memory."""

    def __init__(self, target: str, limit: int) -> None:
        super().__init__(f"{target}: the answer is longer than {limit} bytes")
        self.limit = limit


CONSUL_HTTP_PORT, CONSUL_HTTPS_PORT = 8500, 8501


class Answer(NamedTuple):
    """One response: its status, its whole body and its headers (names in lower case)."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class ConnectionPool:
    """Kept-alive connections to one Consul address; thread-safe.

    address: http(s)://host:port. ssl_context: the TLS context for https (server certificate and
    host name verified against it); None uses the system trust store, as urllib did.
    server_name: the name the server certificate must carry, for SNI and the host name check,
    when it differs from the host dialled (the provider dials the NLB by address and checks
    the name its certificate was issued for); default: the address's host.
    """

    def __init__(
        self,
        address: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        max_idle: int = MAX_IDLE,
        max_idle_s: float = MAX_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()
        parsed = urllib.parse.urlsplit(address)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"Consul address must look like https://host:port, got {address!r}")
        if max_idle < 1:
            raise ValueError(f"max_idle must be at least 1, got {max_idle}")
        if max_idle_s <= 0:
            raise ValueError(f"max_idle_s must be a positive number of seconds, got {max_idle_s}")
        self._host = parsed.hostname
        self._https = parsed.scheme == "https"
        # Consul's own ports when the address names none (8501 https, 8500 http: Consul's
        # ports reference, and CONSUL_HTTP_ADDR's default 127.0.0.1:8500 in api/api.go).
        self._port = parsed.port or (CONSUL_HTTPS_PORT if self._https else CONSUL_HTTP_PORT)
        if self._https and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl_context = ssl_context
        self._server_name = server_name or parsed.hostname
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._clock = clock

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        max_body: int | None = None,
    ) -> Answer:
        """Send one request, read the whole response, whatever the status.

        Raises OSError (refused, reset, timed out, TLS failures) or http.client.HTTPException;
        NotSent (an OSError) when the connection could not even be made; BodyTooLarge when the
        body is longer than `max_body` bytes. `timeout` bounds connecting and each read or
        write on the socket.
        """
        connection, reused = self._take()

        def exchange(on: http.client.HTTPConnection) -> Answer:
            return self._exchange(
                on, method, target, body=body, headers=headers, timeout=timeout, max_body=max_body
            )

        try:
            return exchange(connection)
        except _DEAD_CONNECTION:
            if not reused or method not in _RESENDABLE:
                raise
        return exchange(self._open())

    @property
    def server_name(self) -> str:
        """The name the server's certificate is checked against."""
        return self._server_name

    def close(self) -> None:
        """Close the idle connections. The pool stays usable: it opens new ones on demand."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()

    def __del__(self) -> None:
        # A pool dropped without close() (a test's client, a replaced Runtime) frees its sockets.
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _open(self) -> http.client.HTTPConnection:
        """A new connection; it connects (and for https, handshakes) on its first request."""
        if self._https:
            assert self._ssl_context is not None
            return _VerifiedHTTPSConnection(
                self._host, self._port, server_name=self._server_name, tls=self._ssl_context
            )
        return http.client.HTTPConnection(self._host, self._port)

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection still worth trying (and True), else a new one (and False)."""
        while True:
            with self._lock:
                idle = self._idle.pop() if self._idle else None
            if idle is None:
                return self._open(), False
            connection, since = idle
            if self._clock() - since <= self._max_idle_s and not _closed_by_peer(connection):
                return connection, True
            connection.close()

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        max_body: int | None,
    ) -> Answer:
        try:
            connection.timeout = timeout  # used when it connects
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            else:
                _connect(connection)
            connection.request(method, target, body=body, headers=dict(headers))
            response = connection.getresponse()
            data = response.read() if max_body is None else response.read(max_body + 1)
            if max_body is not None and len(data) > max_body:
                raise BodyTooLarge(f"{method} {target}", max_body)  # the rest stays unread
            if response.length:
                # read(amt) returns a Content-Length body cut short without a word (CPython
                # Lib/http/client.py HTTPResponse.read: "Ideally, we would raise IncompleteRead
                # if the content-length wasn't satisfied"); a whole one leaves length 0, and a
                # chunked one None (_read_chunked raises IncompleteRead itself). read() with no
                # amount raises it: so does a read with one.
                raise http.client.IncompleteRead(data, response.length)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return Answer(response.status, data, {k.lower(): v for k, v in response.getheaders()})

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        if connection.sock is None:  # the server answered `Connection: close`
            return
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append((connection, self._clock()))
                return
        connection.close()


class _VerifiedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose SNI and certificate name check use `server_name`, not the dialled host."""

    def __init__(self, host: str, port: int, *, server_name: str, tls: ssl.SSLContext) -> None:
        super().__init__(host, port, context=tls)
        self._server_name = server_name
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)


def _connect(connection: http.client.HTTPConnection) -> None:
    """Connect (for https: handshake) before sending anything, telling a failure apart."""
    try:
        connection.connect()
    except ssl.SSLCertVerificationError:
        raise  # consul_http.TlsVerificationFailed: a certificate that will not verify
    except OSError as err:
        raise NotSent(f"could not connect: {type(err).__name__}: {err}") from err


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """True when an idle connection has something to read: the server's EOF or a reset.

    Nothing else may arrive on an idle HTTP/1.1 connection, so anything readable means it is
    finished (a false alarm would only cost a new connection).
    """
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
