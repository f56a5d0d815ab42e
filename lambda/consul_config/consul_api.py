"""The slice of Consul's HTTP API the provider needs, over verified TLS, with bounded retries.

Why a hand-written client: the provider runs with the standard library and boto3 only, and
must control exactly which failures are retried (429, 502-504, a lost leader, connection
errors: transient) and which fail the deployment at once (400, 403 permission denied, other
500s after a few tries: a request Consul will never accept). Every secret the client sends is
scrubbed from the messages it raises, because those messages end up in CloudWatch Logs and in
the CloudFormation event's status reason.

TLS: the CA comes from the Consul CA secret; the server certificate must carry the name in
`server_name` (the NLB DNS name by default). SNI and hostname checks both use that name,
whatever host the address points at.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit

# Consul answers these while a leader is being elected or a server is restarting.
_TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
_LEADERLESS_HINTS = ("no cluster leader", "leadership lost", "not the leader")
_MAX_ERROR_BODY = 300
# A 500 that is not about leadership is retried this many times, then reported: Consul answers
# 500 to many invalid writes (bad rules, unknown config key), which no retry will fix.
_PLAIN_500_ATTEMPTS = 3


class ConsulError(Exception):
    """Consul refused a request; the message carries method, path, status and Consul's reason."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulUnavailable(ConsulError):
    """Consul is unreachable, leaderless, throttling or failing for now: try again later."""


class ConsulClient:
    """Talks to one Consul address with one ACL token.

    address: `https://<host>:8501` (or `http://127.0.0.1:8500` for local runs and tests).
    server_name: the name the server certificate must carry; used for SNI and verification.
    deadline: monotonic time after which no retry starts (the caller's time budget).
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        ca_pem: str | None = None,
        server_name: str | None = None,
        timeout: float = 10.0,
        deadline: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Consul address {address!r} must be http(s)://<host>:<port>")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (8501 if self._https else 8500)
        self._server_name = server_name or parts.hostname
        self._token = token
        self._timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self._deadline = deadline if deadline is not None else clock() + 60.0
        self._redact: set[str] = {token} if token else set()
        self._context: ssl.SSLContext | None = None
        if self._https:
            if not ca_pem:
                raise ValueError("an https Consul address needs the Consul CA certificate")
            self._context = tls_context(ca_pem)

    # ------------------------------------------------------------------ plumbing

    def redact(self, *values: str) -> None:
        """Never let these values appear in an error message (e.g. a SecretID being written)."""
        self._redact.update(v for v in values if v)

    def _scrub(self, text: str) -> str:
        for value in self._redact:
            text = text.replace(value, "<redacted>")
        return text

    def _connection(self) -> http.client.HTTPConnection:
        if self._context is None:
            return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return _VerifiedHTTPSConnection(
            self._host,
            self._port,
            server_name=self._server_name,
            tls=self._context,
            timeout=self._timeout,
        )

    def _once(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = self._connection()
        try:
            headers = {"X-Consul-Token": self._token, "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def request(self, method: str, path: str, payload: object = None) -> tuple[int, Any]:
        """Send one request, retrying transient failures with jittered backoff until the deadline.

        Returns (status, decoded JSON or None) for 2xx, 403 and 404 (the callers decide what
        absence means); raises ConsulUnavailable when retries ran out on a transient failure
        and ConsulError for anything Consul will not accept.
        """
        body = None if payload is None else json.dumps(payload).encode()
        attempt = 0
        plain_500s = 0
        while True:
            attempt += 1
            reason: str
            try:
                status, raw = self._once(method, path, body)
            except (OSError, http.client.HTTPException) as err:
                if isinstance(err, ssl.SSLCertVerificationError):
                    raise ConsulError(
                        f"{method} {path}: TLS verification of {self._server_name!r} failed: "
                        f"{err.verify_message}"
                    ) from None
                status, raw, reason = 0, b"", f"{type(err).__name__}: {err}"
            else:
                if 200 <= status < 300 or status in (403, 404):
                    return status, _decode(raw)
                reason = raw[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()
                permanent = status not in _TRANSIENT_STATUS and status < 500
                leaderless = any(hint in reason.lower() for hint in _LEADERLESS_HINTS)
                if status == 500 and not leaderless:
                    plain_500s += 1
                    permanent = plain_500s >= _PLAIN_500_ATTEMPTS
                if permanent:
                    raise ConsulError(
                        self._scrub(f"{method} {path} -> {status}: {reason}"), status=status
                    )
            delay = min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)  # noqa: S311
            if self._clock() + delay >= self._deadline:
                raise ConsulUnavailable(
                    self._scrub(f"{method} {path} still failing after {attempt} tries: {reason}"),
                    status=status or None,
                )
            self._sleep(delay)

    # ------------------------------------------------------------------ status

    def leader(self) -> str:
        """Address of the Raft leader, or "" while there is none (`GET /v1/status/leader`)."""
        status, data = self.request("GET", "/v1/status/leader")
        if status != 200:
            raise ConsulError(f"GET /v1/status/leader -> {status}", status=status)
        return data if isinstance(data, str) else ""

    def wait_for_leader(self, until: float, *, interval: float = 2.0) -> bool:
        """Poll until the cluster has a leader or `until` (monotonic) passes; never raises
        for an unreachable or leaderless cluster, only for a refused request."""
        while True:
            try:
                if self.leader():
                    return True
            except ConsulUnavailable:
                pass
            if self._clock() + interval >= until:
                return False
            self._sleep(interval)

    def check_token(self) -> None:
        """Fail clearly when Consul does not know the management token (yet).

        `/v1/acl/token/self` looks the secret up instead of resolving it, so an unknown secret
        is a 404 "Supplied token does not exist" (hashicorp/consul agent/acl_endpoint.go
        ACLTokenSelf), while every other endpoint answers 403 "ACL not found" for it; reading
        token/self first tells an unknown management token apart from a missing object. Right
        after the first election the token is unknown because the leader has not created it
        yet (agent/consul/leader.go initializeACLs); the caller decides how long to wait.
        """
        status, data = self.request("GET", "/v1/acl/token/self")
        if status != 200:
            raise ConsulError(
                f"Consul does not accept the management token (GET /v1/acl/token/self -> "
                f"{status}: {_reason(data)}). Either the leader has not created it yet (it does "
                "so from acl.tokens.initial_management when it establishes leadership), or the "
                "management token secret does not hold the fleet's initial_management token",
                status=status,
            )

    # ------------------------------------------------------------------ reads

    def _read(self, path: str) -> dict[str, Any] | None:
        status, data = self.request("GET", path)
        if status == 404 or (status == 403 and _not_found(data)):
            return None
        if status != 200 or not isinstance(data, dict):
            raise ConsulError(f"GET {path} -> {status}: {_reason(data)}", status=status)
        return data

    def _write(self, method: str, path: str, payload: object = None) -> Any:
        status, data = self.request(method, path, payload)
        if status != 200:
            raise ConsulError(
                self._scrub(f"{method} {path} -> {status}: {_reason(data)}"), status=status
            )
        return data

    def _delete(self, path: str) -> None:
        status, data = self.request("DELETE", path)
        if status == 404 or (status == 403 and _not_found(data)):
            return
        if status != 200:
            raise ConsulError(f"DELETE {path} -> {status}: {_reason(data)}", status=status)

    # ------------------------------------------------------------------ ACL policies

    def read_policy_by_name(self, name: str) -> dict[str, Any] | None:
        return self._read(f"/v1/acl/policy/name/{quote(name, safe='')}")

    def create_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._write("PUT", "/v1/acl/policy", body))

    def update_policy(self, policy_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._write("PUT", f"/v1/acl/policy/{quote(policy_id, safe='')}", body))

    def delete_policy(self, policy_id: str) -> None:
        self._delete(f"/v1/acl/policy/{quote(policy_id, safe='')}")

    # ------------------------------------------------------------------ ACL tokens

    def read_token(self, accessor_id: str) -> dict[str, Any] | None:
        return self._read(f"/v1/acl/token/{quote(accessor_id, safe='')}")

    def create_token(self, body: dict[str, Any]) -> dict[str, Any]:
        self.redact(str(body.get("SecretID", "")))
        return dict(self._write("PUT", "/v1/acl/token", body))

    def update_token(self, accessor_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.redact(str(body.get("SecretID", "")))
        return dict(self._write("PUT", f"/v1/acl/token/{quote(accessor_id, safe='')}", body))

    def delete_token(self, accessor_id: str) -> None:
        self._delete(f"/v1/acl/token/{quote(accessor_id, safe='')}")

    # ------------------------------------------------------------------ config entries

    def read_config(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._read(f"/v1/config/{quote(kind, safe='')}/{quote(name, safe='')}")

    def write_config(self, entry: dict[str, Any]) -> None:
        # Consul answers `true` when written, `false` when a check-and-set lost (never here).
        if self._write("PUT", "/v1/config", entry) is False:
            raise ConsulError(f"PUT /v1/config refused {entry.get('Kind')}/{entry.get('Name')}")

    def delete_config(self, kind: str, name: str) -> None:
        self._delete(f"/v1/config/{quote(kind, safe='')}/{quote(name, safe='')}")


class _VerifiedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose SNI and certificate name check use `server_name`, not the dialled host."""

    def __init__(
        self, host: str, port: int, *, server_name: str, tls: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self._server_name = server_name
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)


def tls_context(ca_pem: str) -> ssl.SSLContext:
    """Verify the server against the Consul CA only (not the system store), TLS 1.2+."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=ca_pem)
    except ssl.SSLError as err:
        raise ValueError(f"the Consul CA secret does not hold a PEM certificate ({err})") from None
    return context


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()


def _not_found(data: Any) -> bool:
    return isinstance(data, str) and "not found" in data.lower()


def _reason(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    return text[:_MAX_ERROR_BODY]


def names(links: Iterable[dict[str, Any]] | None, key: str) -> list[str]:
    """Names from Consul's link lists (`Policies`, `ServiceIdentities`), sorted."""
    return sorted(str(link.get(key, "")) for link in (links or []))
