"""Bulk reads of what the registrar owns in Consul: one request per kind, never one per task.

The reconcile pass, the host-state handler and the drain compare whole sets (every task node of
the cluster, every state record, every host marker), so they need listing calls the event path
does not: a filtered node listing, a recursive KV read, service listings filtered on meta and a
filtered health-state listing. They extend the registrar's Consul client (same transport, token,
TLS, error mapping and retries) instead of opening a second one.

Filters use Consul's documented selectors (api-docs/catalog.mdx "Filtering"): `/v1/catalog/nodes`
on `Meta.<key>`, `/v1/catalog/services` and `/v1/catalog/service/:name` on `ServiceMeta.<key>`
and `NodeMeta.<key>`, `/v1/health/state/:state` on `CheckID` and `Node`.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import identity
import registrar
import retry
from consul import (
    Consul,
    ConsulAuthError,
    ConsulUnavailable,
    HttpConsul,
    Json,
    RetryingConsul,
    TxnConflict,
)

MAX_TXN_OPS = 128  # Consul >= 1.14 (64 before)
FILTERED_BY_ACLS = "x-consul-results-filtered-by-acls"  # agent/http.go, lower-cased


class AnswerTooSlow(Exception):
    """A capped read (`kv_list(max_bytes=)`) got no answer within the listing timeout: like an
    answer longer than its cap (connections.BodyTooLarge), a reason to read in smaller parts.
    Not retried: the same read would take as long again, and make the server build it again."""


@dataclass(frozen=True)
class KVPair:
    key: str
    value: bytes
    modify_index: int


class Inventory(Consul, Protocol):
    """The registrar's Consul calls plus the listings of whole sets."""

    def kv_list(self, prefix: str, *, max_bytes: int | None = None) -> list[KVPair]: ...

    def nodes(self, expression: str) -> list[Json]: ...

    def service_names(self, expression: str) -> list[str]: ...

    def service_nodes(self, service: str, expression: str) -> list[Json]: ...

    def checks(self, state: str, expression: str) -> list[Json]: ...


def quoted(value: str) -> str:
    """A bexpr string literal; refuses what would need escaping (ARNs and names never do)."""
    if '"' in value or "\\" in value:
        raise ValueError(f"cannot use {value!r} in a Consul filter: it contains a quote")
    return f'"{value}"'


def owned_nodes_filter(cluster_arn: str) -> str:
    """`/v1/catalog/nodes` filter: the task nodes this registrar wrote for `cluster_arn`."""
    return (
        f"Meta[{quoted('source')}] == {quoted(identity.SOURCE)} and "
        f"Meta[{quoted('cluster-arn')}] == {quoted(cluster_arn)}"
    )


def instance_services_filter(cluster_arn: str, container_instance_arn: str) -> str:
    """`/v1/catalog/service(s)` filter: our services of one container instance of the cluster."""
    return (
        f"NodeMeta[{quoted('source')}] == {quoted(identity.SOURCE)} and "
        f"NodeMeta[{quoted('cluster-arn')}] == {quoted(cluster_arn)} and "
        f"ServiceMeta[{quoted('container-instance-arn')}] == {quoted(container_instance_arn)}"
    )


def txn_groups(
    consul: Consul,
    groups: Sequence[Sequence[Mapping[str, Any]]],
    *,
    stop: Callable[[], bool] = lambda: False,
) -> list[int]:
    """Write groups of ops, each all or nothing, packed into txns of at most MAX_TXN_OPS.

    A txn that Consul rolls back (409) is sent once more without the groups whose ops failed
    (a cas or delete-cas that lost to another writer); those are left to the caller's next
    round. Stops between txns when `stop()` says so. The indexes of the groups that landed.
    """
    landed: list[int] = []
    batch: list[int] = []
    size = 0
    for n, group in enumerate(groups):
        if batch and size + len(group) > MAX_TXN_OPS:
            if stop():
                return landed
            landed += _commit(consul, groups, batch)
            batch, size = [], 0
        batch.append(n)
        size += len(group)
    if batch and not stop():
        landed += _commit(consul, groups, batch)
    return landed


def _commit(
    consul: Consul, groups: Sequence[Sequence[Mapping[str, Any]]], batch: list[int]
) -> list[int]:
    for _ in range(2):
        if not batch:
            return []
        try:
            consul.txn([op for n in batch for op in groups[n]])
        except TxnConflict as conflict:
            failed, start = set(), 0
            for n in batch:
                if any(conflict.failed_op(i) for i in range(start, start + len(groups[n]))):
                    failed.add(n)
                start += len(groups[n])
            batch = [n for n in batch if n not in failed]
            continue
        return batch
    return []


def _list_of_dicts(doc: Any) -> list[Json]:
    return [e for e in doc if isinstance(e, dict)] if isinstance(doc, list) else []


class HttpInventory(HttpConsul):
    """HttpConsul with the listing calls, each under the client's `list_timeout_s` (bounded by
    the budget left) instead of the per-request `timeout_s` of the event path's calls.

    Why a longer timeout: Consul sends nothing before it has the whole answer. agent/http.go
    `wrap` runs the endpoint (its RPC, forwarded to the leader from a follower, the state-store
    walk, the bexpr `filter` over every node or check, the ACL filter), `marshalJSON` builds
    the body as one []byte, and only then come `resp.WriteHeader` and `resp.Write`. So the
    first byte of a 30 MiB node listing waits for all of it, and the per-socket-operation
    timeout of the event path (5 s) would fail such a listing on a busy server, four times.
    """

    def _get(self, path: str, *, missing_ok: bool = False) -> Any:
        status, data = self.request(
            "GET", path, ok_statuses=(404,) if missing_ok else (), timeout=self.list_timeout_s
        )
        if status == 404:
            return None
        return self.json("GET", path, data)

    def kv_list(self, prefix: str, *, max_bytes: int | None = None) -> list[KVPair]:
        """Every pair under `prefix`; none (404) when there is none. Raises BodyTooLarge, having
        read no more than `max_bytes` of it, when the answer is longer. Raises ConsulAuthError when
        the token may not read them all: KVS.List drops the entries the token cannot read and
        says so in `X-Consul-Results-Filtered-By-ACLs: true`, on the 200 and on the 404 of a
        prefix filtered to nothing (agent/consul/kvs_endpoint.go KVS.List, agent/kvs_endpoint.go
        KVSGet, agent/http.go setResultsFilteredByACLs). An answer with records missing is not
        the prefix's content: the reconcile pass would take a hidden record for none.

        With `max_bytes`, a timeout waiting for the answer raises AnswerTooSlow (not retried):
        Consul was building an answer too large to build within the listing timeout."""
        path = "/v1/kv/" + urllib.parse.quote(prefix, safe="/") + "?recurse"
        try:
            answer = self.answer(
                "GET", path, ok_statuses=(404,), max_body=max_bytes, timeout=self.list_timeout_s
            )
        except ConsulUnavailable as err:
            # A timeout after the request left (a connect timeout is NotSent: Consul is
            # unreachable, retried like any other failure).
            if max_bytes is None or not isinstance(err.__cause__, TimeoutError):
                raise
            raise AnswerTooSlow(f"{err} (capped read of {prefix!r})") from err
        if answer.headers.get(FILTERED_BY_ACLS) == "true":
            raise ConsulAuthError(
                f"GET {path}: HTTP {answer.status}: the token may not read every key under "
                f"{prefix!r} (X-Consul-Results-Filtered-By-ACLs); it needs key_prefix read",
                status=answer.status,
            )
        doc = None if answer.status == 404 else self.json("GET", path, answer.body)
        entries = _list_of_dicts(doc)
        return [
            KVPair(
                key=str(e["Key"]),
                value=base64.b64decode(e["Value"]) if e.get("Value") else b"",
                modify_index=int(e["ModifyIndex"]),
            )
            for e in entries
        ]

    def nodes(self, expression: str) -> list[Json]:
        query = urllib.parse.urlencode({"filter": expression})
        return _list_of_dicts(self._get(f"/v1/catalog/nodes?{query}"))

    def service_names(self, expression: str) -> list[str]:
        query = urllib.parse.urlencode({"filter": expression})
        doc = self._get(f"/v1/catalog/services?{query}")
        return sorted(str(name) for name in doc) if isinstance(doc, dict) else []

    def service_nodes(self, service: str, expression: str) -> list[Json]:
        query = urllib.parse.urlencode({"filter": expression})
        name = urllib.parse.quote(service, safe="")
        return _list_of_dicts(self._get(f"/v1/catalog/service/{name}?{query}"))

    def checks(self, state: str, expression: str) -> list[Json]:
        query = urllib.parse.urlencode({"filter": expression})
        name = urllib.parse.quote(state, safe="")
        return _list_of_dicts(self._get(f"/v1/health/state/{name}?{query}"))


class RetryingInventory(RetryingConsul):
    """RetryingConsul with the listing calls, each retried within the invocation's budget."""

    def __init__(
        self,
        inner: Inventory,
        *,
        policy: retry.RetryPolicy,
        budget: retry.Budget,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if sleep is None:
            super().__init__(inner, policy=policy, budget=budget)
        else:
            super().__init__(inner, policy=policy, budget=budget, sleep=sleep)
        self._lists = inner

    def kv_list(self, prefix: str, *, max_bytes: int | None = None) -> list[KVPair]:
        """BodyTooLarge and AnswerTooSlow are not retried: the same read would be as long."""
        return self._call(
            f"GET kv {prefix}?recurse", lambda: self._lists.kv_list(prefix, max_bytes=max_bytes)
        )

    def nodes(self, expression: str) -> list[Json]:
        return self._call("GET catalog/nodes", lambda: self._lists.nodes(expression))

    def service_names(self, expression: str) -> list[str]:
        return self._call("GET catalog/services", lambda: self._lists.service_names(expression))

    def service_nodes(self, service: str, expression: str) -> list[Json]:
        return self._call(
            f"GET catalog/service/{service}",
            lambda: self._lists.service_nodes(service, expression),
        )

    def checks(self, state: str, expression: str) -> list[Json]:
        return self._call(
            f"GET health/state/{state}", lambda: self._lists.checks(state, expression)
        )


def connect(rt: registrar.Runtime, budget: retry.Budget) -> Inventory:
    """The container's Consul connection (token, TLS) bound to this invocation's budget."""
    settings = rt.settings
    http = HttpInventory(
        settings.consul_addr,
        token=rt.token,
        connections=rt.consul_connections(),
        timeout_s=settings.consul_timeout_s,
        list_timeout_s=settings.consul_list_timeout_s,
        remaining_s=budget.remaining_s,
    )
    return RetryingInventory(http, policy=settings.retry_policy, budget=budget)
