"""Drain on delete: the custom resource that empties the catalog of the registrar's entries.

Entry point `on_event(event, context)` for a CDK `custom_resources.Provider`.
- Create / Update: nothing to do. The physical ID is derived from the cluster ARN, so it stays
  the same across updates (a new physical ID would make CloudFormation delete, i.e. drain, the
  old one) unless the cluster itself is replaced, whose old entries then do get drained.
- Delete: when the property `Drain` is "true", every task node this registrar owns for the
  cluster (node meta `source` and `cluster-arn`; nothing else is ever listed) is deleted, node
  by node in txns of up to 128 ops, until a fresh listing comes back empty; then the KV records
  of the cluster (`kv_layout.cluster_prefix`: name, Region and account, tasks and hosts) go with
  one `delete-tree`, which cannot reach a same-named cluster of another account or Region (the
  legacy name-keyed layout could). `Drain` is a property,
  not the resource's existence, so turning the flag off is an Update and drains nothing.

The stack makes the registrar's SQS event source and the reconcile schedule depend on this
resource, so on stack deletion both are gone before the drain runs and nothing re-registers
behind it (an invocation already running may still land one write; the Consul fleet is then
deleted anyway, or the next drain removes it). A Consul failure fails the deletion with a clear
message rather than leaving entries behind silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aws
import catalog
import identity
import inventory
import kv_layout
import logs
import registrar
import retry
from inventory import Inventory

# The node delete and its task's record in the legacy layout: two ops per node.
NODES_PER_TXN = inventory.MAX_TXN_OPS // 2
MAX_ROUNDS = 20


def physical_id(cluster_arn: str) -> str:
    return f"consul-catalog-drain:{cluster_arn}"


def _removal_ops(cluster_arn: str, node: str) -> list[dict[str, Any]]:
    """Delete the node and, if it is still there, its task's record in the legacy layout.

    A legacy record (kv_layout.py) of a node this cluster owns is this cluster's: task IDs are
    unique. Other legacy records cannot be told apart from a same-named cluster's and stay.
    """
    task_id = node.removeprefix(identity.NODE_PREFIX)
    legacy = kv_layout.legacy_key(cluster_arn, kv_layout.TASKS, task_id)
    return [*catalog.deregister_ops(node), {"KV": {"Verb": "delete", "Key": legacy}}]


def drain(consul: Inventory, cluster_arn: str, budget: retry.Budget) -> int:
    """Delete every node the registrar owns for `cluster_arn` and its KV records; nodes removed."""
    removed = 0
    expression = inventory.owned_nodes_filter(cluster_arn)
    for _ in range(MAX_ROUNDS):
        if budget.exhausted:
            raise retry.BudgetExhausted(f"drain ran out of time after removing {removed} nodes")
        names = sorted(str(n["Node"]) for n in consul.nodes(expression) if n.get("Node"))
        if not names:
            break
        for start in range(0, len(names), NODES_PER_TXN):
            batch = names[start : start + NODES_PER_TXN]
            consul.txn([op for name in batch for op in _removal_ops(cluster_arn, name)])
            removed += len(batch)
    else:
        raise RuntimeError(f"entries kept reappearing after {MAX_ROUNDS} drain rounds")
    consul.txn([{"KV": {"Verb": "delete-tree", "Key": kv_layout.cluster_prefix(cluster_arn)}}])
    return removed


def on_event(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Provider onEvent handler. Raises (CloudFormation reports the reason) on failure."""
    request = event.get("RequestType")
    properties = event.get("ResourceProperties") or {}
    rt = registrar.runtime()
    cluster_arn = str(properties.get("ClusterArn") or rt.settings.cluster_arn)
    try:
        kv_layout.scope(cluster_arn)
    except ValueError as err:
        raise ValueError(f"ResourceProperties.ClusterArn: {err}") from None
    physical = physical_id(cluster_arn)
    if request in ("Create", "Update"):
        return {"PhysicalResourceId": physical}
    if request != "Delete":
        raise ValueError(f"RequestType must be Create, Update or Delete, got {request!r}")
    physical = str(event.get("PhysicalResourceId") or physical)
    if str(properties.get("Drain", "true")).lower() != "true":
        logs.info("drain on delete is off: the registrar's entries stay", cluster_arn=cluster_arn)
        return {"PhysicalResourceId": physical, "Data": {"NodesRemoved": 0}}
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    budget = (
        retry.Budget(remaining, rt.settings.reserve_ms)
        if callable(remaining)
        else retry.Budget.fixed(600.0)
    )
    try:
        with aws.within(budget):
            removed = drain(inventory.connect(rt, budget), cluster_arn, budget)
    except Exception as err:
        logs.error("drain failed", cluster_arn=cluster_arn, error=f"{type(err).__name__}: {err}")
        raise RuntimeError(
            f"could not remove the registrar's Consul entries of {cluster_arn}: {err}. Retry "
            "the deletion once Consul answers, or retain this resource (delete-stack "
            "--retain-resources) to leave the entries in Consul."
        ) from err
    logs.info("drained the registrar's entries", cluster_arn=cluster_arn, nodes_removed=removed)
    return {"PhysicalResourceId": physical, "Data": {"NodesRemoved": removed}}
