"""Changes since a baseline: what a change opens, grants or decrypts, from two reviews' facts.

Both sides are `tools.review.twin.facts` (review.json), computed by the same review code, so a
difference in the facts is a difference in the templates, never in how they were read. Each
change is **added**, **removed**, **changed** or **moved**, names the resources it concerns by
logical ID and construct path, and says why it broadens access when it does (`broadening`),
which is what `--fail-on broadening` fails on.

Matching: an entry is the same on both sides when its identity is (the resources it names by
stack + logical ID, and its own key fields, e.g. protocol, ports and source of an ingress
rule); what else differs is a change. A resource whose construct path is the same on both sides
but whose logical ID is not has *moved*: the baseline is rewritten to the new logical IDs before
anything else is compared, so the move is reported once, in its own category, and not as a
remove plus an add in every category that names the resource. A move is not free: CloudFormation
identifies a resource by its logical ID, so it creates the new one and deletes the old one (AWS
CDK Developer Guide, "Identifiers and the AWS CDK", Logical ID stability).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from tools.review.model import Res, brace_join, short_names

Facts = dict[str, Any]
ADDED, REMOVED, CHANGED, MOVED = "added", "removed", "changed", "moved"

# Category key -> heading, in the order the section lists them.
CATEGORIES = {
    "moves": "Moved: same construct, new logical ID",
    "ingress": "Ingress and listeners",
    "paths": "Network paths: routes, VPN, transit gateway, peering",
    "egress": "Egress",
    "host-ports": "Published host ports",
    "iam": "IAM: roles and their statements",
    "secrets": "Secrets: readers, writers, injection points",
    "encryption": "Encryption and TLS per store",
    "policies": "Key and resource policies",
    "acknowledgements": "cdk-nag acknowledgements",
    "consul": "Consul ACL rules and intentions",
    "counts": "Resource counts by type",
}
# How far a source or destination is, in words (the `reach` values of review.json).
REACH_WORDS = {
    "anywhere": "the internet",
    "outside_vpc": "outside the VPC",
    "inside_vpc": "inside the VPC",
    "group": "a security group",
    "unresolved": "an unresolved peer (counted as outside the VPC)",
    "routed": "every network routed to the VPC (load balancer without security groups)",
}
EXTERNAL = ("anywhere", "outside_vpc", "unresolved", "routed")


@dataclass(frozen=True)
class Change:
    category: str  # a key of CATEGORIES
    action: str  # added, removed, changed, moved
    what: str  # one line of plain text (names in backticks, no other Markdown)
    where: tuple[Facts, ...] = ()  # {"stack", "logical_id", "path"}; an acknowledgement: path
    broadening: str = ""  # why a reviewer must approve it; '' when it grants nothing new


def rid(res: Facts | None) -> tuple[str, str] | None:
    """The identity of a resource in review.json: stack and logical ID."""
    return (str(res.get("stack", "")), str(res.get("logical_id", ""))) if res else None


class Names:
    """Short unique names for every resource either side names (`model.short_names`)."""

    def __init__(self, *sides: Facts) -> None:
        found: dict[tuple[str, str], Res] = {}
        for side in sides:
            for item in side.get("resources") or []:
                res = Res(item["stack"], item["logical_id"], item["path"], item.get("type", ""))
                found.setdefault((res.stack, res.logical_id), res)
            for res_json in _resources_in(side):
                key = (res_json["stack"], res_json["logical_id"])
                found.setdefault(key, Res(key[0], key[1], str(res_json.get("path", ""))))
        self._res = found
        self._names = short_names(found.values())

    def __call__(self, res: Facts | None, fallback: str = "?") -> str:
        key = rid(res)
        if key is None:
            return fallback
        found = self._res.get(key)
        return self._names.get(found, key[1]) if found is not None else key[1]

    def join(self, resources: Iterable[Facts | None]) -> str:
        return brace_join([self(res) for res in resources if res])

    def type_of(self, res: Facts) -> str:
        found = self._res.get(rid(res) or ("", ""))
        return found.type if found is not None else ""


def _resources_in(value: Any) -> Iterable[Facts]:
    """Every `{"stack", "logical_id", "path"}` inside a facts tree."""
    if isinstance(value, dict):
        if {"stack", "logical_id", "path"} <= set(value):
            yield value
        for item in value.values():
            yield from _resources_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _resources_in(item)


# --- moves -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    stack: str
    path: str
    type: str
    old: str
    new: str


def moves(old: Facts, new: Facts) -> list[Move]:
    """Resources whose construct path is on both sides under another logical ID."""
    before = {(r["stack"], r["path"]): r for r in old.get("resources") or [] if r.get("path")}
    after = {(r["stack"], r["path"]): r for r in new.get("resources") or [] if r.get("path")}
    old_ids = {(r["stack"], r["logical_id"]) for r in old.get("resources") or []}
    new_ids = {(r["stack"], r["logical_id"]) for r in new.get("resources") or []}
    found: list[Move] = []
    for key in sorted(before.keys() & after.keys()):
        was, now = before[key], after[key]
        if (
            was["logical_id"] != now["logical_id"]
            and was.get("type") == now.get("type")
            and (key[0], was["logical_id"]) not in new_ids
            and (key[0], now["logical_id"]) not in old_ids
        ):
            found.append(
                Move(key[0], key[1], str(now.get("type", "")), was["logical_id"], now["logical_id"])
            )
    return found


def rewrite(facts: Any, found: list[Move]) -> Any:
    """`facts` with every moved logical ID replaced by its new one, in resources and in text
    (flattened references such as `<OldId.Arn>` and labels that quote a logical ID)."""
    if not found:
        return facts
    by_stack = {(m.stack, m.old): m.new for m in found}
    by_id = {m.old: m.new for m in found}
    pattern = re.compile(
        r"(?<![A-Za-z0-9])("
        + "|".join(sorted(map(re.escape, by_id), key=len, reverse=True))
        + r")(?![A-Za-z0-9])"
    )

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {key: walk(item) for key, item in value.items()}
            key = (value.get("stack"), value.get("logical_id"))
            if {"stack", "logical_id", "path"} <= set(value) and key in by_stack:
                out["logical_id"] = by_stack[key]
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, str):
            return pattern.sub(lambda m: by_id[m.group(1)], value)
        return value

    return walk(facts)


def align(old: Facts, new: Facts) -> Facts:
    """`old` with the logical IDs of resources that moved replaced by their new ones."""
    aligned: Facts = rewrite(old, moves(old, new))
    return aligned


# --- matching --------------------------------------------------------------------------------


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Matched:
    added: list[Facts]
    removed: list[Facts]
    changed: list[tuple[Facts, Facts]]  # (old, new), same identity, other fields differ


def match(
    old: Iterable[Facts],
    new: Iterable[Facts],
    identity: Callable[[Facts], Hashable],
    compared: Callable[[Facts], Any] = lambda item: item,
) -> Matched:
    """Pair entries by `identity`; among pairs, those whose `compared` part differs changed.

    Entries equal in full pair first, so when one identity has several entries (two grants of
    one role on one key, under two conditions) only the one that really changed is paired."""
    before: dict[Hashable, list[Facts]] = {}
    for item in old:
        before.setdefault(identity(item), []).append(item)
    unpaired: list[Facts] = []
    for item in new:
        same = before.get(identity(item)) or []
        equal = next((was for was in same if canon(compared(was)) == canon(compared(item))), None)
        if equal is None:
            unpaired.append(item)
        else:
            same.remove(equal)
    added: list[Facts] = []
    changed: list[tuple[Facts, Facts]] = []
    for item in unpaired:
        waiting = before.get(identity(item))
        if waiting:
            changed.append((waiting.pop(0), item))
        else:
            added.append(item)
    removed = [item for items in before.values() for item in items]
    return Matched(added, removed, changed)


Text = Callable[[Facts], str]


def additions_and_removals(
    category: str,
    matched: Matched,
    text: Text,
    where: Callable[[Facts], tuple[Facts, ...]],
    why: Text = lambda _: "",
) -> list[Change]:
    """One change per added and per removed entry; `why` says when an addition broadens."""
    changes = [Change(category, ADDED, text(i), where(i), why(i)) for i in matched.added]
    return changes + [Change(category, REMOVED, text(i), where(i)) for i in matched.removed]


def get(facts: Facts, *path: str) -> list[Facts]:
    """The list at `path` in `facts` ([] when a side predates the key)."""
    value: Any = facts
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return list(value) if isinstance(value, list) else []


def plus_minus(old: Iterable[str], new: Iterable[str]) -> str:
    """`+a +b -c`: what a list gained and lost."""
    before, after = set(old), set(new)
    return " ".join(
        [*(f"+{x}" for x in sorted(after - before)), *(f"-{x}" for x in sorted(before - after))]
    )
