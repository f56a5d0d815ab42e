"""Replay recorded Consul requests: the floor of a figure, and what connection reuse would gain.

A figure's Consul requests, replayed in order against a fresh double, cost what the HTTP round
trips and Consul's (the double's) own work cost; whatever the handler needed beyond that is
the registrar's own work (parsing, deciding, JSON, logging). Replaying in the same order from
the same empty state reproduces the same indexes, so cas writes succeed as they did.

Two transports: one persistent HTTP/1.1 connection (http.client), what the registrar pays now
that it keeps its connections (lambda/shared/connections.py), and a new TCP connection per
request (urllib), what it paid before.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

from tests.consul_double import ConsulDouble, RecordedRequest

Send = Callable[[RecordedRequest], int]


def _target(r: RecordedRequest) -> tuple[str, bytes | None, dict[str, str]]:
    """Path with query, body and headers as the registrar sent them."""
    target = urllib.parse.quote(r.path) + "?" * bool(r.query)
    target += urllib.parse.urlencode(r.query, doseq=True)
    write = r.method in ("PUT", "POST", "DELETE")
    headers = {"Content-Type": "application/json"} if write else {}
    return target, r.body if write else None, headers


def _per_request(base: str) -> Send:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def send(r: RecordedRequest) -> int:
        target, body, headers = _target(r)
        request = urllib.request.Request(base + target, data=body, method=r.method, headers=headers)
        try:
            with opener.open(request, timeout=10) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as err:
            with err:
                err.read()
                return int(err.code)

    return send


def _keep_alive(base: str) -> tuple[Send, Callable[[], None]]:
    host, port = urllib.parse.urlsplit(base).netloc.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)

    def send(r: RecordedRequest) -> int:
        target, body, headers = _target(r)
        connection.request(r.method, target, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status

    return send, connection.close


def replay(
    setup: Sequence[RecordedRequest], timed: Sequence[RecordedRequest], *, keep_alive: bool
) -> float:
    """Seconds to replay `timed` after `setup` (untimed) against a fresh double.

    Raises when an answer differs from the recorded one: the floor would not be the same work.
    """
    with ConsulDouble() as double:
        close: Callable[[], None] = lambda: None  # noqa: E731
        if keep_alive:
            send, close = _keep_alive(double.url)
        else:
            send = _per_request(double.url)
        try:
            for r in setup:
                send(r)
            start = time.perf_counter()
            statuses = [send(r) for r in timed]
            elapsed = time.perf_counter() - start
        finally:
            close()
    differ = [
        f"{r.method} {r.path}: {r.status} then {s}"
        for r, s in zip(timed, statuses, strict=True)
        if s != r.status
    ]
    if differ:
        raise RuntimeError(f"the replay answered differently: {differ[:3]}")
    return elapsed
