"""One synthesis of the whole default app per test session (it takes seconds, not ms)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cdk_json_context


@dataclass(frozen=True)
class Synthesized:
    outdir: Path
    error: str | None  # the validation error text when nag (or another check) failed

    def templates(self) -> dict[str, dict[str, Any]]:
        return {
            path.name.removesuffix(".template.json"): json.loads(path.read_text())
            for path in sorted(self.outdir.glob("*.template.json"))
        }


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    app = build_app(cdk_json_context(), outdir=str(outdir))
    try:
        app.synth()
        error = None
    except RuntimeError as err:  # jsii surfaces ValidationFailed as RuntimeError
        error = str(err)
    return Synthesized(outdir=Path(app.outdir), error=error)
