"""Phase "collect tombstones" of the reconcile pass.

Stopped records older than TOMBSTONE_GRACE_HOURS of tasks ECS no longer knows (MISSING) are
deleted with KV delete-cas (a record that changed stays), in this cluster's prefix only: a
legacy one is either provably this cluster's (migration.py moves or drops it) or left alone.
The grace (default 5 days) outlives every delayed event: EventBridge retries for 24 h and the
queue keeps messages 4 days, so no late RUNNING event can find the tombstone gone.
"""

from __future__ import annotations

import inventory
import kv_layout
import logs
from reconcile_consul import Owned
from reconcile_context import PassContext
from reconcile_diff import old_tombstones

GC_PER_PASS = 1000  # tombstones examined per pass; bounds the pass's DescribeTasks calls


def collect_tombstones(ctx: PassContext, owned: Owned, listed: set[str]) -> None:
    cutoff = ctx.now() - ctx.settings.tombstone_grace
    old = old_tombstones(owned.records, listed, cutoff, GC_PER_PASS)
    if not old or ctx.out_of_time():
        return
    described = ctx.ecs.describe_tasks(set(old))
    ops = [
        {
            "KV": {
                "Verb": "delete-cas",
                "Key": kv_layout.task_key(ctx.cluster_arn, tid),
                "Index": index,
            }
        }
        for tid, index in sorted(old.items())
        if described.failures.get(tid) == "MISSING"
    ]
    try:
        landed = inventory.txn_groups(ctx.consul, [(op,) for op in ops], stop=ctx.out_of_time)
    except Exception as err:
        logs.warning("tombstone collection failed; the next pass retries", error=str(err))
        return
    ctx.report.tombstones_collected += len(landed)
