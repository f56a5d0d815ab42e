"""`diff(old, new)`: every change from a baseline review to this one, category by category.

The categories and what each compares are in `tools.review.compare` (core: matching, moves)
and the three modules that read one group of facts each: network (ingress, listeners, egress,
published host ports), access (IAM, secrets, key and resource policies, Consul) and checks
(encryption, cdk-nag acknowledgements, resource counts).
"""

from __future__ import annotations

from tools.review.compare import CATEGORIES, MOVED, Change, Facts, Names, align, moves
from tools.review.compare_access import access_changes
from tools.review.compare_checks import check_changes
from tools.review.compare_network import network_changes


def diff(old: Facts, new: Facts) -> list[Change]:
    """Every change from `old` to `new` (both `twin.facts`), in CATEGORIES order, moves first."""
    found = moves(old, new)
    old = align(old, new)
    names = Names(old, new)
    changes = [
        Change(
            "moves",
            MOVED,
            f"{move.type or 'resource'} `{move.old}` → `{move.new}`: CloudFormation creates "
            f"`{move.new}` and deletes `{move.old}` (a replacement, not a rename)",
            ({"stack": move.stack, "logical_id": move.new, "path": move.path},),
        )
        for move in found
    ]
    changes += network_changes(old, new, names)
    changes += access_changes(old, new, names)
    changes += check_changes(old, new, names)
    order = list(CATEGORIES)
    return sorted(changes, key=lambda change: order.index(change.category))
