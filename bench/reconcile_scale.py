"""Figure 9: the reconcile pass at 100,000 tasks (issue 16 item 2), in sync and with 1 % drift.

Wall time, peak memory, AWS calls, Consul requests and the bytes of the two big Consul reads
(the KV recurse of the cluster's records and the node listing). Figure 6's world, built faster:
the catalog and the state records are seeded into the Consul double exactly as the event path
writes them (the same txn ops from catalog.py, the same sidecar body, the same record), not
through 100,000 handler invocations.

The double runs in a child process (fork), so the parent's memory figures are the pass's own:
`tracemalloc` peak of every allocation made during the pass (FakeEcs's answers included, as
boto3 would parse them), and the process's peak RSS for context. Consul requests are counted in
the child. Nothing asserts on these figures.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import resource
import time
import tracemalloc
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import aws
import catalog
import decide
import inventory
import kv_layout
import reconcile
import reconcile_consul
import registrar
import retry
from ecs_fake import FakeEcs
from model import RUNNING, Host, StateRecord, task_event_from_detail
from registrar_fixtures import CLUSTER_ARN, seed_settled_markers

from bench.report import Row, quiet
from bench.world import runtime
from tests.consul_double import ConsulDouble

FIGURE = "9 reconcile at scale"
# BENCH_SCALE_TASKS overrides the size (a loaded machine may not build 100,000 in time).
TASKS = int(os.environ.get("BENCH_SCALE_TASKS", "100000"))
TASKS_PER_HOST = 20
DRIFT = 0.01
LAMBDA_MEMORY_MB = 1024  # the reconcile function's memory_size (mesh_stack/reconcile.py)
LAMBDA_TIMEOUT_S = 300  # its timeout: RECONCILE_TIMEOUT, at most the interval


def task_id(n: int) -> str:
    """Task n's ID. ECS task IDs are random hex, so their first digit (the shard) is uniform;
    `n` in hex, reversed, spreads sequential numbers the same way."""
    return f"{n:032x}"[::-1]


def build_ecs(tasks: int) -> FakeEcs:
    """The same world in parent and child: tasks n on host n % hosts."""
    ecs = FakeEcs()
    instances = ecs.add_instances(max(1, tasks // TASKS_PER_HOST))
    for n in range(tasks):
        ecs.put_task(
            task_id(n),
            container_instance_arn=instances[n % len(instances)],
            host_ports={"web": {8080: 32768 + n % 20000}, "envoy": {20000: 52768 + n % 10000}},
        )
    return ecs


def seed(double: ConsulDouble, ecs: FakeEcs) -> None:
    """What the event path writes for every running task, applied directly to the double."""
    definitions = aws.EcsTaskDefinitions(lambda: ecs)
    now = datetime.now(UTC)
    for tid, detail in ecs.tasks.items():
        event = task_event_from_detail(detail, event_id=tid, event_time=now)
        definition = definitions.get(event.task_definition_arn)
        app = decide.mesh_target(definition)
        assert not isinstance(app, decide.Skip)
        instance = ecs.instances[str(event.container_instance_arn)]
        host = Host(address=instance.address, instance_id=instance.instance_id, source="ssm")
        registration = decide.desired_registration(event, definition, app, host)
        body = catalog.sidecar_body(registration)
        record = StateRecord(event.version, RUNNING, registration.digest(), body, now.isoformat())
        key = kv_layout.task_key(CLUSTER_ARN, tid)
        double.seed_txn([catalog.kv_cas_op(key, record, 0), *catalog.register_ops(registration)])
        double.seed_register(dict(body))
    seed_settled_markers(double)


def _serve(conn: Connection, tasks: int) -> None:
    """Child: a seeded double, answering the parent's questions about it."""
    with quiet(), ConsulDouble() as double:
        seed(double, build_ecs(tasks))
        conn.send(double.url)
        while True:
            question = conn.recv()
            if question == "reset":
                double.reset_requests()
                conn.send(None)
            elif question == "count":
                conn.send((double.count(), double.writes()))
            else:
                conn.send(None)
                return


@dataclass
class Remote:
    url: str
    conn: Connection

    def ask(self, question: str) -> Any:
        self.conn.send(question)
        return self.conn.recv()


@contextmanager
def remote_double(tasks: int) -> Iterator[Remote]:
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(child, tasks))
    process.start()
    try:
        yield Remote(parent.recv(), parent)
    finally:
        parent.send("stop")
        process.join(60)


@dataclass(frozen=True)
class Cost:
    aws_calls: Counter[str]
    consul_requests: int
    consul_writes: int
    seconds: float
    peak_bytes: int
    report: reconcile.PassReport


def run_pass(remote: Remote, ecs: FakeEcs, rt: registrar.Runtime, *, traced: bool) -> Cost:
    """One pass; `traced`: under tracemalloc (its peak; its wall time is tracemalloc's too)."""
    remote.ask("reset")
    before = Counter(ecs.calls)
    gc.collect()
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    report = reconcile.run_pass(
        rt, reconcile.ReconcileSettings(), retry.Budget.fixed(900.0), clients=ecs.clients
    )
    seconds = time.perf_counter() - start
    peak = 0
    if traced:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    calls = Counter(ecs.calls)
    calls.subtract(before)
    requests, writes = remote.ask("count")
    return Cost(+calls, requests, writes, seconds, peak, report)


def add_drift(ecs: FakeEcs, first: int, count: int) -> None:
    """`count` tasks drift: half start unseen (IDs from `first`), half of the oldest stop unseen."""
    hosts = list(ecs.instances)[1:]
    for n in range(first, first + count // 2):
        ecs.put_task(
            task_id(n),
            container_instance_arn=hosts[n % len(hosts)],
            host_ports={"web": {8080: 32768 + n % 20000}, "envoy": {20000: 52768 + n % 10000}},
        )
    stop_from = first - TASKS  # 0 for the first drift, then further along
    for n in range(stop_from, stop_from + count - count // 2):
        ecs.put_task(
            task_id(n),
            version=5,
            last_status="STOPPED",
            desired_status="STOPPED",
            container_instance_arn=hosts[n % len(hosts)],
        )


def read_sizes(url: str) -> tuple[int, int, int]:
    """Bytes of the KV recurse in one read, of its largest shard, and of the node listing."""
    prefix = kv_layout.cluster_prefix(CLUSTER_ARN)

    def size(path: str) -> int:
        try:
            with urllib.request.urlopen(url + path, timeout=300) as response:
                return len(response.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:  # Consul answers an empty recurse with 404
                return 0
            raise

    nodes_query = urllib.parse.urlencode({"filter": inventory.owned_nodes_filter(CLUSTER_ARN)})
    whole = size(f"/v1/kv/{prefix}?recurse")
    shard = max(size(f"/v1/kv/{prefix}tasks/{digit}?recurse") for digit in "0123456789abcdef")
    return whole, shard, size(f"/v1/catalog/nodes?{nodes_query}")


def _calls(cost: Cost) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(cost.aws_calls.items()))


def measure() -> list[Row]:
    tasks = TASKS
    ecs = build_ecs(tasks)
    with quiet(), remote_double(tasks) as remote:
        rt = runtime(remote.url, ecs)
        kv_bytes, shard_bytes, node_bytes = read_sizes(remote.url)
        in_sync = run_pass(remote, ecs, rt, traced=False)
        in_sync_traced = run_pass(remote, ecs, rt, traced=True)
        drift = round(tasks * DRIFT)
        add_drift(ecs, tasks, drift)
        drifted = run_pass(remote, ecs, rt, traced=False)
        add_drift(ecs, tasks + drift, drift)  # the same drift again, other tasks
        drifted_traced = run_pass(remote, ecs, rt, traced=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = f"{FIGURE} {tasks:,} tasks"
    rows = []
    for name, cost, traced in (
        ("in sync", in_sync, in_sync_traced),
        ("1 % drift", drifted, drifted_traced),
    ):
        r = cost.report
        rows += [
            Row(
                f"{label}, {name}: wall time",
                cost.seconds,
                "s",
                f"one pass, AWS answering instantly; function timeout {LAMBDA_TIMEOUT_S} s",
            ),
            Row(
                f"{label}, {name}: peak memory (tracemalloc)",
                round(traced.peak_bytes / 2**20, 1),
                "MiB",
                f"function memory {LAMBDA_MEMORY_MB} MB; process peak RSS {rss_mb:.0f} MiB "
                f"includes the {TASKS:,}-task fake ECS world",
            ),
            Row(
                f"{label}, {name}: AWS API calls",
                sum(cost.aws_calls.values()),
                "calls",
                _calls(cost),
            ),
            Row(
                f"{label}, {name}: Consul requests",
                cost.consul_requests,
                f"requests ({cost.consul_writes} writes)",
                f"in sync {r.in_sync}, re-registered {r.missing}, removed {r.stale}, held back "
                f"{r.held_back}, deferred {r.deferred}, complete {r.complete}",
            ),
        ]
    rows += [
        Row(
            f"{label}: KV recurse",
            round(kv_bytes / 2**20, 1),
            "MiB",
            f"the cluster's state records in one read; largest of the 16 shards the pass reads "
            f"from {reconcile_consul.SHARD_TASKS:,} listed tasks: {shard_bytes / 2**20:.1f} MiB",
        ),
        Row(
            f"{label}: node listing",
            round(node_bytes / 2**20, 1),
            "MiB",
            "the cluster's task nodes",
        ),
    ]
    return rows
