"""Check changes: encryption and TLS per store, cdk-nag acknowledgements, resource counts.

An acknowledgement is identified by its id and the construct path it was made on; one whose id
and reason stay while its path changes has *moved* (the construct was renamed or moved).

Broadening: a store that is new or changed and is not encrypted at rest or does not enforce TLS
where it used to (or, new, does not at all); any added acknowledgement: it waives a cdk-nag
finding, and since `make synth` fails on unacknowledged findings, an acknowledgement is where a
new wildcard or exemption would otherwise pass unseen.
"""

from __future__ import annotations

from collections.abc import Hashable

from tools.review.compare import (
    ADDED,
    CHANGED,
    MOVED,
    REMOVED,
    Change,
    Facts,
    Names,
    additions_and_removals,
    canon,
    get,
    match,
    rid,
)


def _store_id(store: Facts) -> Hashable:
    return rid(store.get("store")) or canon([store.get("kind"), store.get("key")])


def _store_text(store: Facts, names: Names) -> str:
    return (
        f"{store['kind']} {names(store.get('store'), '')}: at rest {store['at_rest']}"
        f" ({store['key']}), in transit {store['in_transit']}"
    )


def _weaker(store: Facts, before: Facts | None) -> str:
    lost = []
    for part, words in (
        ("at_rest_ok", "not encrypted at rest"),
        ("in_transit_ok", "no TLS enforced"),
    ):
        if not store.get(part) and (before is None or before.get(part)):
            lost.append(words)
    return "; ".join(lost)


def _encryption(old: Facts, new: Facts, names: Names) -> list[Change]:
    matched = match(get(old, "posture", "encryption"), get(new, "posture", "encryption"), _store_id)

    def where(store: Facts) -> tuple[Facts, ...]:
        return (store["store"],) if store.get("store") else ()

    changes = additions_and_removals(
        "encryption", matched, lambda s: _store_text(s, names), where, lambda s: _weaker(s, None)
    )
    changes += [
        Change(
            "encryption",
            CHANGED,
            f"{_store_text(now, names)} (was: at rest {was['at_rest']} ({was['key']}), "
            f"in transit {was['in_transit']})",
            where(now),
            _weaker(now, was),
        )
        for was, now in matched.changed
    ]
    return changes


def _ack_text(ack: Facts) -> str:
    return f"`{ack['id']}` at {ack['at'] or 'the app'}: {ack['reason']}"


def _acknowledgements(old: Facts, new: Facts) -> list[Change]:
    matched = match(
        get(old, "checks", "nag", "acknowledgements"),
        get(new, "checks", "nag", "acknowledgements"),
        lambda a: (a["id"], a["at"]),
        lambda a: a["reason"],
    )
    changes: list[Change] = []
    removed = list(matched.removed)
    for ack in matched.added:
        moved = next(
            (r for r in removed if (r["id"], r["reason"]) == (ack["id"], ack["reason"])), None
        )
        where = ({"stack": "", "logical_id": "", "path": ack["at"]},)
        if moved is not None:
            removed.remove(moved)
            changes.append(
                Change("acknowledgements", MOVED, f"{_ack_text(ack)} (was at {moved['at']})", where)
            )
        else:
            changes.append(
                Change(
                    "acknowledgements",
                    ADDED,
                    _ack_text(ack),
                    where,
                    "a new acknowledgement waives a cdk-nag finding: judge its reason",
                )
            )
    changes += [
        Change(
            "acknowledgements",
            REMOVED,
            _ack_text(ack),
            ({"stack": "", "logical_id": "", "path": ack["at"]},),
        )
        for ack in removed
    ]
    changes += [
        Change(
            "acknowledgements",
            CHANGED,
            f"{_ack_text(now)} (reason was: {was['reason']})",
            ({"stack": "", "logical_id": "", "path": now["at"]},),
        )
        for was, now in matched.changed
    ]
    return changes


def _counts(old: Facts, new: Facts) -> list[Change]:
    before = (old.get("checks") or {}).get("resource_counts") or {}
    after = (new.get("checks") or {}).get("resource_counts") or {}
    changes: list[Change] = []
    for stack in sorted(before.keys() | after.keys()):
        was, now = before.get(stack) or {}, after.get(stack) or {}
        for kind in sorted(was.keys() | now.keys()):
            count_old, count_new = int(was.get(kind, 0)), int(now.get(kind, 0))
            if count_old != count_new:
                action = ADDED if not count_old else REMOVED if not count_new else CHANGED
                delta = f"{count_new - count_old:+d}"
                changes.append(
                    Change(
                        "counts", action, f"{kind}: {count_old} → {count_new} ({delta}) in {stack}"
                    )
                )
    return changes


def check_changes(old: Facts, new: Facts, names: Names) -> list[Change]:
    return [*_encryption(old, new, names), *_acknowledgements(old, new), *_counts(old, new)]
