"""Fixtures for the Lambda tests. Each fixture is self-contained: add yours alongside."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.consul_double import ConsulDouble


def _serve(double: ConsulDouble) -> Iterator[ConsulDouble]:
    with double:
        yield double
    # A 500 caused by a bug in the double would otherwise pass for a Consul failure.
    assert not double.internal_errors, f"the Consul double failed: {double.internal_errors}"


@pytest.fixture
def consul_double() -> Iterator[ConsulDouble]:
    """A started Consul double with ACLs disabled; stopped after the test."""
    yield from _serve(ConsulDouble())


@pytest.fixture
def consul_double_acl() -> Iterator[ConsulDouble]:
    """A started Consul double with ACLs on (default deny) accepting the token "root-token"."""
    yield from _serve(ConsulDouble(acl_tokens={"root-token"}))


@pytest.fixture(autouse=True)
def _fresh_execution_environment() -> Iterator[None]:
    """Each test starts as a new Lambda execution environment: no module-level memo of an
    earlier test's reconcile pass (reconcile_consul._NEEDS_SHARDS) carries over."""
    yield
    module = sys.modules.get("reconcile_consul")
    if module is not None:
        module._NEEDS_SHARDS.clear()
