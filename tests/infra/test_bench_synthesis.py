"""bench/synthesis.py's measured run (figure 1 and bench.synth_profile): CPU of every process a
run leaves behind, without waiting for the children the bench process itself keeps.

`python -m bench.run` imports modules that start jsii's Node process in the bench process; that
child lives as long as the bench. Waiting for "every child" after a run waited for it forever.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from bench.synthesis import Run, collecting_orphans, measured
from tests.conftest import ROOT

# A run that leaves a child to finish alone (as app.py leaves jsii's Node) and returns at once.
_LEAVES_AN_ORPHAN = (
    "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'sum(range(40_000_000))'])\n"
)


def test_a_measured_run_counts_what_it_left_and_ignores_the_bench_s_own_children() -> None:
    # GIVEN the bench process already has a long-lived child (jsii's Node, when it is started)
    own_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    results: list[Run] = []
    try:
        # WHEN a run that leaves an orphan behind is measured
        def run() -> None:
            with collecting_orphans():
                done, measured_run = measured(
                    [sys.executable, "-c", _LEAVES_AN_ORPHAN], cwd=ROOT, env={}
                )
            assert done.returncode == 0, done.stderr
            results.append(measured_run)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=120)
        # THEN it returns once the orphan ended, not when the bench's own child does
        assert results, "the measured run waited for the bench process's own child"
        # AND the orphan's CPU (summing 40 million integers) is in the run's CPU
        assert results[0].cpu_s > 0.2
        assert own_child.poll() is None
    finally:
        own_child.kill()
        own_child.wait()
