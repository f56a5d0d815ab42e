"""'Did you mean ...?' for configuration keys and fields. Pure: no CDK.

A typo in a key nobody reads is worse than an error: `onprem_cidr` would silently leave the
default on-prem network open and the operator's own closed. Configuration therefore refuses an
unknown name that is close to a known one, and names the known one.
"""

from __future__ import annotations

from collections.abc import Iterable


def _normalized(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def distance(left: str, right: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment)."""
    rows = list(range(len(right) + 1))
    previous: list[int] = []
    for i, a in enumerate(left, start=1):
        current = [i] + [0] * len(right)
        for j, b in enumerate(right, start=1):
            cost = 0 if a == b else 1
            current[j] = min(current[j - 1] + 1, rows[j] + 1, rows[j - 1] + cost)
            if i > 1 and j > 1 and a == right[j - 2] and left[i - 2] == b:
                current[j] = min(current[j], previous[j - 2] + 1)
        previous, rows = rows, current
    return rows[len(right)]


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` was probably meant to be, or None when none is close.

    Close means: equal once case and `-`/`_` are ignored; or at most one edit away (two for
    names of ten characters or more); or a shortened form (six characters or more) of it.
    """
    wanted = _normalized(name)
    best: tuple[int, str] | None = None
    for candidate in known:
        target = _normalized(candidate)
        if wanted == target:
            return candidate
        edits = distance(wanted, target)
        allowed = 2 if len(target) >= 10 else 1
        close = edits <= allowed or (len(wanted) >= 6 and target.startswith(wanted))
        if close and (best is None or edits < best[0]):
            best = (edits, candidate)
    return None if best is None else best[1]
