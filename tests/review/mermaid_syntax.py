"""A strict reader of the Mermaid flowcharts the review writes: what they declare and link.

It accepts exactly the subset `tools.review.mermaid` emits, by Mermaid's flowchart grammar
(mermaid-js/mermaid packages/mermaid/src/diagrams/flowchart/parser/flow.jison: `subgraph
SPACE textNoTags SQS text SQE`, links with `|text|`, `linkStyle`, `classDef`, `class`), and
fails on anything else: an undeclared node, a raw quote in a label, a linkStyle index with no
link, an unbalanced subgraph, an ID that is a keyword.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ID = r"[A-Za-z][A-Za-z0-9_]*"
LABEL = r'"(?:[A-Za-z0-9 .,:/()\-_+*→=!?\']|#\d+;)*"'
KEYWORDS = {"end", "graph", "flowchart", "subgraph", "class", "classDef", "linkStyle", "style"}
_SUBGRAPH = re.compile(rf"^  subgraph ({ID})\[({LABEL})\]$")
_NODE = re.compile(rf"^    ({ID})\[({LABEL})\]$")
_LINK = re.compile(rf"^  ({ID}) (-->|==>|-\.->)(?:\|({LABEL})\|)? ({ID})$")
_LINK_STYLE = re.compile(
    r"^  linkStyle (\d+(?:,\d+)*) [a-z-]+:[#A-Za-z0-9.]+(?:,[a-z-]+:[#A-Za-z0-9.]+)*$"
)
_CLASS_DEF = re.compile(rf"^  classDef ({ID}) [a-z-]+:[#A-Za-z0-9.]+(?:,[a-z-]+:[#A-Za-z0-9.]+)*$")
_CLASS = re.compile(rf"^  class ({ID}(?:,{ID})*) ({ID})$")


@dataclass
class Flowchart:
    nodes: dict[str, str] = field(default_factory=dict)  # id -> label
    links: list[tuple[str, str, str, str]] = field(default_factory=list)  # (from, arrow, label, to)
    styled: dict[str, list[int]] = field(default_factory=dict)  # style -> link indexes
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> node ids

    def links_marked(self, style_prefix: str) -> list[tuple[str, str, str, str]]:
        indexes = [
            i
            for style, found in self.styled.items()
            if style.startswith(style_prefix)
            for i in found
        ]
        return [self.links[i] for i in sorted(indexes)]


def _unquote(label: str) -> str:
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), label[1:-1])


def read(lines: list[str]) -> Flowchart:
    """Parse a ```mermaid block; AssertionError naming the first line that is not valid."""
    assert lines[0] == "```mermaid", lines[0]
    assert lines[1] == "flowchart LR", lines[1]
    assert lines[-1] == "```", lines[-1]
    chart = Flowchart()
    depth = 0
    classes_defined: set[str] = set()
    for line in lines[2:-1]:
        if match := _SUBGRAPH.match(line):
            assert match.group(1) not in KEYWORDS, line
            depth += 1
        elif line == "  end":
            depth -= 1
            assert depth >= 0, "end without subgraph"
        elif match := _NODE.match(line):
            assert depth == 1, f"node outside a subgraph: {line}"
            node, label = match.group(1), match.group(2)
            assert node not in KEYWORDS, line
            assert node not in chart.nodes, f"declared twice: {line}"
            chart.nodes[node] = _unquote(label)
        elif match := _LINK.match(line):
            source, arrow, label, target = match.groups()
            chart.links.append((source, arrow, _unquote(label) if label else "", target))
        elif match := _LINK_STYLE.match(line):
            style = line.split(" ", 4)[-1]
            chart.styled[style] = [int(i) for i in match.group(1).split(",")]
        elif match := _CLASS_DEF.match(line):
            classes_defined.add(match.group(1))
        elif match := _CLASS.match(line):
            chart.classes[match.group(2)] = match.group(1).split(",")
        else:
            raise AssertionError(f"not valid Mermaid (or not what the review writes): {line!r}")
    assert depth == 0, "unclosed subgraph"
    for source, _, _, target in chart.links:
        assert source in chart.nodes, f"link from undeclared node {source}"
        assert target in chart.nodes, f"link to undeclared node {target}"
    for indexes in chart.styled.values():
        assert all(i < len(chart.links) for i in indexes), "linkStyle index without a link"
    for name, members in chart.classes.items():
        assert name in classes_defined, f"class {name} has no classDef"
        assert all(m in chart.nodes for m in members), f"class {name} names undeclared nodes"
    return chart


def block(markdown: str, heading: str) -> list[str]:
    """The ```mermaid block under `heading` in a Markdown text."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    first = lines.index("```mermaid", start)
    return lines[first : lines.index("```", first + 1) + 1]
