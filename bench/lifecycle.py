"""Figure 2: Consul requests per task lifecycle, and the writes duplicates and reconcile cost.

Counted at the double, so every retry, read-back and verification the registrar makes is in
the figure. Two lifecycles: the minimal one (RUNNING, then STOPPED) and the events ECS really
emits for a task that is started and stopped (PENDING, RUNNING, STOPPING, STOPPED). Then every
event of the latter is delivered a second time (at-least-once delivery), and a reconcile pass
runs over a catalog that is in sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.report import Row, quiet
from bench.world import Mesh, deliver, mesh

FIGURE = "2 lifecycle"
IN_SYNC_TASKS = 200
STATUSES = ("PENDING", "RUNNING", "STOPPING", "STOPPED")


def _each(m: Mesh, events: Sequence[dict[str, Any]]) -> tuple[list[int], int]:
    """Requests the double saw for each event, applied one by one, and the writes among them."""
    m.consul.reset_requests()
    counts = []
    for event in events:
        before = m.consul.count()
        deliver([event])
        counts.append(m.consul.count() - before)
    return counts, m.consul.writes()


def _ecs_sequence(m: Mesh, n: int) -> list[dict[str, Any]]:
    """What EventBridge delivers for one task that is started and then stopped."""
    pending = m.running(n, version=1)
    pending["detail"]["lastStatus"] = "PENDING"
    for container in pending["detail"]["containers"]:
        container["networkBindings"] = []
    stopping = m.running(n, version=4)
    stopping["detail"]["lastStatus"] = "STOPPING"
    stopping["detail"]["desiredStatus"] = "STOPPED"
    return [pending, m.running(n, version=3), stopping, m.stopped(n, version=5)]


def _per_status(counts: Sequence[int]) -> str:
    return ", ".join(f"{s} {c}" for s, c in zip(STATUSES, counts, strict=True))


def measure() -> list[Row]:
    with quiet(), mesh() as m:
        m.warm()
        (start, stop), minimal_writes = _each(m, [m.running(1), m.stopped(1)])
        sequence = _ecs_sequence(m, 3)
        emitted, emitted_writes = _each(m, sequence)
        again, again_writes = _each(m, sequence)
    return [
        Row(
            f"{FIGURE}: Consul requests, RUNNING then STOPPED",
            start + stop,
            f"requests ({minimal_writes} writes)",
            f"RUNNING {start} + STOPPED {stop}; a bare register + deregister is 2 but is not "
            "safe under duplicates or reordering",
        ),
        Row(
            f"{FIGURE}: Consul requests, the 4 events ECS emits",
            sum(emitted),
            f"requests ({emitted_writes} writes)",
            _per_status(emitted),
        ),
        Row(
            f"{FIGURE}: Consul writes, those 4 events delivered again",
            again_writes,
            f"writes ({sum(again) - again_writes} reads)",
            f"expected 0; reads: {_per_status(again)}",
        ),
        _reconcile_in_sync(),
    ]


def _reconcile_in_sync() -> Row:
    """A fresh cluster whose every task was registered by its event: nothing to repair."""
    from bench.reconcile_cost import run_pass

    with quiet(), mesh() as m:
        deliver([m.running(n) for n in range(IN_SYNC_TASKS)])
        cost = run_pass(m)
    return Row(
        f"{FIGURE}: Consul writes, reconcile pass over {IN_SYNC_TASKS} tasks in sync",
        cost.consul_writes,
        f"writes ({cost.consul_requests} requests)",
        "expected 0",
    )
