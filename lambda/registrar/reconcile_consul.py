"""Phase "read Consul" of the reconcile pass: what the registrar owns for the cluster.

3 requests up to SHARD_TASKS listed tasks (21 from there): the task nodes carrying this
cluster's ARN and our `source`, the state records under this cluster's prefix (plus the two
legacy prefixes until the migration settles, migration.read), and the disconnection markers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import host_state
import inventory
import migration
from inventory import Inventory
from model import StateRecord


@dataclass(frozen=True)
class Owned:
    """What the registrar owns for the cluster, as read at the start of the pass."""

    nodes: dict[str, Mapping[str, Any]]  # node name -> catalog node
    records: dict[str, tuple[StateRecord | None, int]]  # task ID -> (record, ModifyIndex)
    markers: set[str]  # nodes carrying the disconnection marker
    kv: migration.Records  # every record of the read, legacy layout included


# Listed tasks from which the state records are read in shards (migration.read): a record is
# ~2-3 KB of JSON in the KV listing (base64 of the record with its sidecar body), so one answer
# for 20,000 tasks is ~60 MB, and its parse several times that in a 1 GB function.
SHARD_TASKS = 20_000


def read_owned(consul: Inventory, cluster_arn: str, now: datetime, *, tasks: int = 0) -> Owned:
    """`tasks`: how many ECS lists; from SHARD_TASKS on, the records are read in shards."""
    nodes: dict[str, Mapping[str, Any]] = {
        str(n["Node"]): n
        for n in consul.nodes(inventory.owned_nodes_filter(cluster_arn))
        if isinstance(n.get("Node"), str)
    }
    kv = migration.read(consul, cluster_arn, now, shards=tasks >= SHARD_TASKS)
    markers = host_state.marked_nodes(consul)
    return Owned(nodes=nodes, records=dict(kv.tasks), markers=markers, kv=kv)
