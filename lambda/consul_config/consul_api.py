"""The slice of Consul's HTTP API the provider needs: ACL policies and tokens, config entries.

The client underneath (kept-alive connections, verified TLS, token, error mapping, scrubbing of
secrets from messages) is the one every Lambda asset bundles: lambda/shared/consul_http.py;
retries are the shared retry.call. What is the provider's own is its retry policy:
- transient, retried with backoff until the deadline: 429, 502-504, a 500 about a lost leader,
  connection errors (consul_http.ConsulUnavailable);
- permanent, failing the deployment at once: 400, 403 on a write, a certificate that does not
  verify, and a 500 not about leadership after _PLAIN_500_ATTEMPTS tries (Consul answers 500
  to many invalid writes: bad rules, an unknown config key, which no retry will fix).
Every secret the client sends is scrubbed from the messages it raises, because those messages
end up in CloudWatch Logs and in the CloudFormation event's status reason.

TLS: the CA comes from the Consul CA secret; the server certificate must carry the name in
`server_name` (the NLB DNS name by default). SNI and hostname checks both use that name,
whatever host the address points at.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import retry
from connections import ConnectionPool
from consul_http import (
    MAX_ERROR_BODY,
    ConsulError,
    ConsulHttp,
    ConsulUnavailable,
    StaticToken,
    TlsVerificationFailed,
    tls_context,
)

__all__ = ["ConsulClient", "ConsulError", "ConsulUnavailable", "names"]

# Consul answers these while a leader is being elected or a server is restarting.
_LEADERLESS_HINTS = ("no cluster leader", "leadership lost", "not the leader")
# A 500 that is not about leadership is retried this many times, then reported: Consul answers
# 500 to many invalid writes (bad rules, unknown config key), which no retry will fix.
_PLAIN_500_ATTEMPTS = 3
# Backoff: 0.25 s doubling to 8 s, jittered into [half, all] of that; the deadline bounds the
# attempts (the count below is never reached inside a one-minute Lambda).
_POLICY = retry.RetryPolicy(max_attempts=1_000, base_delay_s=0.25, max_delay_s=8.0)


def _half_jitter() -> float:
    return 0.5 + random.random() / 2  # noqa: S311 (backoff jitter, not a secret)


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
        https = address.strip().lower().startswith("https:")
        if https and not ca_pem:
            raise ValueError("an https Consul address needs the Consul CA certificate")
        connections = ConnectionPool(
            address,
            ssl_context=tls_context(ca_pem) if https else None,
            server_name=server_name,
        )
        self.http = ConsulHttp(
            address, token=StaticToken(token), connections=connections, timeout_s=timeout
        )
        self._sleep = sleep
        self._clock = clock
        end = deadline if deadline is not None else clock() + 60.0
        self._budget = retry.Budget(lambda: int((end - clock()) * 1000), 0)

    def redact(self, *values: str) -> None:
        """Never let these values appear in an error message (e.g. a SecretID being written)."""
        self.http.redact(*values)

    def request(self, method: str, path: str, payload: object = None) -> tuple[int, Any]:
        """Send one request, retrying transient failures with jittered backoff until the deadline.

        Returns (status, decoded JSON or None) for 2xx, 403 and 404 (the callers decide what
        absence means); raises ConsulUnavailable when retries ran out on a transient failure
        and ConsulError for anything Consul will not accept.
        """
        plain_500s = 0

        def attempt() -> tuple[int, Any]:
            nonlocal plain_500s
            try:
                status, raw = self.http.request(method, path, payload, ok_statuses=(403, 404))
            except TlsVerificationFailed as err:
                raise ConsulError(str(err)) from None
            except ConsulUnavailable as err:
                leaderless = any(hint in err.reason.lower() for hint in _LEADERLESS_HINTS)
                if err.status == 500 and not leaderless:
                    plain_500s += 1
                    if plain_500s >= _PLAIN_500_ATTEMPTS:
                        raise ConsulError(
                            f"{method} {path} -> 500: {err.reason}", status=500
                        ) from None
                raise
            return status, _decode(raw)

        try:
            return retry.call(
                attempt,
                what=f"{method} {path}",
                policy=_POLICY,
                budget=self._budget,
                sleep=self._sleep,
                jitter=_half_jitter,
            )
        except retry.BudgetExhausted as err:
            raise ConsulUnavailable(str(err)) from None

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
                self.http.scrub(f"{method} {path} -> {status}: {_reason(data)}"), status=status
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
    return text[:MAX_ERROR_BODY]


def names(links: Iterable[dict[str, Any]] | None, key: str) -> list[str]:
    """Names from Consul's link lists (`Policies`, `ServiceIdentities`), sorted."""
    return sorted(str(link.get(key, "")) for link in (links or []))
