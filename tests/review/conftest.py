"""The real default app, synthesized once per test session, and its review.

The synthesis is `tests/infra/conftest.py`'s fixture (imported, so both suites build the app
the same way); the review of it is built once here, without cfn-lint (its own tests run it).
"""

from __future__ import annotations

import pytest

from tests.infra.conftest import Synthesized, synthesized
from tools.review.collect import Review, build_review

__all__ = ["real_review", "synthesized"]


@pytest.fixture(scope="session")
def real_review(synthesized: Synthesized) -> Review:
    assert synthesized.error is None, synthesized.error
    return build_review(synthesized.outdir, linter=None)
