"""Every Lambda asset ships its own modules plus lambda/shared/, and Consul has one client.

The shared folder holds the one Consul HTTP client (consul_http.py over connections.py), the
retries (retry.py) and the structured logs (logs.py). mesh_stack/lambda_code.py copies it
into each asset at synth; these tests read what a deployment would upload.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest
from aws_cdk import FileSystem

from mesh_stack import lambda_code
from tests.infra.conftest import Synthesized

LAMBDA = lambda_code.LAMBDA


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, caches included."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _sources(folder: Path) -> dict[str, bytes]:
    """The source files of `folder` (what a developer's caches, e.g. .mypy_cache, are not)."""
    return {str(p): (folder / p).read_bytes() for p in lambda_code.sources(folder)}


def _function_code_dirs(synthesized: Synthesized) -> list[Path]:
    """The staged folder of every Lambda function of the app (S3Key `<hash>.zip`)."""
    found = []
    for template in synthesized.templates().values():
        for resource in template.get("Resources", {}).values():
            if resource.get("Type") != "AWS::Lambda::Function":
                continue
            key = json.dumps(resource["Properties"].get("Code", {}).get("S3Key", ""))
            match = re.search(r"([0-9a-f]{64})\.zip", key)
            if match:
                found.append(synthesized.outdir / f"asset.{match.group(1)}")
    return found


def test_each_synthesized_asset_holds_its_code_and_the_shared_modules(
    synthesized: Synthesized,
) -> None:
    shared = _sources(lambda_code.SHARED)
    assert "consul_http.py" in shared
    code_dirs = _function_code_dirs(synthesized)
    for asset in lambda_code.ASSETS:
        own = _sources(LAMBDA / asset)
        # WHEN the app is synthesized, THEN each function built from lambda/<asset> ...
        dirs = [d for d in code_dirs if d.is_dir() and own.items() <= _files(d).items()]
        assert dirs, f"no function ships lambda/{asset}"
        for folder in dirs:
            files = _files(folder)
            # ... carries exactly its own modules and the shared ones, byte for byte, no caches
            assert files == {**own, **shared}, f"{folder.name} ({asset})"


def test_an_asset_is_its_folder_plus_shared_and_skips_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN copies of the sources with bytecode caches in them, as tests leave behind
    lam = tmp_path / "lambda"
    shutil.copytree(LAMBDA, lam, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (lam / "registrar" / "__pycache__").mkdir()
    (lam / "registrar" / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"\0")
    (lam / "shared" / "stray.pyc").write_bytes(b"\0")
    monkeypatch.setattr(lambda_code, "LAMBDA", lam)
    monkeypatch.setattr(lambda_code, "SHARED", lam / "shared")
    # WHEN the registrar's asset is assembled twice, in two places
    first = lambda_code.assemble("registrar", tmp_path / "a")
    second = lambda_code.assemble("registrar", tmp_path / "b")
    # THEN it is the asset's modules plus the shared ones, without caches
    names = set(_files(first))
    assert {"handler.py", "consul.py", "consul_http.py", "connections.py", "retry.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # AND CDK hashes both the same: the asset hash depends on the sources only
    assert FileSystem.fingerprint(str(first)) == FileSystem.fingerprint(str(second))
    # AND a change under shared/ changes the hash of every asset that bundles it
    (lam / "shared" / "retry.py").write_text("# changed\n")
    third = lambda_code.assemble("registrar", tmp_path / "c")
    assert FileSystem.fingerprint(str(third)) != FileSystem.fingerprint(str(first))


def test_a_module_in_both_an_asset_and_shared_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lam = tmp_path / "lambda"
    shutil.copytree(LAMBDA, lam, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (lam / "consul_config" / "retry.py").write_text("# a second retry loop\n")
    monkeypatch.setattr(lambda_code, "LAMBDA", lam)
    monkeypatch.setattr(lambda_code, "SHARED", lam / "shared")
    with pytest.raises(ValueError, match=r"lambda/consul_config/ and lambda/shared/ both hold"):
        lambda_code.assemble("consul_config", tmp_path / "out")


def test_every_folder_under_lambda_is_an_asset_or_shared() -> None:
    folders = {p.name for p in LAMBDA.iterdir() if p.is_dir() and not p.name.startswith(".")}
    folders.discard("__pycache__")
    assert folders == {*lambda_code.ASSETS, "shared"}


# Modules that may open network connections, and why. Everything that talks to Consul goes
# through lambda/shared/consul_http.py, whose connections come from lambda/shared/connections.py.
_NETWORK_MODULES = {"http.client", "socket", "urllib.request", "urllib3", "requests", "httpx"}
_ALLOWED = {
    "shared/connections.py": "the kept-alive connections of the one Consul client",
    "shared/consul_http.py": "the one Consul client: maps http.client's errors",
    "activation/handler.py": "PUTs the custom resource's response to CloudFormation's URL",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_there_is_one_consul_client_implementation() -> None:
    modules = sorted(LAMBDA.glob("*/*.py"))
    # Only the shared connections open sockets (besides the activation's CloudFormation reply)
    networking = {str(p.relative_to(LAMBDA)) for p in modules if _imports(p) & _NETWORK_MODULES}
    assert networking == set(_ALLOWED)
    # Only the shared client sends Consul's token header, and only it maps HTTP statuses
    token_header = {
        str(p.relative_to(LAMBDA)) for p in modules if "X-Consul-Token" in p.read_text()
    }
    assert token_header == {"shared/consul_http.py"}
    # Every asset that talks to Consul builds on it
    for asset in ("registrar", "consul_config"):
        users = [p for p in (LAMBDA / asset).glob("*.py") if "consul_http" in _imports(p)]
        assert users, f"lambda/{asset} does not use lambda/shared/consul_http.py"
