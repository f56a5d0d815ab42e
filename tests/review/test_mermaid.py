"""The exposure picture: a valid Mermaid flowchart, sources → ports → workloads → secrets, with
what a change added marked. Read back with the strict reader in `mermaid_syntax`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.review import mermaid_syntax
from tests.review.test_diff import _base, _props, _review
from tools.review.compare import Names
from tools.review.exposure_map import exposure_graph, node_id
from tools.review.mermaid import ADDED_STYLE, HEADING, REMOVED_STYLE, flowchart, label, picture


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _review(tmp_path_factory.mktemp("base"), _base())


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The base app, opened to an on-prem CIDR on 8501 and sending to it on 20000-20999."""
    template = copy.deepcopy(_base())
    props = _props(template, "ServerGroup")
    props["SecurityGroupIngress"].append(
        {"IpProtocol": "tcp", "FromPort": 8501, "ToPort": 8501, "CidrIp": "172.16.0.0/12"}
    )
    props["SecurityGroupEgress"].append(
        {"IpProtocol": "tcp", "FromPort": 20000, "ToPort": 20999, "CidrIp": "172.16.0.0/12"}
    )
    return _review(tmp_path_factory.mktemp("opened"), template)


def _chart(lines: list[str]) -> mermaid_syntax.Flowchart:
    return mermaid_syntax.read(mermaid_syntax.block("\n".join(lines), HEADING))


def test_the_picture_is_valid_mermaid_and_shows_the_whole_path(base: dict[str, Any]) -> None:
    lines = picture(base)
    assert lines[0] == HEADING
    chart = _chart(lines)
    links = {(chart.nodes[a], text, chart.nodes[b]) for a, _, text, b in chart.links}
    # source → port → workload, the workload's secret, its egress to outside the VPC
    assert ("sg ClientGroup", "", "LoadBalancer tcp 8501 HTTPS API") in links
    assert ("LoadBalancer tcp 8501 HTTPS API", "", "LoadBalancer") in links
    assert ("Function", "reads", "secret Secret") in links
    assert ("LoadBalancer", "egress tcp 443", "the internet") in links
    assert ("clients of the hosts", "", "Task envoy 20000 → host 20000") in links
    assert chart.styled == {}
    assert chart.classes == {}


def test_a_change_marks_exactly_its_new_edges_and_nodes(
    base: dict[str, Any], opened: dict[str, Any]
) -> None:
    chart = _chart(picture(opened, base))
    added = {
        (chart.nodes[a], text, chart.nodes[b]) for a, _, text, b in chart.links_marked(ADDED_STYLE)
    }
    assert added == {
        ("172.16.0.0/12 outside the VPC", "added", "LoadBalancer tcp 8501 HTTPS API"),
        ("LoadBalancer", "added: egress tcp 20000-20999", "172.16.0.0/12 outside the VPC"),
    }
    assert all(arrow == "==>" for _, arrow, _, _ in chart.links_marked(ADDED_STYLE))
    assert [chart.nodes[n] for n in chart.classes["added"]] == ["172.16.0.0/12 outside the VPC"]
    assert chart.links_marked(REMOVED_STYLE) == []


def test_a_removed_edge_is_drawn_grey_with_both_ends_declared(
    base: dict[str, Any], opened: dict[str, Any]
) -> None:
    chart = _chart(picture(base, opened))  # the other way round
    removed = chart.links_marked(REMOVED_STYLE)
    assert len(removed) == 2
    assert all(text.startswith("removed") and arrow == "-.->" for _, arrow, text, _ in removed)
    assert [chart.nodes[n] for n in chart.classes["removed"]] == ["172.16.0.0/12 outside the VPC"]


def test_labels_and_ids_are_escaped_and_stable() -> None:
    assert label('a "quoted" {x}|y') == '"a #34;quoted#34; #123;x#125;#124;y"'
    first = node_id("sources", ("cidr", "10.0.0.0/8"))
    assert first == node_id("sources", ("cidr", "10.0.0.0/8"))
    assert first != node_id("sources", ("cidr", "10.0.0.0/9"))
    assert mermaid_syntax.re.fullmatch(mermaid_syntax.ID, node_id("ports", ("end", "a/b c")))


def test_no_baseline_and_an_unchanged_baseline_draw_the_same(base: dict[str, Any]) -> None:
    names = Names(base)
    graph = exposure_graph(base, names)
    assert flowchart(graph) == [
        line for line in flowchart(graph, exposure_graph(base, names)) if "classDef" not in line
    ]


def test_the_report_carries_the_picture_before_the_appendix(tmp_path: Path) -> None:
    from tests.review.builder import write_assembly
    from tools.review.collect import build_review
    from tools.review.render import render

    outdir = write_assembly(tmp_path / "out", {"App": _base()})
    text = render(build_review(outdir, linter=None))
    assert text.index(HEADING) < text.index("# Appendix")
    mermaid_syntax.read(mermaid_syntax.block(text, HEADING))
