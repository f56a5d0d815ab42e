"""The operators' way into Consul, as the review shows it: `operator_cidrs` opens the HTTPS
API and UI (8501) on the load balancer and nothing else, and the report says so."""

from __future__ import annotations

import pytest

from tests.review.conftest import OPERATOR_CIDR
from tools.review.collect import Review
from tools.review.diff import diff
from tools.review.page import first_page
from tools.review.twin import facts

pytestmark = pytest.mark.synth


def test_operator_cidrs_add_exactly_one_path_to_8501(
    real_review: Review, operator_review: Review
) -> None:
    # GIVEN the default app, and the same app with one operators' network
    # WHEN the two reviews are compared
    # THEN the only change is that network reaching the Consul HTTPS API on the NLB: no
    # gRPC, no egress back to it, no new secret reader
    changes = diff(facts(real_review), facts(operator_review))
    assert [(c.category, c.action, c.what, c.broadening) for c in changes] == [
        (
            "ingress",
            "added",
            f"{OPERATOR_CIDR} (outside the VPC) → ConsulFleet/LoadBalancer → Servers: "
            "tcp 8501 HTTPS API",
            "reachable from outside the VPC",
        )
    ]
    [ingress] = changes
    assert [r["path"] for r in ingress.where] == [
        "consul-mesh-dev/ConsulFleet/LoadBalancerSecurityGroup/Resource"
    ]


def test_the_first_page_lists_the_operators_network(operator_review: Review) -> None:
    page = "\n".join(first_page(operator_review))
    rows = [line for line in page.splitlines() if OPERATOR_CIDR in line]
    assert rows, page
    assert any("8501" in row for row in rows), rows
    assert not any("8503" in row for row in rows), rows
