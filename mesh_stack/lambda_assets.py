"""Lambda code: each asset's own folder plus lambda/shared/, assembled at synth without Docker.

Every Lambda asset is a flat module tree (Lambda puts the asset's root on sys.path). The code
they share (the one Consul HTTP client, its kept-alive connections, retries within a budget,
structured logs) lives once, in lambda/shared/, and `assemble` copies it beside each asset's
own modules into a staging folder that `Code.from_asset` then stages into cdk.out. Tests,
benchmarks and `mypy` import the same files (pyproject.toml pythonpath, the Makefile's
MYPYPATH), so nothing is copied by hand and nothing can drift.

Why not CDK's bundling: `BundlingOptions` needs a Docker image even when a local bundler is
given, and its default asset hash is the source folder's, which would not see a change under
lambda/shared/. A staging folder hashed by content has neither problem.

Deterministic: only regular files are copied (no __pycache__, .pyc or tool caches), by
content; the asset hash CDK computes from the staged folder is the hash of its paths and bytes,
so the same sources always give the same hash. Standard library only (bench/ uses it too).
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws_cdk import aws_lambda as lambda_

ROOT = Path(__file__).resolve().parent.parent
LAMBDA = ROOT / "lambda"
SHARED = LAMBDA / "shared"
# The folders under lambda/ that are functions' code (lambda/shared is bundled into each).
ASSETS = ("activation", "consul_config", "registrar")

_SKIPPED = ("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache", ".ruff_cache")


def sources(folder: Path) -> list[Path]:
    """The files of `folder` that go into an asset, relative to it, sorted."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in _SKIPPED):
            continue
        if path.is_file():
            found.append(relative)
    return sorted(found)


def assemble(asset: str, into: Path) -> Path:
    """Copy lambda/<asset>/ and lambda/shared/ into `into` (created; must not exist): one flat
    module tree. A file in both is refused: the asset would silently lose one of them."""
    if asset not in ASSETS:
        raise ValueError(f"unknown Lambda asset {asset!r}; the assets are {', '.join(ASSETS)}")
    own, shared = LAMBDA / asset, sources(SHARED)
    clash = sorted(set(sources(own)) & set(shared))
    if clash:
        raise ValueError(
            f"lambda/{asset}/ and lambda/shared/ both hold {', '.join(map(str, clash))}; "
            "a module lives in one of them only"
        )
    into.mkdir(parents=True)
    for folder, files in ((own, sources(own)), (SHARED, shared)):
        for relative in files:
            (into / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / relative, into / relative)
    return into


@functools.cache
def _staging_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="mesh-lambda-assets-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def staged(asset: str) -> Path:
    """The assembled folder of `asset`, once per process (several stacks share it)."""
    return assemble(asset, _staging_root() / asset)


def code(asset: str) -> lambda_.Code:
    """The function code of `asset`: its own modules plus lambda/shared/."""
    from aws_cdk import aws_lambda  # noqa: PLC0415 (bench/ imports this module without CDK)

    return aws_lambda.Code.from_asset(str(staged(asset)))
