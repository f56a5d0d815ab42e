"""The review diff on the real app: one more on-prem CIDR is exactly one new path.

GIVEN the default app, and the same app with one more `onprem_cidrs` entry (a one-line change
of cdk.json)
WHEN the second is compared with the first
THEN the change is one path with its two directions, and nothing else: in "Ingress and
listeners" the new CIDR reaching the load balancer (and so the servers) on 8501 and 8503, and
in "Egress" the servers reaching the CIDR's Envoy listeners (consul-esm's checks); in the
picture, the CIDR is the one new node, with its two new edges to the 8501 and 8503 listeners
and the servers' new egress edge to it.
"""

from __future__ import annotations

import pytest

from mesh_stack.ports import ENVOY_INBOUND_PORTS
from tests.review import mermaid_syntax
from tests.review.conftest import EXTRA_CIDR
from tools.review.changes import compare_with, console, section
from tools.review.collect import Review
from tools.review.compare import Change
from tools.review.diff import diff
from tools.review.mermaid import ADDED_STYLE, HEADING, REMOVED_STYLE, picture
from tools.review.render import render
from tools.review.twin import facts

pytestmark = pytest.mark.synth

LOW, HIGH = ENVOY_INBOUND_PORTS


def _summary(changes: list[Change]) -> list[tuple[str, str, str, str]]:
    return [(c.category, c.action, c.what, c.broadening) for c in changes]


def test_one_more_on_prem_cidr_is_exactly_one_new_path(
    real_review: Review, extra_cidr_review: Review
) -> None:
    changes = diff(facts(real_review), facts(extra_cidr_review))
    assert _summary(changes) == [
        (
            "ingress",
            "added",
            f"{EXTRA_CIDR} (outside the VPC) → ConsulFleet/LoadBalancer → Servers: "
            "tcp 8501 HTTPS API, 8503 gRPC-TLS",
            "reachable from outside the VPC",
        ),
        (
            "egress",
            "added",
            f"Servers (group ServerSecurityGroup) → {EXTRA_CIDR} (outside the VPC): "
            f"tcp {LOW}-{HIGH}",
            "sends to outside the VPC",
        ),
    ]
    [ingress, egress] = changes
    assert [r["path"] for r in ingress.where] == [
        "consul-mesh-dev/ConsulFleet/LoadBalancerSecurityGroup/Resource"
    ]
    assert [r["path"] for r in egress.where] == [
        "consul-mesh-dev/ConsulFleet/ServerSecurityGroup/Resource"
    ]


def test_the_picture_marks_the_new_path_and_nothing_else(
    real_review: Review, extra_cidr_review: Review
) -> None:
    lines = picture(facts(extra_cidr_review), facts(real_review))
    chart = mermaid_syntax.read(mermaid_syntax.block("\n".join(lines), HEADING))
    added = sorted(
        (chart.nodes[a], text, chart.nodes[b]) for a, _, text, b in chart.links_marked(ADDED_STYLE)
    )
    cidr = f"{EXTRA_CIDR} outside the VPC"
    assert added == [
        (cidr, "added", "ConsulFleet/LoadBalancer tcp 8501 HTTPS API"),
        (cidr, "added", "ConsulFleet/LoadBalancer tcp 8503 gRPC-TLS"),
        ("Servers", f"added: egress tcp {LOW}-{HIGH}", cidr),
    ]
    assert [chart.nodes[n] for n in chart.classes["added"]] == [cidr]
    assert chart.links_marked(REMOVED_STYLE) == []


def test_the_section_and_the_console_show_the_path(
    real_review: Review, extra_cidr_review: Review
) -> None:
    comparison = compare_with("`main`", facts(real_review), facts(extra_cidr_review))
    text = "\n".join(section(comparison))
    assert "**2 changes, 2 broadening**" in text
    assert text.count("| **added** |") == 2
    assert "### Ingress and listeners" in text
    assert "### Egress" in text
    assert (
        console(comparison).splitlines()[0]
        == "Changes since baseline main: 2 changes, 2 broadening"
    )
    report = render(extra_cidr_review, comparison)
    assert report.startswith("## Changes since baseline\n")


def test_the_real_app_compared_with_itself_has_no_changes(real_review: Review) -> None:
    comparison = compare_with("`HEAD`", facts(real_review), facts(real_review))
    assert console(comparison) == "Changes since baseline HEAD: no changes"
    # the picture of the real app is valid Mermaid, nothing marked
    chart = mermaid_syntax.read(mermaid_syntax.block(render(real_review, comparison), HEADING))
    assert chart.styled == {}
    assert chart.classes == {}
    assert len(chart.nodes) > 20
