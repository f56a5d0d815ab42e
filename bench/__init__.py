"""Benchmarks: figures, not tests. `python -m bench.run` prints one table (see bench/README.md).

The registrar's modules import each other as top-level modules (`import identity`), as they
do inside the Lambda bundle, with lambda/shared/ (bundled into every asset) beside them, and
the shared test worlds (`registrar_fixtures`, `ecs_fake`) live in tests/lambda/: the three
folders go on sys.path here, once, before any figure imports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRAR = ROOT / "lambda" / "registrar"
# The modules every Lambda asset bundles (the Consul client, retries, logs): mesh_stack copies
# them into each asset at synth, and they are importable the same way here.
SHARED = ROOT / "lambda" / "shared"
TEST_HELPERS = ROOT / "tests" / "lambda"

for _path in (ROOT, SHARED, REGISTRAR, TEST_HELPERS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
