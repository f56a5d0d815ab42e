"""Figure 5: importing the handler in a fresh interpreter ÷ importing boto3 alone.

Each import runs in its own `python` subprocess (nothing cached in sys.modules), alternating
so that machine noise hits all alike; the time is taken inside the subprocess around the
import statement only, so interpreter start-up is excluded. The handler imports boto3 lazily
(aws.client), so a ratio well below 1 is the design working.

Two handler imports, each from a copy of lambda/registrar: one with its bytecode compiled
ahead (compileall), one without, run with -B. The second is what a Lambda cold start pays:
the asset excludes __pycache__/*.pyc (mesh_stack/registrar.py) and /var/task is read-only,
so every cold start compiles the registrar's modules again. boto3 is imported with the
bytecode pip compiled at install time, as the Lambda runtime ships it.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import REGISTRAR
from bench.report import Row, median

FIGURE = "5 cold start"
RUNS = 7

_TIMED_IMPORT = (
    "import sys, time; sys.path.insert(0, {path!r}); t = time.perf_counter(); {statement}; "
    "print(time.perf_counter() - t)"
)


def import_seconds(
    module: str,
    path: Path,
    *,
    bytecode: bool = True,
    python: str = sys.executable,
    statement: str | None = None,
) -> float:
    """Seconds `import module` (or `statement`) takes in a fresh `python`, path first."""
    code = _TIMED_IMPORT.format(path=str(path), statement=statement or f"import {module}")
    flags = [] if bytecode else ["-B"]
    done = subprocess.run(
        [python, *flags, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return float(done.stdout.strip())


def compiled_registrar(tmp: Path) -> Path:
    """A copy of lambda/registrar with its bytecode compiled ahead, under `tmp`."""
    compiled = tmp / "compiled"
    shutil.copytree(REGISTRAR, compiled, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not compileall.compile_dir(compiled, quiet=1):
        raise RuntimeError(f"could not compile {compiled}")
    return compiled


def measure() -> list[Row]:
    cached: list[float] = []
    shipped: list[float] = []
    boto3: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-asset-") as tmp:
        source, compiled = Path(tmp) / "source", compiled_registrar(Path(tmp))
        shutil.copytree(REGISTRAR, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for _ in range(RUNS):
            cached.append(import_seconds("handler", compiled))
            shipped.append(import_seconds("handler", source, bytecode=False))
            boto3.append(import_seconds("boto3", source))
    return [
        Row(
            f"{FIGURE}: import handler ÷ import boto3, fresh interpreter (median of {RUNS})",
            median([h / b for h, b in zip(cached, boto3, strict=True)]),
            "x",
            f"handler {median(cached) * 1000:.0f} ms, boto3 alone {median(boto3) * 1000:.0f} ms "
            "(medians, both from compiled bytecode)",
        ),
        Row(
            f"{FIGURE}: the same, handler as shipped (no .pyc in the asset: compiled every "
            "cold start)",
            median([h / b for h, b in zip(shipped, boto3, strict=True)]),
            "x",
            f"handler {median(shipped) * 1000:.0f} ms, boto3 alone {median(boto3) * 1000:.0f} ms",
        ),
    ]
