"""Figure 3: events per second through handler.handler, one process, no added Consul latency.

In each of ROUNDS rounds, on a fresh double, TASKS tasks are started and then stopped (2
events each) in SQS batches of 10, with the host and task definition caches warm. The
comparison is the same Consul requests replayed alone right after (bench/replay.py): the
ceiling the registrar would reach if its own work cost nothing, over one kept-alive connection
(the registrar's transport) and with a new connection per request (its transport before it
kept connections). Medians over the rounds; the handler ÷ replay time ratio is taken per
round, so load that comes and goes cancels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.replay import replay
from bench.report import Row, median, quiet
from bench.world import batches, invoke, mesh

FIGURE = "3 throughput"
ROUNDS = 5
TASKS = 100
WARM_UP_TASKS = 10


@dataclass(frozen=True)
class Round:
    events: int
    requests: int
    handler_s: float
    replay_s: float
    keep_alive_s: float
    aws_calls: int


def one_round() -> Round:
    with quiet(), mesh() as m:
        m.warm()
        for batch in batches([m.running(TASKS + n) for n in range(WARM_UP_TASKS)]):
            invoke(batch)
        setup = list(m.consul.requests)
        m.consul.reset_requests()
        aws_before = m.aws_calls()
        events = [m.running(n) for n in range(TASKS)] + [m.stopped(n) for n in range(TASKS)]
        work = batches(events)
        start = time.perf_counter()
        failed = [message for batch in work for message in invoke(batch)]
        elapsed = time.perf_counter() - start
        timed = list(m.consul.requests)
        aws_calls = m.aws_calls() - aws_before
    if failed:
        raise RuntimeError(f"{len(failed)} messages failed, e.g. {failed[:3]}")
    return Round(
        events=len(events),
        requests=len(timed),
        handler_s=elapsed,
        replay_s=replay(setup, timed, keep_alive=False),
        keep_alive_s=replay(setup, timed, keep_alive=True),
        aws_calls=aws_calls,
    )


def measure() -> list[Row]:
    rounds = [one_round() for _ in range(ROUNDS)]
    events = rounds[0].events
    per_event = rounds[0].requests / events
    handler_rate = median([r.events / r.handler_s for r in rounds])
    replay_rate = median([r.events / r.replay_s for r in rounds])
    keep_alive_rate = median([r.events / r.keep_alive_s for r in rounds])
    ratio = median([r.handler_s / r.keep_alive_s for r in rounds])
    return [
        Row(
            f"{FIGURE}: events/s through handler.handler (start+stop of {TASKS} tasks, "
            f"batches of 10, warm caches, 1 thread; median of {ROUNDS} rounds)",
            handler_rate,
            "events/s",
            f"its Consul requests ({per_event:.1f}/event) replayed alone over one kept-alive "
            f"connection: {keep_alive_rate:,.0f} events/s (handler ÷ replay time {ratio:.2f}); "
            f"with a new connection per request: {replay_rate:,.0f} events/s; "
            f"{sum(r.aws_calls for r in rounds)} AWS calls",
        )
    ]
