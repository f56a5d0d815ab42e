"""Why the Lambda assets have no Powertools: `python -m bench.powertools_import --python PY`.

What Powertools for AWS Lambda would replace in the registrar (its JSON log lines, its EMF
metrics, its partial batch response) against what the registrar costs now, in import time,
the part of a cold start a library adds. Each import runs in a fresh `PY` (nothing cached in
sys.modules), alternating, timed inside around the import statements only, like figure 5:

- the registrar's whole `import handler`, bytecode compiled ahead (bench/cold_start.py);
- its own `logs` and `metrics` modules, what Powertools Logger and Metrics would replace;
- Powertools Logger + Metrics + the batch utility (BatchProcessor, process_partial_response);
- Powertools Logger alone;
- boto3 alone, the yardstick of figure 5.

Not in `make bench`: Powertools is not, and should not become, a project dependency. Give it
an interpreter of a throwaway virtualenv that has it (docs/architecture.md records a run):

    python3 -m venv /tmp/pt && /tmp/pt/bin/pip install aws-lambda-powertools boto3
    .venv/bin/python -m bench.powertools_import --python /tmp/pt/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.cold_start import compiled_registrar, import_seconds
from bench.report import Row, median, table

RUNS = 9

IMPORTS: dict[str, str] = {
    "registrar: import handler (everything)": "import handler",
    "registrar: its own logs + metrics modules": "import logs, metrics",
    "Powertools Logger + Metrics + batch": (
        "from aws_lambda_powertools import Logger, Metrics; "
        "from aws_lambda_powertools.utilities.batch import BatchProcessor, "
        "process_partial_response"
    ),
    "Powertools Logger alone": "from aws_lambda_powertools import Logger",
    "boto3 alone": "import boto3",
}


def _version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('aws-lambda-powertools'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{python} has no aws-lambda-powertools: see this module's docstring")
    return done.stdout.strip()


def _pulls_boto3(python: str, statement: str, path: Path) -> bool:
    code = (
        f"import sys; sys.path.insert(0, {str(path)!r}); {statement}; print('boto3' in sys.modules)"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip() == "True"


def measure(python: str, runs: int = RUNS) -> list[Row]:
    times: dict[str, list[float]] = {label: [] for label in IMPORTS}
    with tempfile.TemporaryDirectory(prefix="bench-powertools-") as tmp:
        asset = compiled_registrar(Path(tmp))
        boto3 = {label: _pulls_boto3(python, s, asset) for label, s in IMPORTS.items()}
        for _ in range(runs):
            for label, statement in IMPORTS.items():
                times[label].append(import_seconds("", asset, python=python, statement=statement))
    handler = times["registrar: import handler (everything)"]
    rows = []
    for label in IMPORTS:
        ratio = median([t / h for t, h in zip(times[label], handler, strict=True)])
        pulls = " (imports boto3)" if boto3[label] else ""
        rows.append(
            Row(
                f"{label}, fresh interpreter (median of {runs})",
                median(times[label]) * 1000,
                "ms",
                f"÷ import handler in the same round: {ratio:.2f}x{pulls}",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.powertools_import", description=__doc__)
    parser.add_argument("--python", required=True, help="an interpreter that has Powertools")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args(argv)
    print(f"aws-lambda-powertools {_version(args.python)} under {args.python}")
    print(table(measure(args.python, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
