"""Where a synthesis spends its time: `python -m bench.synth_profile [--runs N] [--node-profile]`.

Figure 1 gives one ratio; this breaks both of its apps (run as `cdk synth` runs them, see
bench/synthesis.py) into phases, each with its wall time, the CPU of the Python process and
the CPU of jsii's two Node processes (read from /proc, so Linux only), plus the jsii round
trips per phase. "rest" is what the phases leave: Python's start-up, and at the end Python's
teardown and Node's exit (CPU until every process ended; wall time until Python exited).
With --node-profile, one more run of each app with `node --cpu-prof` splits the kernel's
time into what it did (CloudFormation validation, each cdk-nag pack, module loading, ...).
Medians of --runs runs; the apps alternate.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.synthesis import (
    CLI_CONTEXT,
    collecting_orphans,
    environment,
    full_app_context,
    measured,
)

# Runs inside the measured process: the phases of app.py's `__main__` block (the minimal app:
# the same without cdk-nag and the project), timed at each boundary.
DRIVER = r"""
import gc, json, os, sys, time
FULL = sys.argv[1] == "full"
if FULL:
    gc.disable()  # as app.py's __main__ block
TICK = os.sysconf("SC_CLK_TCK")
marks = [("start", time.perf_counter(), time.process_time(), 0.0, 0)]
requests = [0]

def node_cpu():
    def children(pid):
        found = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                found += [int(c) for c in open(f"/proc/{pid}/task/{tid}/children").read().split()]
            except OSError:
                pass
        return found
    pids = children(os.getpid())
    pids += [g for p in pids for g in children(p)]
    total = 0.0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total

def mark(name):
    marks.append((name, time.perf_counter(), time.process_time(), node_cpu(), requests[0]))

import jsii._kernel.providers.process as _process
_send = _process._NodeProcess.send
def _counting_send(self, request, response_type):
    requests[0] += 1
    return _send(self, request, response_type)
_process._NodeProcess.send = _counting_send

import aws_cdk as cdk
mark("import aws_cdk (Node start, aws-cdk-lib load)")
if FULL:
    import cdk_nag
    mark("import cdk_nag")
    sys.path.insert(0, os.getcwd())
    import app
    mark("import the project (mesh_stack, aws_cdk modules)")
    built = app.build_app()
else:
    from aws_cdk import aws_sqs as sqs
    mark("import the project (mesh_stack, aws_cdk modules)")
    built = cdk.App()
    sqs.Queue(cdk.Stack(built, "Minimal"), "Queue")
mark("construct")
built.synth()
mark("synth (validation, nag, templates, assets)")
phases = {
    b[0]: [b[1] - a[1], b[2] - a[2], b[3] - a[3], b[4] - a[4]] for a, b in zip(marks, marks[1:])
}
sys.stderr.write("PHASES " + json.dumps(phases) + "\n")
sys.stderr.flush()
if FULL:
    app.leave_without_teardown(0)
"""

COLUMNS = ("wall s", "Python CPU s", "Node CPU s", "jsii requests")

# Kernel profile categories, most specific first: a sample counts for the first category any
# frame of its stack matches: (category, function names or None for any, part of the URL).
_JSII = "program.js"
CATEGORIES: list[tuple[str, frozenset[str] | None, str]] = [
    ("idle: waiting for Python", frozenset({"readLine"}), _JSII),
    ("CloudFormation Validate: engine start", frozenset({"CloudFormationValidatePlugin"}), ""),
    ("CloudFormation Validate: the template", frozenset({"validate"}), "cloudformation-validate"),
    ("cdk-nag AwsSolutions", None, "packs/aws-solutions"),
    ("cdk-nag NIST 800-53 R5", None, "packs/nist-800-53-r5"),
    ("cdk-nag, shared", None, "/cdk-nag/"),
    ("validation report", None, "synthesis-validation"),
    ("asset staging and hashing", None, "asset-staging"),
    ("tree.json", None, "tree-metadata"),
    ("templates (resolve, write)", frozenset({"synthesizeTree", "synthesize"}), "synthesis.js"),
    ("loading JS modules", frozenset({"require", "wrapModuleLoad"}), ""),
    ("jsii: load assemblies", frozenset({"load"}), _JSII),
    ("jsii: create objects", frozenset({"create"}), _JSII),
    ("jsii: calls and property reads", frozenset({"invoke", "sinvoke", "get", "sget"}), _JSII),
    ("garbage collector", frozenset({"(garbage collector)"}), ""),
]


def _category(frames: list[tuple[str, str]]) -> str:
    for name, functions, url_part in CATEGORIES:
        if any((functions is None or f in functions) and url_part in u for f, u in frames):
            return name
    return "other"


def run_once(kind: str, extra_env: dict[str, str] | None = None) -> dict[str, list[float]]:
    context = full_app_context() if kind == "full" else CLI_CONTEXT
    with tempfile.TemporaryDirectory(prefix="bench-synth-profile-") as outdir:
        env = {
            **environment(),
            "CDK_OUTDIR": outdir,
            "CDK_CONTEXT_JSON": json.dumps(context),
            **(extra_env or {}),
        }
        done, run = measured([sys.executable, "-c", DRIVER, kind], cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} app failed:\n{done.stderr[-2000:]}")
    line = next(x for x in done.stderr.splitlines() if x.startswith("PHASES "))
    phases: dict[str, list[float]] = json.loads(line.removeprefix("PHASES "))
    wall, cpu = run.wall_s, run.cpu_s
    spent = sum(p[1] + p[2] for p in phases.values())
    phases["rest: interpreter start-up, teardown, Node's exit"] = [
        wall - sum(p[0] for p in phases.values()),
        cpu - spent,
        0.0,
        0.0,
    ]
    phases["total"] = [wall, cpu, 0.0, sum(p[3] for p in phases.values())]
    return phases


def phase_table(title: str, runs: Sequence[dict[str, list[float]]]) -> str:
    lines = [f"{title} (medians of {len(runs)})", "", f"| phase | {' | '.join(COLUMNS)} |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for phase in runs[0]:
        values = [statistics.median(r[phase][i] for r in runs) for i in range(len(COLUMNS))]
        cells = [f"{v:.2f}" for v in values[:3]] + [f"{values[3]:.0f}"]
        if phase == "total":
            cells[1], cells[2] = f"{values[1]:.2f} (all processes)", ""
        elif phase.startswith("rest"):
            cells[1], cells[2] = f"{values[1]:.2f} (Python + Node)", ""
        lines.append(f"| {phase} | {' | '.join(cells)} |")
    return "\n".join(lines)


def kernel_categories(profile: Path) -> dict[str, float]:
    """Seconds of the kernel's `--cpu-prof` samples per category (wall-clock sampled)."""
    data: dict[str, Any] = json.loads(profile.read_text())
    nodes = {n["id"]: n for n in data["nodes"]}
    parent = {c: n["id"] for n in data["nodes"] for c in n.get("children", [])}
    seconds: collections.Counter[str] = collections.Counter()
    for sample, delta in zip(data["samples"], data["timeDeltas"], strict=True):
        frames = []
        node: int | None = sample
        while node is not None:
            frame = nodes[node]["callFrame"]
            frames.append((frame["functionName"], frame["url"]))
            node = parent.get(node)
        seconds[_category(frames)] += delta / 1e6
    return dict(seconds.most_common())


def node_profile_table() -> str:
    columns: dict[str, dict[str, float]] = {}
    for kind in ("full", "minimal"):
        with tempfile.TemporaryDirectory(prefix="bench-cpu-prof-") as folder:
            run_once(kind, {"NODE_OPTIONS": f"--cpu-prof --cpu-prof-dir={folder}"})
            time.sleep(1)  # Node writes the profile as it exits, after Python has left
            # jsii runs two Node processes; the kernel is the one with the big profile.
            profile = max(Path(folder).glob("*.cpuprofile"), key=lambda p: p.stat().st_size)
            columns[kind] = kernel_categories(profile)
    names = list(dict.fromkeys([*columns["full"], *columns["minimal"]]))
    lines = [
        "jsii kernel (Node) by activity, one run each with --cpu-prof (seconds, share)",
        "",
        "| activity | full app | one-queue app |",
        "|---|---|---|",
    ]
    totals = {kind: sum(c.values()) for kind, c in columns.items()}
    for name in names:
        cells = [
            f"{columns[k].get(name, 0.0):.2f} ({100 * columns[k].get(name, 0.0) / totals[k]:.0f} %)"
            for k in ("full", "minimal")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(f"| total | {totals['full']:.2f} | {totals['minimal']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.synth_profile", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs of each app (default 3)")
    parser.add_argument(
        "--node-profile", action="store_true", help="also profile the jsii kernel (node --cpu-prof)"
    )
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error("reads Node's CPU time from /proc: Linux only")
    runs: dict[str, list[dict[str, list[float]]]] = {"full": [], "minimal": []}
    with collecting_orphans():
        for _ in range(args.runs):
            for kind, done in runs.items():
                done.append(run_once(kind))
        print(phase_table("Full default app, both nag packs", runs["full"]), end="\n\n")
        print(phase_table("One-queue app", runs["minimal"]), end="\n\n")
        if args.node_profile:
            print(node_profile_table())
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
