"""When the reconcile pass may trust Consul for a task it does not describe.

A listed host-mode task whose state record says RUNNING, whose node is in the catalog, and
whose node address is its host's address as read this pass (container instance -> SSM,
batched) is in sync unless the registration the current code would compute for it differs
from the one its record's digest stands for. Its task definition revision and container
instance are fixed for the task's life, the host address is checked, and in host mode a port is
the container port the task definition declares; so that can only happen when the code that
computes registrations changed.

Bridge-mode tasks are described every pass: a container restarted in place by its restart
policy (supported on external instances, "Restart individual containers in Amazon ECS tasks
with container restart policies", ECS developer guide) keeps its task, but Docker gives its
dynamic host port anew (moby/moby#8723), so only DescribeTasks' `networkBindings` tell. The
record's sidecar body shows the mode (`host_mode`, noted by migration.read).

So the pass skips DescribeTasks for such host-mode tasks only while the marker
`kv_layout.verified_key` says that every running task was described by this very code (`SHAPE`,
a hash of the modules that compute registrations and their digest), and it describes
everything otherwise:

1. no marker, or another SHAPE (the first passes after a deploy that changed them): every task
   is described, as before; a clean pass (listing complete, nothing failed or deferred) writes
   {"shape": SHAPE, "since": now, "verified": false};
2. the same SHAPE, not verified: every task is still described, until a clean pass at least
   SETTLE after `since` writes "verified": true: by then no invocation of the previous code
   (registrar timeout 60 s, reconcile at most 5 min) can still be writing records;
3. verified: host-mode tasks as above are not described. Two writes per deploy that changes
   SHAPE.

The marker is under the cluster's prefix, so the drain removes it with the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import kv_layout
import logs
from consul import TxnConflict
from inventory import Inventory, KVPair
from model import MalformedEvent, parse_time

SETTLE = timedelta(minutes=15)
# The modules whose code decides a task's registration and its digest.
_SHAPE_MODULES = ("decide.py", "model.py", "identity.py")


def _shape() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _SHAPE_MODULES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


SHAPE = _shape()


@dataclass(frozen=True)
class Marker:
    shape: str
    since: datetime
    verified: bool


def parse(pair: KVPair | None) -> Marker | None:
    if pair is None:
        return None
    try:
        doc = json.loads(pair.value)
        return Marker(str(doc["shape"]), parse_time(doc["since"], "since"), doc["verified"] is True)
    except (ValueError, TypeError, KeyError, MalformedEvent):
        return None  # unreadable: describe everything, and write it again


def host_mode(sidecar: Mapping[str, Any]) -> bool:
    """Was the task registered in host mode, as its record's sidecar body shows? Its
    LocalServiceAddress is 127.0.0.1 only then (decide.py: the host's address in bridge mode,
    and a loopback host address is refused, aws.address_problem)."""
    service = sidecar.get("Service")
    proxy = service.get("Proxy") if isinstance(service, dict) else None
    return isinstance(proxy, dict) and proxy.get("LocalServiceAddress") == "127.0.0.1"


def trusted(pair: KVPair | None) -> bool:
    """May this pass skip DescribeTasks for tasks Consul vouches for?"""
    marker = parse(pair)
    return marker is not None and marker.shape == SHAPE and marker.verified


def after_full_pass(
    consul: Inventory, cluster_arn: str, pair: KVPair | None, now: datetime
) -> None:
    """A clean pass described every running task with this code: advance the marker (cas on
    the index read at the start of the pass, so a concurrent writer wins)."""
    marker = parse(pair)
    if marker is not None and marker.shape == SHAPE:
        if marker.verified or now < marker.since + SETTLE:
            return
        new = Marker(SHAPE, marker.since, True)
    else:
        new = Marker(SHAPE, now, False)
    value = json.dumps(
        {"shape": new.shape, "since": new.since.isoformat(), "verified": new.verified}
    ).encode()
    key = kv_layout.verified_key(cluster_arn)
    index = pair.modify_index if pair is not None else 0
    try:
        consul.txn(
            [
                {
                    "KV": {
                        "Verb": "cas",
                        "Key": key,
                        "Value": base64.b64encode(value).decode(),
                        "Index": index,
                    }
                }
            ]
        )
    except TxnConflict:
        return
    logs.info("registrations verified by this code", shape=SHAPE, verified=new.verified)
