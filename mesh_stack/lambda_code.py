"""The code of this app's Lambda functions: an asset's own modules plus lambda/shared/, no caches.

Every Lambda asset is a flat module tree (Lambda puts the asset's root on sys.path). The code
they share (the one Consul HTTP client, its kept-alive connections, retries within a budget,
structured logs) lives once, in lambda/shared/, and `assemble` copies it beside each asset's
own modules into a staging folder that `Code.from_asset` then stages into cdk.out. Tests,
benchmarks and `mypy` import the same files (pyproject.toml pythonpath, the Makefile's
MYPYPATH), so nothing is copied by hand and nothing can drift. Every function's code goes
through `for_asset` (or `from_directory`).

Why not CDK's bundling: `BundlingOptions.image` is required even when a local bundler is given,
and the default asset hash (AssetHashType.SOURCE) is the source folder's, which would not see a
change under lambda/shared/. A staging folder hashed by content has neither problem.

No caches: `make lint` runs mypy inside each function's directory and the tests import the
handlers, which leaves `.mypy_cache/` and `__pycache__/` there. An asset's hash covers every
file it includes, so shipping them would make each deploy after a test run update the functions
for nothing (and upload the caches). The asset hash CDK computes from the staged folder is the
hash of its paths and bytes, so the same sources always give the same hash.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import shutil
import tempfile
from pathlib import Path

from aws_cdk import aws_lambda as lambda_
from constructs import Construct

ROOT = Path(__file__).resolve().parent.parent
LAMBDA = ROOT / "lambda"
SHARED = LAMBDA / "shared"
# The folders under lambda/ that are functions' code (lambda/shared is bundled into each).
ASSETS = ("activation", "consul_config", "registrar")

# Written by tools, never read by a function: Python's bytecode cache, mypy, pytest, ruff and
# hypothesis (CDK asset `exclude` takes .gitignore-style patterns; `sources` matches each path
# part against them).
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


def sources(folder: Path) -> list[Path]:
    """The files of `folder` that go into an asset, relative to it, sorted."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in EXCLUDE):
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


# Context key by which the CDK CLI (`--no-staging`, SAM) tells the app not to copy assets
# into the cloud assembly: the manifest then points at the source folder itself
# (cx-api DISABLE_ASSET_STAGING_CONTEXT; aws-cdk-lib AssetStaging).
DISABLE_STAGING = "aws:cdk:disable-asset-staging"


@functools.cache
def _staging_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="mesh-lambda-assets-"))
    atexit.register(_discard, root)
    return root


def _discard(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def finish_staging(app: Construct) -> None:
    """Call once `app.synth()` returned, before leaving (app.py's exit skips `atexit`).

    Staging on (the default): CDK copied each assembled folder into the cloud assembly
    (`cdk.out/asset.<hash>/`), so the folders under the temporary root are removed now.
    Staging off (`DISABLE_STAGING`): the assembly's manifest points into them, so they are
    kept, on any exit ("if an app references assets in temporary locations, those will not be
    available when it exits", AssetStaging reference), and left for the caller to remove."""
    if _staging_root.cache_info().currsize == 0:
        return  # nothing assembled in this process
    root = _staging_root()
    if app.node.try_get_context(DISABLE_STAGING):
        atexit.unregister(_discard)
        return
    _discard(root)
    atexit.unregister(_discard)
    staged.cache_clear()  # a later synthesis in this process assembles anew
    _staging_root.cache_clear()


@functools.cache
def staged(asset: str) -> Path:
    """The assembled folder of `asset`, once per process (several stacks share it)."""
    return assemble(asset, _staging_root() / asset)


def for_asset(asset: str) -> lambda_.Code:
    """The function code of lambda/<asset>: its own modules plus lambda/shared/."""
    return from_directory(staged(asset))
