"""Drain on delete: the custom resource removes what the registrar owns, and only that."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import drain
import kv_layout
import pytest
import registrar
from registrar_fixtures import (
    CLUSTER_ARN,
    OTHER_CLUSTER_ARN,
    LambdaContext,
    fake_runtime,
)

from tests.consul_double import ConsulDouble


@pytest.fixture
def consul(consul_double: ConsulDouble) -> Iterator[ConsulDouble]:
    registrar.set_runtime(fake_runtime(consul_double.url))
    yield consul_double
    registrar.set_runtime(None)


def seed_task(consul: ConsulDouble, n: int, cluster_arn: str = CLUSTER_ARN) -> str:
    """A task node as the registrar writes it, with a service, a check and a state record."""
    name = f"ecs-task-{n:032x}"
    consul.seed_register(
        {
            "Node": name,
            "Address": "10.20.30.40",
            "NodeMeta": {
                "external-node": "true",
                "source": "ecs-anywhere-registrar",
                "cluster-arn": cluster_arn,
            },
            "Service": {"ID": f"web-{n:032x}", "Service": "web", "Port": 32768},
        }
    )
    consul.seed_kv(
        kv_layout.task_key(cluster_arn, f"{n:032x}"), b'{"version":3,"status":"running"}'
    )
    return name


def event(request: str, **properties: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "RequestType": request,
        "ResourceProperties": {"ClusterArn": CLUSTER_ARN, "Drain": "true", **properties},
    }
    if request != "Create":
        doc["PhysicalResourceId"] = drain.physical_id(CLUSTER_ARN)
    return doc


def test_delete_removes_every_entry_of_the_cluster_and_nothing_else(consul: ConsulDouble) -> None:
    # GIVEN 300 task nodes of the cluster (more than one txn), one of another cluster, a node
    # without our meta, and a host record
    ours = [seed_task(consul, n) for n in range(300)]
    theirs = seed_task(consul, 999, OTHER_CLUSTER_ARN)
    consul.seed_register({"Node": "consul-server-1", "Address": "10.0.0.3"})
    consul.seed_kv(kv_layout.host_key(CLUSTER_ARN, "5d7e3c2a"), b"{}")

    # WHEN the stack (or the registrar) is deleted
    answer = drain.on_event(event("Delete"), LambdaContext())

    # THEN every entry of the cluster is gone, services and checks with their nodes
    assert answer["Data"]["NodesRemoved"] == len(ours)
    assert sorted(consul.nodes()) == ["consul-server-1", theirs]
    assert {s["Node"] for s in consul.services()} == {theirs}
    # AND so are its KV records (tasks and hosts), but not the other cluster's
    assert list(consul.kv()) == [kv_layout.task_key(OTHER_CLUSTER_ARN, f"{999:032x}")]
    assert answer["PhysicalResourceId"] == drain.physical_id(CLUSTER_ARN)


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_create_and_update_write_nothing_and_keep_the_physical_id(
    consul: ConsulDouble, request_type: str
) -> None:
    seed_task(consul, 1)
    consul.reset_requests()

    answer = drain.on_event(event(request_type), LambdaContext())

    assert answer == {"PhysicalResourceId": drain.physical_id(CLUSTER_ARN)}
    assert consul.count() == 0
    assert len(consul.nodes()) == 1


def test_the_flag_off_keeps_the_entries(consul: ConsulDouble) -> None:
    seed_task(consul, 1)
    consul.reset_requests()

    answer = drain.on_event(event("Delete", Drain="false"), LambdaContext())

    assert answer["Data"] == {"NodesRemoved": 0}
    assert consul.writes() == 0
    assert len(consul.nodes()) == 1


def test_consul_down_fails_the_deletion_with_the_way_out(consul: ConsulDouble) -> None:
    seed_task(consul, 1)
    consul.inject(kind="status", path_prefix="/v1/catalog/nodes", status=503, times=-1)

    with pytest.raises(RuntimeError, match="retain-resources"):
        drain.on_event(event("Delete"), LambdaContext())
    assert len(consul.nodes()) == 1


def test_fails_when_the_request_type_is_unknown(consul: ConsulDouble) -> None:
    with pytest.raises(ValueError, match="RequestType must be Create, Update or Delete, got 'X'"):
        drain.on_event(event("X"), LambdaContext())


def test_fails_when_the_cluster_arn_is_not_one(consul: ConsulDouble) -> None:
    with pytest.raises(ValueError, match="ClusterArn: not an ECS cluster ARN"):
        drain.on_event(event("Delete", ClusterArn="mesh:"), LambdaContext())


def test_delete_leaves_the_records_of_a_same_named_cluster_of_another_account(
    consul: ConsulDouble,
) -> None:
    # GIVEN cluster "mesh" of this account and of another one, sharing the Consul
    twin = CLUSTER_ARN.replace("123456789012", "210987654321")
    seed_task(consul, 1)
    theirs = seed_task(consul, 2, twin)

    # WHEN this cluster's registrar is deleted
    drain.on_event(event("Delete"), LambdaContext())

    # THEN the other account's node and its state record are still there
    assert list(consul.nodes()) == [theirs]
    assert [key for key in consul.kv() if key.endswith(f"/tasks/{2:032x}")] != []
