"""Benchmarks: figures, not tests. `python -m bench.run` prints one table (see bench/README.md).

The registrar's modules import each other as top-level modules (`import identity`), as they
do inside the Lambda bundle, and the shared test worlds (`registrar_fixtures`, `ecs_fake`) live
in tests/lambda/: both folders go on sys.path here, once, before any figure imports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRAR = ROOT / "lambda" / "registrar"
TEST_HELPERS = ROOT / "tests" / "lambda"

for _path in (ROOT, REGISTRAR, TEST_HELPERS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
