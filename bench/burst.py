"""Figure 4: 1,000 tasks start at once; how long until the catalog holds all of them.

Every Consul request costs LATENCY_S more at the double (a Consul server a few ms away).
The 1,000 RUNNING events reach the queue together; SQS hands out batches of 10 to at most
`registrar_concurrency` concurrent invocations (the configured MaximumConcurrency, default of
mesh_stack/config.py), played here by that many threads calling handler.handler. A failed
message goes back to the queue, as SQS would redeliver it.

The lower bound: requests x LATENCY_S / concurrency, what the burst would take if the
registrar's own work and the HTTP round trips cost nothing beyond the added latency.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from bench.report import Row, quiet
from bench.world import batches, invoke, mesh
from mesh_stack.config import FIELDS

FIGURE = "4 burst"
TASKS = 1000
LATENCY_S = 0.005
CONCURRENCY: int = FIELDS["registrar_concurrency"].default


def _drain(work: queue.Queue[dict[str, Any]], redelivered: list[str], cpu_s: list[float]) -> None:
    """One concurrent invocation slot: take batches until the queue is empty."""
    cpu_start = time.thread_time()
    while True:
        try:
            batch = work.get_nowait()
        except queue.Empty:
            cpu_s.append(time.thread_time() - cpu_start)
            return
        failed = set(invoke(batch))
        if failed:
            redelivered.extend(failed)
            retry = [r for r in batch["Records"] if r["messageId"] in failed]
            work.put({"Records": retry})


def measure() -> list[Row]:
    with quiet(), mesh() as m:
        m.warm()
        events = [m.running(n) for n in range(TASKS)]
        work: queue.Queue[dict[str, Any]] = queue.Queue()
        for batch in batches(events):
            work.put(batch)
        redelivered: list[str] = []
        handler_cpu: list[float] = []
        workers = [
            threading.Thread(
                target=_drain, args=(work, redelivered, handler_cpu), name=f"invocation-{i}"
            )
            for i in range(CONCURRENCY)
        ]
        m.consul.latency = LATENCY_S
        cpu_start = time.process_time()
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        m.consul.latency = 0.0
        requests = m.consul.count()
        registered = m.task_nodes()
    if registered != TASKS:
        raise RuntimeError(f"the catalog holds {registered} of {TASKS} tasks after the burst")
    bound = requests * LATENCY_S / CONCURRENCY
    return [
        Row(
            f"{FIGURE}: {TASKS} tasks start at once, +{LATENCY_S * 1000:g} ms per Consul "
            f"request, {CONCURRENCY} concurrent invocations: time to converge ÷ lower bound",
            elapsed / bound,
            "x",
            f"converged in {elapsed:.2f} s; lower bound {requests} requests x "
            f"{LATENCY_S * 1000:g} ms ÷ {CONCURRENCY} = {bound:.2f} s; "
            f"{len(redelivered)} redeliveries; CPU in this one interpreter: invocations "
            f"{sum(handler_cpu):.2f} s, the double {cpu - sum(handler_cpu):.2f} s",
        )
    ]
