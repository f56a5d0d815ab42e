"""The Consul client keeps its connections: reuse, dead connections, threads and TLS.

Connections are counted and broken at `tcp_front.TcpFront`, a relay between the client and the
double that plays the NLB (and, for the TLS tests, the servers' HTTPS listener), so what is
counted is what a server would see, not what the client under test reports.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apply
import handler
import pytest
import registrar
import retry
from connections import BodyTooLarge, ConnectionPool
from consul import ConsulUnavailable, HttpConsul, RetryingConsul, StaticToken, TxnConflict
from decide import desired_registration, mesh_target
from model import ContainerDefinition, Host, Registration, parse_event
from pki import make_pki
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    LambdaContext,
    failed_ids,
    fake_runtime,
    sqs_event,
    task_definition,
    task_event,
)
from tcp_front import TcpFront

from tests.consul_double import ConsulDouble

TASK = "0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b"
KEY = f"ecs-registrar/mesh/tasks/{TASK}"
NODE = f"ecs-task-{TASK}"
FAST = retry.RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)


@pytest.fixture
def front(consul_double: ConsulDouble) -> Iterator[TcpFront]:
    relay = TcpFront(int(consul_double.url.rsplit(":", 1)[1]))
    yield relay
    relay.close()


def _http(url: str, pool: ConnectionPool | None = None) -> HttpConsul:
    """The transport alone: no retries, so what it does itself is visible."""
    return HttpConsul(
        url, token=StaticToken(None), connections=pool or ConnectionPool(url), timeout_s=2
    )


def _retrying(http: HttpConsul) -> RetryingConsul:
    return RetryingConsul(http, policy=FAST, budget=retry.Budget.fixed(30))


def _kv_set(key: str, value: str) -> list[dict[str, Any]]:
    encoded = base64.b64encode(value.encode()).decode()
    return [{"KV": {"Verb": "set", "Key": key, "Value": encoded}}]


def _registration() -> Registration:
    td = task_definition("web")
    app = mesh_target(td)
    assert isinstance(app, ContainerDefinition)
    event = parse_event(json.dumps(task_event()))
    return desired_registration(event, td, app, Host(HOST_IP, "mi-0a1b2c3d4e5f60718", "ssm"))


def _node(name: str) -> dict[str, Any]:
    return {"Node": name, "Address": "10.20.0.9"}


# --------------------------------------------------------------------------------------------
# Reuse


def test_invocations_of_one_container_share_one_connection(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN a container's runtime pointed at Consul through the NLB
    registrar.set_runtime(fake_runtime(front.url()))
    tasks = [f"{n:032x}" for n in range(10)]
    try:
        # WHEN three invocations start ten tasks and stop five of them
        starts = [task_event(task_id=t) for t in tasks]
        stops = [
            task_event("task_stopped.json", task_id=t, version=5, last_status="STOPPED")
            for t in tasks[:5]
        ]
        batches = [starts[:5], starts[5:], stops]
        failed = [
            failed_ids(handler.handler(sqs_event(b, prefix=f"b{i}"), LambdaContext()))
            for i, b in enumerate(batches)
        ]
    finally:
        registrar.set_runtime(None)

    # THEN every event landed, over a single connection for all their requests
    assert failed == [[], [], []]
    assert sorted(consul_double.nodes()) == [f"ecs-task-{t}" for t in tasks[5:]]
    assert consul_double.count() >= 50
    assert front.accepted == 1


def test_every_kind_of_answer_leaves_the_connection_reusable(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN a client that reads, writes, and meets 404, 409 and 500 answers
    client = _http(front.url())
    consul_double.inject(kind="status", status=500, path_prefix="/v1/catalog/deregister")

    # WHEN it makes one call of each kind
    assert client.kv_get("missing") is None  # 404
    client.txn(_kv_set("k", "v"))
    with pytest.raises(TxnConflict, match="op 0"):  # 409: the key exists
        client.txn([{"KV": {"Verb": "cas", "Key": "k", "Value": "", "Index": 0}}])
    client.catalog_register(_node("n1"))
    assert client.node_services("n1") == []
    with pytest.raises(ConsulUnavailable, match="HTTP 500"):
        client.catalog_deregister("n1")
    entry = client.kv_get("k")

    # THEN every answer was read in full and the next request went on the same connection
    assert entry is not None
    assert entry.value == b"v"
    assert consul_double.count() == 7
    assert front.accepted == 1


def test_a_connection_idle_longer_than_max_idle_s_is_replaced(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    now = [0.0]
    client = _http(front.url(), ConnectionPool(front.url(), max_idle_s=60, clock=lambda: now[0]))
    client.kv_get("k")

    now[0] = 59.0
    client.kv_get("k")
    assert front.accepted == 1

    now[0] = 59.0 + 61.0
    client.catalog_register(_node("n1"))
    assert front.accepted == 2
    assert consul_double.count(path_prefix="/v1/catalog/register") == 1


# --------------------------------------------------------------------------------------------
# Dead connections


def test_a_connection_the_server_closed_is_replaced_before_a_write(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN an idle connection that the server has closed
    client = _http(front.url())
    client.kv_get("k")
    front.close_idle()

    # WHEN the next request is a write, with no retry above the transport
    client.catalog_register(_node("n1"))

    # THEN it went out once, on a new connection, and nothing failed
    assert consul_double.count(path_prefix="/v1/catalog/register") == 1
    assert "n1" in consul_double.nodes()
    assert front.accepted == 2


def test_a_read_on_a_flow_the_nlb_forgot_is_sent_again_on_a_new_connection(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN an idle connection whose flow the NLB forgot (the next packet gets a reset)
    client = _http(front.url())
    client.txn(_kv_set("k", "v"))
    front.forget_idle()

    # WHEN the client reads
    entry = client.kv_get("k")

    # THEN the read succeeds on a new connection; the lost attempt never reached Consul
    assert entry is not None
    assert entry.value == b"v"
    assert consul_double.count(method="GET") == 1
    assert front.accepted == 2


def test_a_write_on_a_flow_the_nlb_forgot_is_left_to_the_retry_layer(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN an idle connection whose flow the NLB forgot
    http = _http(front.url())
    http.kv_get("k")
    front.forget_idle()

    # WHEN a write is sent on it: THEN the transport reports it, it does not resend it
    with pytest.raises(ConsulUnavailable, match="PUT /v1/catalog/register"):
        http.catalog_register(_node("n1"))
    assert consul_double.count(path_prefix="/v1/catalog/register") == 0

    # AND through the retrying client (as the registrar calls it) it lands, once
    front.forget_idle()
    _retrying(http).catalog_register(_node("n1"))
    assert consul_double.count(path_prefix="/v1/catalog/register") == 1
    assert "n1" in consul_double.nodes()


def test_registers_that_got_no_answer_are_counted_and_refusals_are_not(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN a register answered 500, then one whose connection is dropped unanswered
    client = _retrying(_http(consul_double.url))
    consul_double.inject(kind="status", status=500, path_prefix="/v1/catalog/register")
    consul_double.inject(kind="late", path_prefix="/v1/catalog/register")

    # WHEN the retrying client sends it until it lands
    client.catalog_register(_node("n1"))

    # THEN only the unanswered one counts: Consul may still apply it, at any time
    assert [r.status for r in consul_double.requests] == [500, 0, 200]
    assert client.unanswered_registers == 1

    # AND a refused connection proves nothing was sent: it does not count
    closed = ConnectionPool("http://127.0.0.1:1")
    refused = _retrying(_http("http://127.0.0.1:1", closed))
    with pytest.raises(ConsulUnavailable, match="refused"):
        refused.catalog_register(_node("n1"))
    assert refused.unanswered_registers == 0


def test_a_register_that_timed_out_counts_as_unanswered(consul_double: ConsulDouble) -> None:
    # GIVEN Consul applies the register only after the client's timeout (the main production
    # case: the answer is slow, not lost)
    consul_double.inject(kind="delay", delay=1.0, path_prefix="/v1/catalog/register", times=1)
    pool = ConnectionPool(consul_double.url)
    http = HttpConsul(consul_double.url, token=StaticToken(None), connections=pool, timeout_s=0.2)
    client = _retrying(http)

    # WHEN the retrying client sends it until it is answered
    client.catalog_register(_node("n1"))

    # THEN the timed-out one counts: Consul may still apply it
    assert client.unanswered_registers == 1


def test_a_register_that_could_not_connect_is_not_unanswered(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN an https client against a plain-http Consul: the TLS handshake fails, so not one
    # byte of the request is sent (a DNS failure or a connect timeout is the same case)
    url = consul_double.url.replace("http://", "https://")
    client = _retrying(_http(url))

    # WHEN a register is sent
    with pytest.raises(ConsulUnavailable, match="could not connect"):
        client.catalog_register(_node("n1"))

    # THEN it is not counted: nothing can land later
    assert client.unanswered_registers == 0
    assert consul_double.count(path_prefix="/v1/catalog/register") == 0


def test_a_read_is_sent_again_once_and_only_on_a_reused_connection(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    client = _http(front.url())
    # A new connection dropped without an answer: Consul's own failure, reported at once.
    consul_double.inject(kind="refuse", path_prefix="/v1/kv/k")
    with pytest.raises(ConsulUnavailable, match="GET /v1/kv/k"):
        client.kv_get("k")
    assert consul_double.count(path_prefix="/v1/kv/k") == 1

    # A reused connection dropped twice: sent again once on a new connection, then reported.
    client.kv_get("other")
    consul_double.inject(kind="refuse", path_prefix="/v1/kv/k", times=2)
    with pytest.raises(ConsulUnavailable, match="GET /v1/kv/k"):
        client.kv_get("k")
    assert consul_double.count(path_prefix="/v1/kv/k") == 3


def test_a_registration_whose_txn_response_was_lost_is_settled_by_the_cas(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN the registrar's retrying client over kept-alive connections
    client = _retrying(_http(front.url()))

    # WHEN Consul applies a start's txn but the response is lost on the way back
    front.lose_response_to(b"PUT /v1/txn")
    result = apply.apply(client, key=KEY, node=NODE, desired=_registration(), version=3)

    # THEN the retried txn fails its cas (the first one had landed), the record is read again,
    # and the sidecar it names is written: the catalog is complete, the record written once
    assert [r.status for r in consul_double.requests if r.path == "/v1/txn"] == [200, 409]
    assert result.kind == "repaired"
    assert json.loads(consul_double.kv()[KEY][0])["version"] == 3
    sidecar = next(
        s for s in consul_double.services(node=NODE) if s["ServiceKind"] == "connect-proxy"
    )
    assert sidecar["ServiceProxy"]["Upstreams"]


def test_a_stop_whose_txn_response_was_lost_is_settled_by_the_cas(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN a registered task
    client = _retrying(_http(front.url()))
    apply.apply(client, key=KEY, node=NODE, desired=_registration(), version=3)

    # WHEN Consul applies its stop's txn but the response is lost on the way back
    front.lose_response_to(b"PUT /v1/txn")
    result = apply.apply(client, key=KEY, node=NODE, desired=None, version=5)

    # THEN the retried txn fails its cas and the record read again says it is done
    assert [r.status for r in consul_double.requests if r.path == "/v1/txn"] == [200, 200, 409]
    assert result.kind == "duplicate"
    record = json.loads(consul_double.kv()[KEY][0])
    assert (record["version"], record["status"]) == (5, "stopped")
    assert NODE not in consul_double.nodes()


# --------------------------------------------------------------------------------------------
# Threads


def test_concurrent_threads_never_share_a_connection(
    consul_double: ConsulDouble, front: TcpFront
) -> None:
    # GIVEN one client (one pool) used by eight threads at once
    client = _http(front.url())
    threads = 8
    barrier = threading.Barrier(threads)
    wrong: list[str] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(20):
                client.txn(_kv_set(f"t/{n}", f"{n}-{i}"))
                entry = client.kv_get(f"t/{n}")
                if entry is None or entry.value != f"{n}-{i}".encode():
                    wrong.append(f"thread {n} read {entry}")
        except BaseException as err:  # reported below, with the thread's number
            errors.append(err)

    # WHEN each writes and reads back its own key, over and over
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    # THEN every thread read its own answers (a shared connection would mix them up or fail)
    assert errors == []
    assert wrong == []
    assert consul_double.count() == threads * 20 * 2
    # AND connections were reused: at most one per thread, not one per request
    assert 1 <= front.accepted <= threads


# --------------------------------------------------------------------------------------------
# TLS: the same context and host name check as before, one handshake for many requests


def _tls_front(double: ConsulDouble, tmp_path: Path, server_name: str) -> tuple[str, TcpFront]:
    pki = make_pki(tmp_path, server_name)
    return pki.ca_pem, TcpFront(int(double.url.rsplit(":", 1)[1]), tls=pki.server_context())


def test_https_keeps_one_verified_tls_connection(
    consul_double: ConsulDouble, tmp_path: Path
) -> None:
    # GIVEN Consul behind TLS, its CA configured as CONSUL_CACERT (PEM text)
    ca_pem, tls = _tls_front(consul_double, tmp_path, "127.0.0.1")
    rt = fake_runtime(tls.url("https"), cacert=ca_pem)
    try:
        # WHEN two invocations' clients make several requests
        for _ in range(2):
            client = rt.consul(retry.Budget.fixed(30))
            client.catalog_register(_node("n1"))
            assert client.node_services("n1") == []
            assert client.kv_get("k") is None
    finally:
        rt.close()
        tls.close()

    # THEN one TLS handshake served them all
    assert consul_double.count() == 6
    assert (tls.accepted, tls.handshakes) == (1, 1)


def test_https_refuses_a_certificate_for_another_name(
    consul_double: ConsulDouble, tmp_path: Path
) -> None:
    # GIVEN a server whose certificate, signed by the configured CA, names another host
    ca_pem, tls = _tls_front(consul_double, tmp_path, "consul.other.example")
    rt = fake_runtime(tls.url("https"), cacert=ca_pem)
    try:
        # WHEN the registrar connects: THEN the host name check fails it, as a retryable error
        with pytest.raises(ConsulUnavailable, match="certificate verify failed"):
            _http(tls.url("https"), rt.consul_connections()).kv_get("k")
    finally:
        rt.close()
        tls.close()
    # AND nothing reached Consul
    assert consul_double.requests == []


@pytest.mark.parametrize("server_name", ["consul.mesh.example", "consul.mesh.example:8501"])
def test_consul_tls_server_name_is_the_name_checked_when_dialling_an_address(
    consul_double: ConsulDouble, tmp_path: Path, server_name: str
) -> None:
    # GIVEN a server whose certificate names consul.mesh.example only, dialled by its IP
    ca_pem, tls = _tls_front(consul_double, tmp_path, "consul.mesh.example")
    env = {
        "CONSUL_HTTP_ADDR": tls.url("https"),
        "ECS_CLUSTER_ARN": CLUSTER_ARN,
        "CONSUL_CACERT": ca_pem,
        # with or without a port, as Consul's clients take it (api/api.go SetupTLSConfig
        # drops the port)
        "CONSUL_TLS_SERVER_NAME": server_name,
    }
    rt = registrar.Runtime(registrar.Settings.from_env(env), token=StaticToken(None))
    try:
        # WHEN the registrar connects with Consul's CONSUL_TLS_SERVER_NAME set to that name,
        # THEN the certificate verifies and the request is served
        assert _http(tls.url("https"), rt.consul_connections()).kv_get("k") is None
    finally:
        rt.close()
        tls.close()
    assert consul_double.count() == 1


@pytest.mark.parametrize(
    ("value", "name"),
    [("[2001:db8::1]:8501", "2001:db8::1"), ("[2001:db8::1]", "[2001:db8::1]"), ("  ", None)],
)
def test_consul_tls_server_name_is_read_like_consuls_clients_read_it(
    value: str, name: str | None
) -> None:
    env = {"CONSUL_HTTP_ADDR": "https://10.0.0.1:8501", "ECS_CLUSTER_ARN": CLUSTER_ARN}
    settings = registrar.Settings.from_env({**env, "CONSUL_TLS_SERVER_NAME": value})
    assert settings.tls_server_name == name


@pytest.mark.parametrize("value", ["2001:db8::1", ":8501", "a:b:8501", "[::1]x:8501"])
def test_a_consul_tls_server_name_consul_would_refuse_is_refused_by_name(value: str) -> None:
    env = {"CONSUL_HTTP_ADDR": "https://10.0.0.1:8501", "ECS_CLUSTER_ARN": CLUSTER_ARN}
    with pytest.raises(registrar.ConfigError, match=re.escape(f"got {value!r}")) as refused:
        registrar.Settings.from_env({**env, "CONSUL_TLS_SERVER_NAME": value})
    assert str(refused.value).startswith("CONSUL_TLS_SERVER_NAME must be a host name or IP")


# --------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("address", "options", "message"),
    [
        ("consul:8501", {}, "must look like https://host:port, got 'consul:8501'"),
        ("ftp://consul:21", {}, "must look like https://host:port, got 'ftp://consul:21'"),
        ("http://consul:8500", {"max_idle": 0}, "max_idle must be at least 1, got 0"),
        ("http://consul:8500", {"max_idle_s": 0}, "max_idle_s must be a positive number"),
    ],
)
def test_fails_when_the_pool_is_misconfigured(
    address: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionPool(address, **options)


@pytest.mark.parametrize(
    ("address", "port"),
    [("https://consul.example", 8501), ("http://consul.example", 8500), ("https://c.example:9", 9)],
)
def test_an_address_without_a_port_dials_consuls_port(
    address: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a Consul address with no port (as the provider's ConsulHttpAddr may be given)
    dialled: list[tuple[str, int]] = []

    def refuse(where: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        dialled.append(where)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("socket.create_connection", refuse)
    # WHEN a request is sent, THEN it dials Consul's port (8501 https, 8500 http), not 443/80
    with pytest.raises(OSError, match="could not connect"):
        ConnectionPool(address).request(
            "GET", "/v1/status/leader", body=None, headers={}, timeout=1
        )
    assert dialled[0] == (address.split("//")[1].split(":", maxsplit=1)[0], port)


def test_an_answer_longer_than_max_body_is_cut_off_and_its_connection_dropped(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN 40 KB under one prefix, and a pool
    for n in range(40):
        consul_double.seed_kv(f"big/{n}", b"x" * 1000)
    pool = ConnectionPool(consul_double.url)
    headers = {"Accept": "application/json"}

    # WHEN it is read with max_body 10,000, THEN BodyTooLarge: no more than that was read
    with pytest.raises(BodyTooLarge, match="longer than 10000 bytes"):
        pool.request(
            "GET", "/v1/kv/big/?recurse", body=None, headers=headers, timeout=2, max_body=10_000
        )
    # AND the half-read connection is not reused: the next request gets its whole answer
    answer = pool.request("GET", "/v1/kv/big/?recurse", body=None, headers=headers, timeout=2)
    assert len(json.loads(answer.body)) == 40
    # AND an answer within max_body is read whole
    within = pool.request(
        "GET", "/v1/kv/big/1", body=None, headers=headers, timeout=2, max_body=len(answer.body)
    )
    assert json.loads(within.body)[0]["Key"] == "big/1"


class _OneShotServer:
    """A local HTTP/1.1 server answering each request with `answer(request_line)`'s raw bytes,
    then closing the connection when `close` says so; counts the connections it accepted."""

    def __init__(self, answer: Callable[[], bytes], *, close: bool) -> None:
        self._answer, self._close = answer, close
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as requests:
            while requests.readline():
                while requests.readline() not in (b"\r\n", b""):
                    pass  # headers; the tests send GETs without a body
                conn.sendall(self._answer())
                if self._close:
                    return

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("sent", [6495, 0])
@pytest.mark.parametrize("max_body", [None, 10**6])
def test_a_content_length_body_cut_short_is_a_failed_read(sent: int, max_body: int | None) -> None:
    # GIVEN a server that declares 12,990 bytes and closes after `sent` of them
    def answer() -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 12990\r\n\r\n" + b"[" * sent

    server = _OneShotServer(answer, close=True)
    try:
        # WHEN it is read, with or without max_body, THEN IncompleteRead, never a short body
        # (an empty one would read as "no records")
        with pytest.raises(http.client.IncompleteRead):
            ConnectionPool(server.url).request(
                "GET", "/v1/kv/x/?recurse", body=None, headers={}, timeout=2, max_body=max_body
            )
    finally:
        server.close()


def _chunked(body: bytes) -> bytes:
    # One chunk, as Go's net/http writes a handler's single large Write once the body outgrows
    # its 2,048-byte buffer (server.go bufferBeforeChunkingSize; Consul's agent/http.go `wrap`
    # writes the whole marshalled answer in one resp.Write).
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )


def test_a_chunked_answer_longer_than_max_body_is_cut_off_and_one_within_it_read_whole() -> None:
    # GIVEN a server sending a 40,000-byte answer chunked, as Consul sends any answer over 2 KB
    body = json.dumps([{"Key": "big/x", "Value": "x" * 39_950}]).encode()
    server = _OneShotServer(lambda: _chunked(body), close=False)
    pool = ConnectionPool(server.url)
    try:
        # WHEN it is read with max_body under its length, THEN BodyTooLarge
        with pytest.raises(BodyTooLarge, match=f"longer than {len(body) - 1} bytes"):
            pool.request(
                "GET",
                "/v1/kv/big/?recurse",
                body=None,
                headers={},
                timeout=2,
                max_body=len(body) - 1,
            )
        # AND with max_body exactly its length it is read whole, twice, on one new connection:
        # the cut-off one was dropped, the whole one (terminating chunk read) kept
        for _ in range(2):
            answer = pool.request(
                "GET", "/v1/kv/big/?recurse", body=None, headers={}, timeout=2, max_body=len(body)
            )
            assert answer.body == body
        assert server.accepted == 2
    finally:
        pool.close()
        server.close()
