"""Figure 5: importing the handler in a fresh interpreter ÷ importing boto3 alone.

Each import runs in its own `python` subprocess (nothing cached in sys.modules), alternating
so that machine noise hits all alike; the time is taken inside the subprocess around the
import statement only, so interpreter start-up is excluded. The handler imports boto3 lazily
(aws.client), so a ratio well below 1 is the design working.

Two handler imports per asset, each from a copy of the asset assembled as synth assembles it
(its own modules plus lambda/shared/, mesh_stack/lambda_code.py): one with its bytecode
compiled ahead (compileall), one without, run with -B. The second is what a Lambda cold start
pays: the asset holds no __pycache__/*.pyc and /var/task is read-only, so every cold start
compiles the asset's modules again. Measured: the registrar's handler and the consul_config
provider (the two assets that bundle the Consul client). boto3 is imported with the
bytecode pip compiled at install time, as the Lambda runtime ships it.
"""

from __future__ import annotations

import compileall
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import Row, median
from mesh_stack import lambda_code

FIGURE = "5 cold start"
RUNS = 7
# The asset and the module its Lambda handler lives in. The activation function does not talk
# to Consul; the registrar's reconcile and drain handlers import a subset of `handler`'s modules.
MEASURED = (("registrar", "handler"), ("consul_config", "provider"))
NOTES = {"consul_config": "; its import includes boto3 (secrets_store reads Secrets Manager)"}

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
    """The registrar's asset as synth assembles it, its bytecode compiled ahead, under `tmp`."""
    compiled = tmp / "compiled"
    lambda_code.assemble("registrar", compiled)
    if not compileall.compile_dir(compiled, quiet=1):
        raise RuntimeError(f"could not compile {compiled}")
    return compiled


def _assets(root: Path) -> list[tuple[str, str, Path, Path]]:
    """(asset, module, source copy, compiled copy) of each measured asset, assembled as synth
    assembles it (its own modules plus lambda/shared/: mesh_stack/lambda_code.py)."""
    found = []
    for asset, module in MEASURED:
        source, compiled = root / asset / "source", root / asset / "compiled"
        for copy in (source, compiled):
            lambda_code.assemble(asset, copy)
        if not compileall.compile_dir(compiled, quiet=1):
            raise RuntimeError(f"could not compile {compiled}")
        found.append((asset, module, source, compiled))
    return found


def measure() -> list[Row]:
    cached: dict[str, list[float]] = {asset: [] for asset, _ in MEASURED}
    shipped: dict[str, list[float]] = {asset: [] for asset, _ in MEASURED}
    boto3: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-asset-") as tmp:
        assets = _assets(Path(tmp))
        for _ in range(RUNS):
            for asset, module, source, compiled in assets:
                cached[asset].append(import_seconds(module, compiled))
                shipped[asset].append(import_seconds(module, source, bytecode=False))
            boto3.append(import_seconds("boto3", assets[0][2]))
    rows = []
    for asset, module in MEASURED:
        what = "handler" if asset == "registrar" else f"{asset} {module}"
        note = NOTES.get(asset, "")
        rows += [
            Row(
                f"{FIGURE}: import {what} ÷ import boto3, fresh interpreter (median of {RUNS})",
                median([h / b for h, b in zip(cached[asset], boto3, strict=True)]),
                "x",
                f"{what} {median(cached[asset]) * 1000:.0f} ms, boto3 alone "
                f"{median(boto3) * 1000:.0f} ms (medians, both from compiled bytecode){note}",
            ),
            Row(
                f"{FIGURE}: the same, {what} as shipped (no .pyc in the asset: compiled every "
                "cold start)",
                median([h / b for h, b in zip(shipped[asset], boto3, strict=True)]),
                "x",
                f"{what} {median(shipped[asset]) * 1000:.0f} ms, boto3 alone "
                f"{median(boto3) * 1000:.0f} ms",
            ),
        ]
    return rows
