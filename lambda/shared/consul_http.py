"""The one Consul HTTP client of every Lambda asset: address, TLS, token, error mapping.

Every asset that talks to Consul (the registrar, the consul_config provider) bundles this
folder (lambda/shared/, copied into each asset at synth by mesh_stack/lambda_code.py) and
builds its slice of Consul's API on `ConsulHttp.request`: the registrar's catalog, KV and txn
calls (registrar/consul.py, registrar/inventory.py), the provider's ACL and config-entry calls
(consul_config/consul_api.py). Retries are retry.call, with each caller's policy and budget.

Requests go over kept-alive connections (connections.py), which also decides what may be sent
again when a reused connection turns out to be dead (reads only).

Errors are mapped to what the caller does about them:
- ConsulUnavailable (retryable): 429, 500, 502-504, timeouts, refused or reset connections,
  an answer that is not JSON; `unanswered` when the request may have reached Consul;
- TlsVerificationFailed (a ConsulUnavailable): the server's certificate did not verify;
- ConsulAuthError: 403 even after reading the token again (it may have been rotated);
- ConsulRequestError: any other refusal (400, 413, 501, ...): retrying the same request is
  useless.
Each carries the HTTP status (None when no answer came). Values passed to `redact` (the token,
a SecretID being written) never appear in a message: they end up in logs and in CloudFormation
events.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from connections import Answer, ConnectionPool, NotSent
from retry import RetryableError

Json = dict[str, Any]

# The first bytes of an answer's body quoted in an error message.
MAX_ERROR_BODY = 300
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class ConsulError(Exception):
    """Any failure talking to Consul; `status` is the HTTP status, None when none came."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulUnavailable(ConsulError, RetryableError):
    """Consul did not answer, or answered 429/5xx: try again later.

    `unanswered`: the request may have reached Consul and no answer came back (a timeout, a
    reset, a dropped connection; not a failed connect). Consul may still apply such a write
    later, and nothing bounds how much later: in 1.21 `CatalogRegister`
    (agent/catalog_endpoint.go) passes `req.Context()` to `s.agent.RPC`, but `(*Server).RPC`
    (agent/consul/server.go) uses the context only for the caller's address (rate limiting)
    and the Raft apply takes none, so a client giving up stops nothing; how long the servers
    may hold the write is in registrar/recheck.py. `reason`: Consul's answer, if any.
    """

    def __init__(
        self, message: str, *, status: int | None = None, unanswered: bool = False, reason: str = ""
    ) -> None:
        super().__init__(message, status=status)
        self.unanswered = unanswered
        self.reason = reason


class TlsVerificationFailed(ConsulUnavailable):
    """The server's certificate did not verify against the Consul CA (or its name differs).

    Retryable for the registrar (a CA being rotated heals), permanent for the provider."""


class ConsulAuthError(ConsulError):
    """403 with the freshest token we can get: the ACL policy or the token is wrong."""


class ConsulRequestError(ConsulError):
    """Consul refused the request itself (4xx other than 403, or a 5xx it will never accept)."""


class TokenProvider(Protocol):
    """The ACL token, cached; `refresh=True` reads it again from its source."""

    @property
    def refreshable(self) -> bool: ...

    def get(self, *, refresh: bool = False) -> str | None: ...


class StaticToken:
    """A token known up front (CONSUL_HTTP_TOKEN, the provider's management token) or none."""

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


def tls_context(ca_pem: str | None = None, *, cafile: str | None = None) -> ssl.SSLContext:
    """Verify the server against the Consul CA only (not the system store), TLS 1.2+.

    With neither `ca_pem` nor `cafile`: the system trust store. Raises ValueError when the CA
    is not a PEM certificate."""
    if ca_pem is None and cafile is None:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=cafile, cadata=ca_pem)
    except ssl.SSLError as err:
        raise ValueError(f"the Consul CA is not a PEM certificate ({err})") from None
    return context


class ConsulHttp:
    """Consul's HTTP API over `connections`. Per-request timeout: min(timeout_s, budget left);
    a listing's (the caller passes `timeout=list_timeout_s`): min(list_timeout_s, budget left).

    `connections` is the pool for `address`; the registrar's Runtime keeps one per container,
    so an invocation's client reuses the connections of the previous invocations.
    """

    def __init__(
        self,
        address: str,
        *,
        token: TokenProvider,
        connections: ConnectionPool,
        timeout_s: float = 5.0,
        list_timeout_s: float | None = None,
        remaining_s: Callable[[], float] | None = None,
    ) -> None:
        parse_address(address)
        self._token = token
        self._connections = connections
        self._timeout_s = timeout_s
        # A listing's timeout, passed by the callers that list whole sets (default timeout_s)
        self.list_timeout_s = timeout_s if list_timeout_s is None else list_timeout_s
        self._remaining_s = remaining_s
        self._secrets: set[str] = set()

    def redact(self, *values: str) -> None:
        """Never let these values appear in an error message (e.g. a SecretID being written)."""
        self._secrets.update(v for v in values if v)

    def scrub(self, text: str) -> str:
        for value in (*self._secrets, self._token.get() or ""):
            if value:
                text = text.replace(value, "<redacted>")
        return text

    def _timeout(self, limit: float | None = None) -> float:
        """`limit` (default: timeout_s) bounded by the budget left."""
        limit = self._timeout_s if limit is None else limit
        left = self._remaining_s() if self._remaining_s else limit
        return max(0.05, min(limit, left))

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        token: str | None,
        *,
        max_body: int | None = None,
        timeout: float | None = None,
    ) -> Answer:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["X-Consul-Token"] = token
        try:
            return self._connections.request(
                method,
                path,
                body=body,
                headers=headers,
                timeout=self._timeout(timeout),
                max_body=max_body,
            )
        except ssl.SSLCertVerificationError as err:
            raise TlsVerificationFailed(
                f"{method} {path}: TLS verification of {self._connections.server_name!r} "
                f"failed: {err}"
            ) from None
        except (http.client.HTTPException, OSError) as err:
            # OSError covers timeouts, refused/reset connections and TLS failures. A write that
            # fails here may have been applied, or may still be: a caller's resend must be
            # guarded (registrar/consul.py RetryingConsul). Only a failed connect (NotSent, or
            # refused) proves nothing was sent.
            raise ConsulUnavailable(
                self.scrub(f"{method} {path}: {str(err) or type(err).__name__}"),
                unanswered=not isinstance(err, (ConnectionRefusedError, NotSent)),
            ) from err

    def request(
        self,
        method: str,
        path: str,
        payload: object = None,
        *,
        ok_statuses: tuple[int, ...] = (),
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """Send one request: (status, body) for 2xx and `ok_statuses`, else the mapped error.

        A 403 is sent once more with the token read again, when its source can be re-read."""
        answer = self.answer(method, path, payload, ok_statuses=ok_statuses, timeout=timeout)
        return answer.status, answer.body

    def answer(
        self,
        method: str,
        path: str,
        payload: object = None,
        *,
        ok_statuses: tuple[int, ...] = (),
        max_body: int | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """`request`, with the response's headers; connections.BodyTooLarge when the body is
        longer than `max_body` bytes (the rest is never read). `timeout`: this request's
        per-socket-operation timeout instead of `timeout_s` (a bulk listing's: Consul sends
        nothing before it has built the whole answer), still bounded by the budget left."""
        body = None if payload is None else json.dumps(payload).encode()
        answer = self._send(
            method, path, body, self._token.get(), max_body=max_body, timeout=timeout
        )
        if answer.status == 403 and self._token.refreshable:
            answer = self._send(
                method,
                path,
                body,
                self._token.get(refresh=True),
                max_body=max_body,
                timeout=timeout,
            )
        status, data = answer.status, answer.body
        if 200 <= status < 300 or status in ok_statuses:
            return answer
        reason = self.scrub(data[:MAX_ERROR_BODY].decode("utf-8", "replace").strip())
        message = f"{method} {path}: HTTP {status}: {reason}"
        if status in _RETRYABLE_STATUS:
            raise ConsulUnavailable(message, status=status, reason=reason)
        if status == 403:
            raise ConsulAuthError(message, status=status)
        raise ConsulRequestError(message, status=status)

    @staticmethod
    def json(method: str, path: str, data: bytes) -> Any:
        """The decoded JSON body; an empty body is None."""
        try:
            return json.loads(data) if data else None
        except ValueError as err:
            # A proxy or load balancer answering instead of Consul: worth another try.
            raise ConsulUnavailable(f"{method} {path}: response is not JSON: {err}") from err
