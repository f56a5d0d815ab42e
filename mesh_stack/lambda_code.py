"""The code of this app's Lambda functions: a directory under lambda/, without local caches.

`make lint` runs mypy inside each function's directory and the tests import the handlers, which
leaves `.mypy_cache/` and `__pycache__/` there. An asset's hash covers every file it includes,
so shipping them would make each deploy after a test run update the functions for nothing (and
upload the caches). Every function's code goes through `from_directory`.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_lambda as lambda_

# Written by tools, never read by a function: Python's bytecode cache, mypy, pytest, ruff and
# hypothesis (CDK asset `exclude` takes .gitignore-style patterns).
EXCLUDE = [
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
]


def from_directory(directory: Path) -> lambda_.Code:
    """`directory` as a Lambda asset, without the caches of EXCLUDE."""
    return lambda_.Code.from_asset(str(directory), exclude=EXCLUDE)
