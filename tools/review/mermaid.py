"""The exposure graph as a Mermaid flowchart, with what a change added or removed marked.

Mermaid (mermaid.js.org, "Flowcharts - Basic Syntax"), as GitHub renders a ```mermaid block:
`flowchart LR`, nodes `id["label"]` inside `subgraph id["title"] … end`, links `a --> b`,
`a -.-> b` (dotted), `a ==> b` (thick), with text `a -->|"text"| b`; `linkStyle i,j …` styles
links by their 0-based order of definition; `classDef` and `class a,b name` style nodes. In a
label, characters Mermaid reads as syntax are written as entity codes (`#35;` for `#`).

Legend: solid arrows reach a port or serve a workload; `reads` arrows go to a secret; dotted
arrows are egress to outside the VPC. In a comparison, thick red arrows and red-bordered nodes
were added since the baseline; grey dotted arrows labelled `removed` are gone.
"""

from __future__ import annotations

from tools.review.compare import Facts, Names
from tools.review.exposure_map import (
    EGRESS,
    PORTS,
    SECRETS,
    SOURCES,
    WORKLOADS,
    Edge,
    Graph,
    exposure_graph,
)

_TITLES = {
    SOURCES: "Sources and destinations",
    PORTS: "Listeners and ports",
    WORKLOADS: "Workloads",
    SECRETS: "Secrets",
}
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:/()-_+*→=!?'")
ADDED_STYLE = "stroke:#d73a49,stroke-width:3px,color:#d73a49"
REMOVED_STYLE = "stroke:#999999,stroke-dasharray:4"


def label(text: str) -> str:
    """`text` as a quoted Mermaid label: anything outside a small safe set as `#<code>;`."""
    return '"' + "".join(c if c in _SAFE else f"#{ord(c)};" for c in text) + '"'


def _link(edge: Edge, mark: str) -> str:
    text = edge.label
    if mark == "added":
        arrow, text = "==>", f"added: {text}" if text else "added"
    elif mark == "removed":
        arrow, text = "-.->", f"removed: {text}" if text else "removed"
    else:
        arrow = "-.->" if edge.kind == EGRESS else "-->"
    middle = f"{arrow}|{label(text)}|" if text else arrow
    return f"  {edge.source} {middle} {edge.target}"


def flowchart(graph: Graph, baseline: Graph | None = None) -> list[str]:
    """The ```mermaid block; with `baseline`, added and removed edges and nodes marked."""
    old_edges = baseline.edges if baseline is not None else graph.edges
    old_nodes = baseline.nodes if baseline is not None else graph.nodes
    removed_edges = [edge for edge in old_edges if edge not in graph.edges]
    nodes = {**graph.nodes}
    for edge in removed_edges:  # a removed edge still needs both ends declared
        for end in (edge.source, edge.target):
            if end not in nodes and baseline is not None:
                nodes[end] = baseline.nodes[end]
    lines = ["```mermaid", "flowchart LR"]
    for group, title in _TITLES.items():
        declared = sorted((n for n in nodes.values() if n.group == group), key=lambda n: n.label)
        if declared:
            lines.append(f"  subgraph {group}_group[{label(title)}]")
            lines += [f"    {node.id}[{label(node.label)}]" for node in declared]
            lines.append("  end")
    links: list[tuple[Edge, str]] = [
        (edge, "added" if edge not in old_edges else "") for edge in graph.edges
    ]
    links += [(edge, "removed") for edge in removed_edges]
    lines += [_link(edge, mark) for edge, mark in links]
    for mark, style in (("added", ADDED_STYLE), ("removed", REMOVED_STYLE)):
        indexes = [str(i) for i, (_, m) in enumerate(links) if m == mark]
        if indexes:
            lines.append(f"  linkStyle {','.join(indexes)} {style}")
    if baseline is not None:
        added = sorted(str(n) for n in graph.nodes if n not in old_nodes)
        removed = sorted(str(n) for n in nodes if n not in graph.nodes)
        for name, members, style in (
            ("added", added, "stroke:#d73a49,stroke-width:3px"),
            ("removed", removed, "stroke:#999999,stroke-dasharray:4,color:#999999"),
        ):
            if members:
                lines += [f"  classDef {name} {style}", f"  class {','.join(members)} {name}"]
    lines.append("```")
    return lines


HEADING = "## 5. The exposure, as a picture"
LEGEND = (
    "Sources reach listeners and ports, which serve workloads; `reads` arrows go to the secrets "
    "a workload reads; dotted arrows are egress to outside the VPC. The tables above and the "
    "appendix hold the same facts."
)
DIFF_LEGEND = (
    " Compared with the baseline: thick red arrows and red-bordered boxes are new, grey dotted "
    "arrows labelled `removed` are gone."
)


def picture(new: Facts, old: Facts | None = None) -> list[str]:
    """The section: a flowchart of `new`'s exposure, marked against `old` when given."""
    names = Names(*(side for side in (old, new) if side is not None))
    graph = exposure_graph(new, names)
    baseline = exposure_graph(old, names) if old is not None else None
    legend = LEGEND + (DIFF_LEGEND if old is not None else "")
    return [HEADING, "", legend, "", *flowchart(graph, baseline), ""]
