"""Lambda assets ship the function's code only, never the caches tools leave beside it.

`make lint` runs mypy in each lambda/ directory and the tests import the handlers: without the
exclusions the assets' hashes (and so every function) would change after each test run, and
the caches would be uploaded with the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_

from mesh_stack import lambda_code
from tests.conftest import ROOT


def _staged_files(outdir: Path) -> set[str]:
    """The files of the one directory asset (the template is a file asset too)."""
    manifest = json.loads(next(outdir.glob("*.assets.json")).read_text())
    (staged,) = (
        outdir / asset["source"]["path"]
        for asset in manifest["files"].values()
        if asset["source"].get("packaging") == "zip"
    )
    return {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}


def test_a_function_directory_ships_without_tool_caches(tmp_path: Path) -> None:
    # GIVEN a function's directory after `make lint` and a test run
    code = tmp_path / "function"
    for name in (
        "handler.py",
        ".mypy_cache/3.11/handler.data.json",
        "__pycache__/handler.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
    ):
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_text("x")
    # WHEN a function is built from it
    outdir = tmp_path / "out"
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Code")
    lambda_.Function(
        stack,
        "Function",
        runtime=lambda_.Runtime.PYTHON_3_13,
        handler="handler.handler",
        code=lambda_code.from_directory(code),
    )
    app.synth()
    # THEN only the code is in the asset
    assert _staged_files(outdir) == {"handler.py"}


def test_every_function_of_the_app_takes_its_code_through_the_exclusions() -> None:
    direct = [
        path.name
        for path in (ROOT / "mesh_stack").glob("*.py")
        if "Code.from_asset(" in path.read_text() and path.name != "lambda_code.py"
    ]
    assert direct == []
