"""Where the registrar keeps its state records in Consul KV: one prefix per ECS cluster ARN.

    ecs-registrar/<cluster-name>/<region>/<account>/tasks/<task-id>
    ecs-registrar/<cluster-name>/<region>/<account>/hosts/<container-instance-id>

An ECS cluster name is unique only within one account and Region (the ARN is
`arn:<partition>:ecs:<region>:<account>:cluster/<name>`), so a prefix keyed by the name alone
was shared by every same-named cluster registered in one Consul: their reconcile passes took
each other's records for their own, and a drain's delete-tree wiped both. The Region and the
account make the prefix unique (Region codes are unique across partitions: us-east-1, cn-north-1
and us-gov-west-1 each belong to one). The layout it replaces:

    ecs-registrar/<cluster-name>/tasks/<task-id>          (releases before the ARN layout)
    ecs-registrar/<cluster-name>/hosts/<container-instance-id>

The reconcile pass reads this cluster's prefix, and the two legacy prefixes apart (never the
whole `ecs-registrar/<cluster-name>/`, which holds every same-named cluster's records), and only
until the migration is done (`migration_key`, migration.py). The event path never reads legacy
records; docs/architecture.md "State records" says how and what stays behind. A legacy key can
never be mistaken for an ARN-layout key: its segment after the name is `tasks` or `hosts`,
never a Region.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final, Literal

import identity

TASKS: Final = "tasks"
HOSTS: Final = "hosts"
Kind = Literal["tasks", "hosts"]


@dataclass(frozen=True)
class ClusterScope:
    """The parts of a cluster ARN that identify it: name, Region, account."""

    name: str
    region: str
    account: str


@functools.lru_cache(maxsize=64)  # a pass builds a key per record: parse each ARN once
def scope(cluster_arn: str) -> ClusterScope:
    """`arn:<partition>:ecs:<region>:<account>:cluster/<name>` -> its scope; ValueError else."""
    parts = cluster_arn.split(":", 5)
    if (
        len(parts) != 6
        or parts[0] != "arn"
        or parts[2] != "ecs"
        or not parts[5].startswith("cluster/")
    ):
        raise ValueError(f"not an ECS cluster ARN: {cluster_arn!r}")
    region, account = parts[3], parts[4]
    if not region or not account or "/" in region + account:
        raise ValueError(f"ECS cluster ARN without a Region or an account: {cluster_arn!r}")
    return ClusterScope(identity.cluster_name(cluster_arn), region, account)


def name_prefix(cluster_arn: str) -> str:
    """Every record of every cluster named like this one, in both layouts: never read whole."""
    return f"{identity.STATE_PREFIX}{scope(cluster_arn).name}/"


def cluster_prefix(cluster_arn: str) -> str:
    """Every record of this cluster, and nothing of another one (what a drain deletes)."""
    s = scope(cluster_arn)
    return f"{identity.STATE_PREFIX}{s.name}/{s.region}/{s.account}/"


def task_key(cluster_arn: str, task_id: str) -> str:
    """The state record of a task (ordering by detail.version, tombstones)."""
    return f"{cluster_prefix(cluster_arn)}{TASKS}/{task_id}"


def host_key(cluster_arn: str, instance_id: str) -> str:
    """The state record of a container instance (agent state, disconnection)."""
    return f"{cluster_prefix(cluster_arn)}{HOSTS}/{instance_id}"


def legacy_prefix(cluster_arn: str, kind: Kind) -> str:
    """Where the releases before the ARN layout kept records of `kind`, shared by every
    same-named cluster that ran them."""
    return f"{name_prefix(cluster_arn)}{kind}/"


def legacy_key(cluster_arn: str, kind: Kind, item_id: str) -> str:
    """Where the releases before the ARN layout kept the record of `item_id`."""
    return f"{legacy_prefix(cluster_arn, kind)}{item_id}"


def migration_key(cluster_arn: str) -> str:
    """The marker saying this cluster has nothing left in the legacy layout (migration.py);
    under the cluster's prefix, so the pass's one read of it finds the marker too."""
    return f"{cluster_prefix(cluster_arn)}legacy-layout-migrated"


@dataclass(frozen=True)
class Located:
    """A key under `name_prefix`, read back: whose record it is and in which layout."""

    kind: Kind
    item_id: str
    legacy: bool


def locate(key: str, s: ClusterScope) -> Located | None:
    """What `key` holds for the cluster of scope `s` (`scope(cluster_arn)`, parsed once per
    listing); None for another cluster's record or anything else."""
    prefix = f"{identity.STATE_PREFIX}{s.name}/"
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    if len(parts) == 2:
        kind, item_id, legacy = parts[0], parts[1], True
    elif len(parts) == 4 and (parts[0], parts[1]) == (s.region, s.account):
        kind, item_id, legacy = parts[2], parts[3], False
    else:
        return None
    if not item_id:
        return None
    if kind == TASKS:
        return Located(TASKS, item_id, legacy)
    if kind == HOSTS:
        return Located(HOSTS, item_id, legacy)
    return None
