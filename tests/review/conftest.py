"""The real default app, synthesized once per test session, and its review.

The synthesis is `tests/infra/conftest.py`'s fixture (imported, so both suites build the app
the same way); the review of it is built once here, without cfn-lint (its own tests run it).
The same app with one more on-prem CIDR is synthesized once too, for the review diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_stack.config import FIELDS
from tests.conftest import cdk_json_context
from tests.infra.conftest import Synthesized, synthesized
from tools.review.collect import Review, build_review

__all__ = [
    "EXTRA_CIDR",
    "OPERATOR_CIDR",
    "extra_cidr_review",
    "operator_review",
    "real_review",
    "synthesized",
]

EXTRA_CIDR = "10.50.0.0/16"  # outside the default VPC (10.40.0.0/16) and 192.168.0.0/16
OPERATOR_CIDR = "10.9.0.0/24"  # an operators' network, outside both


@pytest.fixture(scope="session")
def real_review(synthesized: Synthesized) -> Review:
    assert synthesized.error is None, synthesized.error
    return build_review(synthesized.outdir, linter=None)


@pytest.fixture(scope="session")
def extra_cidr_review(tmp_path_factory: pytest.TempPathFactory) -> Review:
    """The default app with a one-line config change: one more `onprem_cidrs` entry."""
    from app import build_app

    context = cdk_json_context()
    cidrs = context.get("onprem_cidrs", FIELDS["onprem_cidrs"].default)
    assert isinstance(cidrs, list)
    context["onprem_cidrs"] = [*cidrs, EXTRA_CIDR]
    app = build_app(context, outdir=str(tmp_path_factory.mktemp("extra-cidr.out")))
    app.synth()
    return build_review(Path(app.outdir), linter=None)


@pytest.fixture(scope="session")
def operator_review(tmp_path_factory: pytest.TempPathFactory) -> Review:
    """The default app with `operator_cidrs` set: the operators' way into Consul."""
    from app import build_app

    context = {**cdk_json_context(), "operator_cidrs": [OPERATOR_CIDR]}
    app = build_app(context, outdir=str(tmp_path_factory.mktemp("operator.out")))
    app.synth()
    return build_review(Path(app.outdir), linter=None)
