"""Markdown building blocks: tables that fit a width, abridged text, compact identifiers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tools.review.model import Res

_REF = re.compile(r"<([A-Za-z0-9]+)(?:\.[A-Za-z0-9]+)?>")
_PSEUDO = {"<AWS::AccountId>": "ACCOUNT", "<AWS::Region>": "REGION", "<AWS::Partition>": "aws"}


def cell(text: object) -> str:
    """Table-safe text: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or "—"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], *, width: int | None = None
) -> list[str]:
    """A Markdown table. With `width`, a row longer than that is wrapped: its longest cell
    breaks at `, ` or `; ` into continuation rows whose other cells are empty."""
    lines = [_line(list(columns)), "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [cell(value) for value in row]
        lines += _wrapped(cells, width) if width else [_line(cells)]
    return lines


def _wrapped(cells: list[str], width: int) -> list[str]:
    if len(_line(cells)) <= width:
        return [_line(cells)]
    index = max(range(len(cells)), key=lambda i: len(cells[i]))
    room = width - len(_line([c if i != index else "" for i, c in enumerate(cells)]))
    first, rest = _split(cells[index], max(room, 12))
    head = [c if i != index else first for i, c in enumerate(cells)]
    if not rest:
        return [_line(head)]
    tail = [" " if i != index else rest for i in range(len(cells))]
    return [_line(head), *_wrapped(tail, width)]


def _split(text: str, room: int) -> tuple[str, str]:
    """The longest head of `text` that fits `room`, broken after `,`/`;` when possible."""
    words = text.split(" ")
    taken = 1
    while taken < len(words) and len(" ".join(words[: taken + 1])) <= room:
        taken += 1
    if taken < len(words):
        breaks = [i + 1 for i in range(taken) if words[i].endswith((",", ";"))]
        if breaks:
            taken = breaks[-1]
    return " ".join(words[:taken]), " ".join(words[taken:])


def abridge(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, with `…` when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if text[limit - 1] != " ":  # mid-word: drop the partial word
        cut = cut.rsplit(" ", 1)[0]
    cut = cut.rstrip(",;:. ")
    return cut + "…"


def compact(text: str, names: dict[str, str]) -> str:
    """A flattened reference made short: `<LogicalId.Arn>` becomes the resource's short name
    (from `names`, keyed by logical ID), pseudo parameters become words, and an ARN drops its
    `arn:partition:` prefix, region and account."""
    for pseudo, word in _PSEUDO.items():
        text = text.replace(pseudo, word)
    text = _REF.sub(lambda m: names.get(m.group(1), m.group(1)), text)
    if text.startswith("arn:"):
        parts = text.split(":", 5)
        if len(parts) == 6:
            text = f"{parts[2]}:{parts[5]}"
    return text


def logical_names(names: dict[Res, str]) -> dict[str, str]:
    """Short names keyed by logical ID, for `compact`."""
    return {res.logical_id: name for res, name in names.items()}


def abridge_list(items: list[str], limit: int, sep: str = ", ") -> str:
    """As many items as fit in `limit` characters, then `+N` for the rest."""
    shown: list[str] = []
    for index, item in enumerate(items):
        rest = len(items) - index - 1
        suffix = f" +{rest}" if rest else ""
        if shown and len(sep.join([*shown, item]) + suffix) > limit:
            return sep.join(shown) + f" +{len(items) - index}"
        shown.append(item)
    return sep.join(shown)
