"""Run the benchmarks and print one table: `python -m bench.run [--only NAME ...] [--profile]`.

Figures (bench/README.md explains each and records a run):
1 synthesis, 2 lifecycle, 3 throughput, 4 burst, 5 cold start, 6 reconcile cost, 7 teardown,
8 services.
Each figure is measured against its comparison in the same run, so machine noise cancels;
nothing here asserts on wall time. The whole run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType

from bench import (
    burst,
    cold_start,
    lifecycle,
    reconcile_cost,
    services,
    synthesis,
    teardown,
    throughput,
)
from bench.profiling import profiled
from bench.report import Row, machine, table

FIGURES: dict[str, ModuleType] = {
    "synthesis": synthesis,
    "lifecycle": lifecycle,
    "throughput": throughput,
    "burst": burst,
    "cold_start": cold_start,
    "reconcile": reconcile_cost,
    "teardown": teardown,
    "services": services,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(FIGURES),
        help="run only this figure (repeatable); default: all, in order",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile each figure run in this process (all threads) and print it to stderr",
    )
    args = parser.parse_args(argv)
    names = args.only or list(FIGURES)
    print(f"machine: {machine()}", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for name in names:
        begun = time.perf_counter()
        measure: Callable[[], list[Row]] = FIGURES[name].measure
        if args.profile:
            figure_rows, report = profiled(measure)
            print(f"== profile of {name}\n{report}", file=sys.stderr)
        else:
            figure_rows = measure()
        rows.extend(figure_rows)
        print(f"{name}: done in {time.perf_counter() - begun:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
