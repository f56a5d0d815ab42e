"""The table every figure contributes rows to, and the small statistics they share."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured, its value, and what it is compared with."""

    figure: str
    value: float
    unit: str
    compared_with: str


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values: the figure measured nothing")
    return float(statistics.median(values))


def fmt(value: float) -> str:
    """Integers as integers, small values with 3 significant digits, large ones with commas."""
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table, so that the output pastes into bench/README.md and issue notes as is."""
    header = ("figure", "value", "unit", "compared with")
    cells = [header, *((r.figure, fmt(r.value), r.unit, r.compared_with) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]

    def line(c: Sequence[str]) -> str:
        return "| " + " | ".join(s.ljust(w) for s, w in zip(c, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def machine() -> str:
    """What the figures ran on: they are only comparable on the same kind of machine."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for text in cpuinfo.read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"nproc {os.cpu_count()}; CPU {cpu}; Python {platform.python_version()} "
        f"({sys.executable}); {platform.system()} {platform.release()}; load average {load}"
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send the registrar's JSON log and EMF lines to /dev/null (they are still formatted:
    that cost is part of handling an event in Lambda too)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
