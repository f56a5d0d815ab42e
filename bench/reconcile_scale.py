"""Figure 9: the reconcile pass at 100,000 tasks (issue 16 items 2 and 3), in sync and with 1 %
drift, host-mode tasks (the default deployment mode), 20 per host.

Wall time, peak memory, AWS calls, Consul requests and the bytes of the two big Consul reads
(the KV recurse of the cluster's records and the node listing), against the reconcile
function's 1,024 MB and 300 s. Figure 6's world (world.seed_registered: the catalog and the
state records seeded as the event path writes them), in a child process. Passes in order:
1. the first pass after a deploy (every task described), at AWS_LATENCY_S per AWS call and
   CONSUL_LATENCY_S per Consul request: the longest pass, one call after the other;
2. the marker set verified (as two clean passes 15 minutes apart leave it), then in sync: once
   as fast as the fakes answer, once under tracemalloc, once with the latency;
3. 1 % drift, twice (other tasks each time): once fast, once under tracemalloc.

The double runs in a child process (fork), so the parent's memory figures are the pass's own:
`tracemalloc` peak of every allocation made during the pass (FakeEcs's answers included, as
boto3 would parse them), and the process's ru_maxrss beside the RSS before the pass (which holds
the fake ECS world). Consul requests are counted in the child, and the read sizes measured
there. Nothing asserts on these figures.
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
from multiprocessing.connection import Connection
from typing import Any

import inventory
import kv_layout
import reconcile
import reconcile_consul
import registrar
import retry
from ecs_fake import FakeEcs
from registrar_fixtures import CLUSTER_ARN, seed_settled_markers

from bench.reconcile_cost import (
    AWS_LATENCY_S,
    CONSUL_LATENCY_S,
    DRIFT,
    LAMBDA_TIMEOUT_S,
    TASKS_PER_HOST,
    Stopwatch,
    latency_row,
)
from bench.report import Row, quiet
from bench.world import HOST_MODE, host_ports, runtime, seed_registered, task_id
from tests.consul_double import ConsulDouble

FIGURE = "9 reconcile at scale"
# BENCH_SCALE_TASKS overrides the size (a loaded machine may not build 100,000 in time).
TASKS = int(os.environ.get("BENCH_SCALE_TASKS", "100000"))
LAMBDA_MEMORY_MB = 1024  # the reconcile function's memory_size (mesh_stack/reconcile.py)
# The double is Python: filtering 100,000+ checks for one listing takes it seconds on a loaded
# machine, past the registrar's 5 s per request (CONSUL_TIMEOUT_SECONDS) and possibly its 30 s
# per listing (CONSUL_LIST_TIMEOUT_SECONDS). Consul's own answer time is not what this figure
# measures.
DOUBLE_TIMEOUT_S = 120.0


def build_ecs(tasks: int) -> FakeEcs:
    """The same world in parent and child: host-mode task n on host n % hosts."""
    ecs = FakeEcs()
    instances = ecs.add_instances(max(1, tasks // TASKS_PER_HOST))
    for n in range(tasks):
        put_task(ecs, instances, n)
    return ecs


def put_task(ecs: FakeEcs, hosts: list[str], n: int, **state: Any) -> None:
    ecs.put_task(
        task_id(n),
        family=HOST_MODE,
        container_instance_arn=hosts[n % len(hosts)],
        host_ports=host_ports(n, HOST_MODE),
        **state,
    )


def _serve(conn: Connection, tasks: int) -> None:
    """Child: a seeded double, answering the parent's questions about it."""
    with quiet(), ConsulDouble() as double:
        seed_registered(double, build_ecs(tasks), verified=False)
        conn.send(double.url)
        while True:
            question = conn.recv()
            answer: Any = None
            if question == "reset":
                double.reset_requests()
            elif question == "count":
                answer = (double.count(), double.writes())
            elif question == "verify":
                seed_settled_markers(double)
            elif question == "latency":
                double.inject(kind="delay", delay=CONSUL_LATENCY_S, times=-1)
            elif question == "no latency":
                double.clear_faults()
            elif question == "sizes":
                answer = read_sizes(double.url)
            else:
                conn.send(None)
                return
            conn.send(answer)


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
    peak_bytes: int  # tracemalloc's, when traced
    rss_before: int  # the process's resident set before the pass, bytes
    maxrss: int  # ru_maxrss after the pass, bytes
    report: reconcile.PassReport


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_pass(
    remote: Remote, ecs: FakeEcs, rt: registrar.Runtime, *, traced: bool, latency: bool = False
) -> Cost:
    """One pass; `traced`: under tracemalloc (its peak; its wall time is tracemalloc's too);
    `latency`: AWS_LATENCY_S per AWS call, CONSUL_LATENCY_S per Consul request."""
    remote.ask("reset")
    before = Counter(ecs.calls)
    gc.collect()
    rss_before = _rss()
    slow = Stopwatch(ecs, AWS_LATENCY_S)

    def clients(service: str) -> Any:
        ecs.clients(service)  # rejects a service the fake does not answer for
        return slow if latency else ecs

    if latency:
        remote.ask("latency")
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        report = reconcile.run_pass(
            rt, reconcile.ReconcileSettings(), retry.Budget.fixed(900.0), clients=clients
        )
    finally:
        seconds = time.perf_counter() - start
        if latency:
            remote.ask("no latency")
    peak = 0
    if traced:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    calls = Counter(ecs.calls)
    calls.subtract(before)
    requests, writes = remote.ask("count")
    return Cost(+calls, requests, writes, seconds, peak, rss_before, maxrss, report)


def add_drift(ecs: FakeEcs, first: int, count: int) -> None:
    """`count` tasks drift: half start unseen (IDs from `first`), half of the oldest stop unseen."""
    hosts = list(ecs.instances)[1:]
    for n in range(first, first + count // 2):
        put_task(ecs, hosts, n)
    stop_from = first - TASKS  # 0 for the first drift, then further along
    for n in range(stop_from, stop_from + count - count // 2):
        put_task(ecs, hosts, n, version=5, last_status="STOPPED", desired_status="STOPPED")


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


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def measure() -> list[Row]:
    tasks = TASKS
    ecs = build_ecs(tasks)
    with quiet(), remote_double(tasks) as remote:
        rt = runtime(remote.url, ecs, consul_timeout_s=DOUBLE_TIMEOUT_S)
        first = run_pass(remote, ecs, rt, traced=False, latency=True)
        remote.ask("verify")
        in_sync = run_pass(remote, ecs, rt, traced=False)
        in_sync_traced = run_pass(remote, ecs, rt, traced=True)
        in_sync_slow = run_pass(remote, ecs, rt, traced=False, latency=True)
        drift = round(tasks * DRIFT)
        add_drift(ecs, tasks, drift)
        drifted = run_pass(remote, ecs, rt, traced=False)
        add_drift(ecs, tasks + drift, drift)  # the same drift again, other tasks
        drifted_traced = run_pass(remote, ecs, rt, traced=True)
        kv_bytes, shard_bytes, node_bytes = remote.ask("sizes")
    label = f"{FIGURE} {tasks:,} tasks"
    rows = [
        Row(
            f"{label}, first pass after a deploy: AWS API calls",
            sum(first.aws_calls.values()),
            "calls",
            f"{_calls(first)}; every task described; Consul {first.consul_requests} requests",
        ),
        latency_row(
            FIGURE,
            tasks,
            "first pass after a deploy",
            seconds=first.seconds,
            aws_calls=first.aws_calls,
            requests=first.consul_requests,
        ),
        latency_row(
            FIGURE,
            tasks,
            "in sync",
            seconds=in_sync_slow.seconds,
            aws_calls=in_sync_slow.aws_calls,
            requests=in_sync_slow.consul_requests,
        ),
    ]
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
                f"function memory {LAMBDA_MEMORY_MB} MB; process ru_maxrss {_mib(cost.maxrss)} "
                f"after the pass, RSS {_mib(cost.rss_before)} before it (the fake ECS world of "
                f"{TASKS:,} tasks and the bench)",
            ),
            Row(
                f"{label}, {name}: AWS API calls",
                sum(cost.aws_calls.values()),
                "calls",
                _calls(cost) + ("; marker verified (seeded)" if name == "in sync" else ""),
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
            "the cluster's task nodes, in one read",
        ),
    ]
    return rows
