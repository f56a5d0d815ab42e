"""Figure 7: the stack teardown's time for 1,000 hosts, on the pool of workers ÷ one at a time.

`tear_down` (lambda/activation/teardown.py) runs against the fakes of the tests
(tests/lambda/teardown_fakes.py: every request validated against botocore's models), with
1,000 hosts of this stack and 1,000 managed instances of other teams in the account. Each API
call sleeps LATENCY / SCALE, so the figure takes seconds; the wall time is scaled back up by
SCALE. The fakes' own CPU (validation, paging) is scaled up with it, so the times are upper
bounds; the lower bounds (calls x LATENCY / workers) are printed beside them. LATENCY is an
assumption, not a measurement of AWS (there is no AWS account here): 100 ms per call.
Throttling is not simulated: a throttled account stretches every figure by the retries' waits.
The comparison is the same code with one worker, i.e. the sequential teardown the review
measured against the function's 180 s. The largest fleet torn down in one run is derived from
the time per host and the budget the function has before it stops starting calls
(180 s - STOP_STARTING_SECONDS).
"""

from __future__ import annotations

import time

from asset_modules import load
from teardown_fakes import CLUSTER, ROLE, ROLE_ARN, Api, big_world

from bench.report import Row

FIGURE = "7 teardown"
HOSTS = 1000
LATENCY = 0.100  # simulated seconds per API call (an assumption, see the docstring)
SCALE = 10  # the simulation sleeps LATENCY / SCALE per call
FUNCTION_SECONDS = 180.0  # mesh_stack/ecs_anywhere.py FUNCTION_TIMEOUT


def simulated_seconds(workers: int) -> tuple[float, int]:
    """(simulated time of one teardown of HOSTS hosts, an upper bound; API calls)."""
    teardown = load("activation", "teardown")
    teardown.WORKERS = workers
    ecs, ssm = big_world(HOSTS, others=HOSTS, api=Api(latency=LATENCY / SCALE))
    started = time.perf_counter()
    teardown.tear_down(ecs, ssm, cluster=CLUSTER, role_name=ROLE, role_arn=ROLE_ARN)
    elapsed = time.perf_counter() - started
    assert all(h.status == "INACTIVE" for h in ecs.hosts), "the teardown left hosts behind"
    return elapsed * SCALE, len(ecs.calls) + len(ssm.calls)


def measure() -> list[Row]:
    workers = load("activation", "teardown").WORKERS
    pooled, calls = simulated_seconds(workers)
    sequential, _ = simulated_seconds(1)
    budget = FUNCTION_SECONDS - load("activation", "teardown").STOP_STARTING_SECONDS
    per_host = pooled / HOSTS
    return [
        Row(
            f"{FIGURE}: {HOSTS:,} hosts (+{HOSTS:,} other teams' nodes), "
            f"{LATENCY * 1000:.0f} ms per call, {workers} workers ÷ 1 worker",
            pooled / sequential,
            "x",
            f"{workers} workers {pooled:.1f} s, 1 worker {sequential:.1f} s (simulated at "
            f"1/{SCALE} time, upper bounds); {calls:,} API calls: lower bounds "
            f"{calls * LATENCY / workers:.1f} s / {calls * LATENCY:.0f} s",
        ),
        Row(
            f"{FIGURE}: largest fleet torn down in one run ({budget:.0f} s before the function "
            "stops starting calls)",
            int(budget / per_host),
            "hosts",
            f"{per_host * 1000:.0f} ms per host with {workers} workers; 1 worker: "
            f"{int(budget / (sequential / HOSTS)):,} hosts. Beyond it: FAILED, re-run cdk destroy",
        ),
    ]
