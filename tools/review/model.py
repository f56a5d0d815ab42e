"""How the review names a resource: stable keys for review.json, short names for the first page.

A fact in review.json names resources by `stack` + `logical_id` (the key a diff matches on)
and by construct `path` (what survives a logical-ID change, so a diff can show a move). The
Markdown is rendered from these, never stored in the facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Construct-path segments CDK adds below the construct a user names: they say nothing
# about what the resource is for, so short names drop them.
_BOILERPLATE = frozenset(
    {"Resource", "Default", "DefaultPolicy", "ServiceRole", "Role", "Policy", "ASG", "Service"}
)


@dataclass(frozen=True, order=True)
class Res:
    """One resource in one template."""

    stack: str  # the template's file stem (the artifact id)
    logical_id: str
    path: str = ""  # construct path, '' when the synthesizer recorded none
    type: str = ""

    @property
    def key(self) -> str:
        return f"{self.stack}/{self.logical_id}"

    def markdown(self, attribute: str | None = None) -> str:
        """`LogicalId` (construct/path), the form every appendix table uses."""
        name = f"{self.logical_id}.{attribute}" if attribute else self.logical_id
        return f"`{name}` ({self.path})" if self.path else f"`{name}`"

    def segments(self) -> list[str]:
        """The construct path below the stack, without CDK's boilerplate segments."""
        parts = self.path.split("/")[1:] if "/" in self.path else []
        kept = [part for part in parts if part not in _BOILERPLATE]
        return kept or parts or [self.logical_id]

    def json(self) -> dict[str, str]:
        return {"stack": self.stack, "logical_id": self.logical_id, "path": self.path}


def short_names(resources: Iterable[Res]) -> dict[Res, str]:
    """A short unique name per resource: its last path segment, plus the nearest segments
    that tell it apart from the others, e.g. `Drain/Function` or `Backend/ExecutionRole`.

    Unique among `resources` only, so give it every resource a page names: a name then means
    one resource on the whole page.
    """
    items = sorted(set(resources))
    # positions from the end of the segment list; a last segment that only repeats the
    # resource type (`Drain/Function`, `Keys/Key`) says nothing alone: start with two.
    picked = {res: [1, 2] if _generic(res) else [1] for res in items}
    for _ in range(16):
        names: dict[str, list[Res]] = {}
        for res in items:
            names.setdefault(_name(res, picked[res]), []).append(res)
        clashes = [group for group in names.values() if len(group) > 1]
        if not clashes:
            break
        for group in clashes:
            _separate(group, picked)
    return {res: _name(res, picked[res]) for res in items}


def _generic(res: Res) -> bool:
    return len(res.segments()) > 1 and _segment(res, 1).lower() == res.type.split("::")[-1].lower()


def _segment(res: Res, position: int) -> str:
    segments = res.segments()
    return segments[-position] if position <= len(segments) else ""


def _separate(group: list[Res], picked: dict[Res, list[int]]) -> None:
    """Add to each member the nearest segment (from the end) on which the group differs."""
    longest = max(len(res.segments()) for res in group)
    for position in range(2, longest + 1):
        if len({_segment(res, position) for res in group}) > 1:
            for res in group:
                if position not in picked[res]:
                    picked[res].append(position)
            return
    kinds = {res.type for res in group}
    for res in group:  # same path segments: the type (or else the logical ID) tells them apart
        picked[res].append(-1 if len(kinds) == len(group) else 0)


def _name(res: Res, positions: list[int]) -> str:
    if 0 in positions:
        return res.logical_id
    if -1 in positions:
        return f"{_name(res, [p for p in positions if p > 0])} ({res.type.split('::')[-1]})"
    parts = [_segment(res, position) for position in sorted(positions, reverse=True)]
    return "/".join(part for part in parts if part) or res.logical_id


def brace_join(names: Sequence[str]) -> str:
    """Names joined by ', ', those sharing all but their first segment folded into braces:
    `Backend/Exec, Frontend/Exec` -> `{Backend,Frontend}/Exec`."""
    groups: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        head, sep, rest = name.partition("/")
        groups.setdefault(sep + rest if sep else f"\0{name}", []).append(head)
    out: list[str] = []
    for rest, heads in groups.items():
        if rest.startswith("\0"):
            out.append(rest[1:])
        elif len(heads) == 1:
            out.append(heads[0] + rest)
        else:
            out.append("{" + ",".join(heads) + "}" + rest)
    return ", ".join(sorted(out, key=lambda text: text.strip("{")))
