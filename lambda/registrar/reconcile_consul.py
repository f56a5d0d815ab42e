"""Phase "read Consul" of the reconcile pass: what the registrar owns for the cluster.

3 requests up to SHARD_TASKS tasks (21 from there, whenever the ECS listing is incomplete, and
22 when the records outgrow SINGLE_READ_BYTES or the listing timeout, then 21 on the later
passes of the same execution environment): the task nodes carrying this cluster's ARN and
our `source`, the state records under this cluster's prefix (plus the two legacy prefixes
until the migration settles, migration.read), and the disconnection markers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import host_state
import inventory
import logs
import migration
from connections import BodyTooLarge
from inventory import Inventory
from model import StateRecord


@dataclass(frozen=True)
class Owned:
    """What the registrar owns for the cluster, as read at the start of the pass."""

    nodes: dict[str, Mapping[str, Any]]  # node name -> catalog node
    records: dict[str, tuple[StateRecord | None, int]]  # task ID -> (record, ModifyIndex)
    markers: set[str]  # nodes carrying the disconnection marker
    kv: migration.Records  # every record of the read, legacy layout included


# Tasks from which the state records are read in shards (migration.read): a record is ~2-3 KB
# of JSON in the KV listing (base64 of the record with its sidecar body), so one answer for
# 20,000 tasks is ~60 MB, and its parse several times that in a 1 GB function. `?recurse`
# answers the whole prefix in one body, with no paging (agent/kvs_endpoint.go KVSGet).
SHARD_TASKS = 20_000
# The longest single read: about SHARD_TASKS running records. Tombstones are records too (kept
# TOMBSTONE_GRACE, 5 days), and nothing counts them before the read: a cluster under
# SHARD_TASKS tasks that stops many holds more records than tasks. A single read whose answer
# is longer is cut off here, unread beyond it, and the records are read in shards instead.
SINGLE_READ_BYTES = 64 * 2**20

# Clusters whose records this Lambda execution environment has had to read in shards (a single
# read cut off at SINGLE_READ_BYTES, or unanswered within the listing timeout): later passes in
# the same environment read them in shards straight away. The cut-off caps the function's
# memory, not Consul's: the servers build the whole answer before sending a byte
# (agent/http.go `wrap`), so each cut-off read costs them the full answer, every pass. A new
# environment (a cold start) pays one such read, then remembers; a cluster whose tombstones
# have expired keeps reading shards until the environment is replaced (18 more small requests).
_NEEDS_SHARDS: set[str] = set()


def read_owned(
    consul: Inventory, cluster_arn: str, now: datetime, *, tasks: int = 0, listed_all: bool = True
) -> Owned:
    """`tasks`: how many tasks ECS listed; `listed_all`: whether that listing is complete.

    The records are read in shards from SHARD_TASKS tasks listed or task nodes owned, whichever
    is more, and whenever the listing is incomplete: a ListTasks throttled or failing on page
    1 of 1,000 lists 100 tasks of 100,000, so its count bounds nothing (ECS API reference,
    "Request throttling for the Amazon ECS API": buckets per account and Region, shared with
    every other caller). The 18 more requests are cheap: an empty shard is a bodiless 404.
    Tombstones (kept TOMBSTONE_GRACE) are in neither count: they count by the answer's size,
    a single read longer than SINGLE_READ_BYTES, or not answered within the listing timeout,
    being abandoned for the shards, for this pass and the later ones of this execution
    environment (_NEEDS_SHARDS).
    """
    nodes: dict[str, Mapping[str, Any]] = {
        str(n["Node"]): n
        for n in consul.nodes(inventory.owned_nodes_filter(cluster_arn))
        if isinstance(n.get("Node"), str)
    }
    shards = not listed_all or max(tasks, len(nodes)) >= SHARD_TASKS or cluster_arn in _NEEDS_SHARDS
    try:
        kv = migration.read(consul, cluster_arn, now, shards=shards, max_bytes=SINGLE_READ_BYTES)
    except (BodyTooLarge, inventory.AnswerTooSlow) as err:
        logs.info("the state records outgrew one read: reading them in shards", reason=str(err))
        _NEEDS_SHARDS.add(cluster_arn)
        kv = migration.read(consul, cluster_arn, now, shards=True)
    markers = host_state.marked_nodes(consul)
    return Owned(nodes=nodes, records=dict(kv.tasks), markers=markers, kv=kv)
