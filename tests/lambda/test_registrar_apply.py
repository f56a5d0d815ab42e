"""The write protocol under races and odd states, with interleavings forced deterministically.

A `Hooked` Consul client runs a competing writer at an exact point of the protocol (for
instance between the txn and the sidecar write), which threads cannot pin down reliably.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import apply
import catalog
import connections
import consul
import pytest
import retry
from decide import desired_registration, mesh_target
from model import MAX_PORTS, ContainerDefinition, Host, Registration, StateRecord, parse_event
from registrar_fixtures import HOST_IP, task_definition, task_event

from tests.consul_double import ConsulDouble

KEY = "ecs-registrar/mesh/tasks/0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b"
NODE = "ecs-task-0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b"


def client(double: ConsulDouble) -> consul.Consul:
    http = consul.HttpConsul(
        double.url,
        token=consul.StaticToken(None),
        connections=connections.ConnectionPool(double.url),
    )
    policy = retry.RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)
    return consul.RetryingConsul(http, policy=policy, budget=retry.Budget.fixed(30))


def registration(address: str = HOST_IP) -> Registration:
    td = task_definition("web")
    app = mesh_target(td)
    assert isinstance(app, ContainerDefinition)
    event = parse_event(json.dumps(task_event()))
    return desired_registration(event, td, app, Host(address, "mi-0", "ssm"))


def run(c: consul.Consul, desired: Registration | None, version: int) -> apply.Result:
    return apply.apply(c, key=KEY, node=NODE, desired=desired, version=version)


class Hooked:
    """Delegates to `inner`; runs `hook` once, just before the first call named `at`."""

    def __init__(self, inner: consul.Consul, at: str, hook: Callable[[], object]) -> None:
        self._inner = inner
        self._at = at
        self._hook: Callable[[], object] | None = hook

    def _maybe(self, name: str) -> None:
        if name == self._at and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()

    def kv_get(self, key: str, *, consistent: bool = False) -> consul.KVEntry | None:
        self._maybe("kv_get")
        return self._inner.kv_get(key, consistent=consistent)

    def txn(self, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        self._maybe("txn")
        return self._inner.txn(ops)

    def catalog_register(self, body: Mapping[str, Any]) -> None:
        self._maybe("catalog_register")
        self._inner.catalog_register(body)

    def catalog_deregister(self, node: str) -> None:
        self._maybe("catalog_deregister")
        self._inner.catalog_deregister(node)

    def service_instances(self, service: str, *, node: str) -> list[dict[str, Any]]:
        return self._inner.service_instances(service, node=node)

    def node_services(self, node: str) -> list[dict[str, Any]] | None:
        return self._inner.node_services(node)


def test_stop_landing_between_txn_and_sidecar_leaves_no_zombie(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN a registration whose sidecar write is preceded by a competing stop (txn + tombstone)
    plain = client(consul_double)
    racing = Hooked(plain, "catalog_register", lambda: run(plain, None, 4))

    # WHEN the registration finishes (its sidecar write recreates the deleted node)
    result = run(racing, registration(), 3)

    # THEN its re-check sees the tombstone and deletes the node itself
    assert result.kind == "stale"
    assert consul_double.nodes() == {}
    assert json.loads(consul_double.kv()[KEY][0])["status"] == "stopped"


def test_newer_registration_winning_the_race_keeps_its_sidecar(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN version 3 (old address) is about to write its sidecar when version 4 (new address)
    # runs its whole protocol
    plain = client(consul_double)
    newer = registration("10.9.9.9")
    racing = Hooked(plain, "catalog_register", lambda: run(plain, newer, 4))

    # WHEN version 3 writes its (now stale) sidecar after version 4's
    result = run(racing, registration(), 3)

    # THEN it notices the newer record and writes that record's sidecar again
    assert result.kind == "registered"
    assert {s["ServiceAddress"] for s in consul_double.services(node=NODE)} == {"10.9.9.9"}


def test_lost_cas_is_decided_again_from_the_new_record(consul_double: ConsulDouble) -> None:
    # GIVEN a stop's txn lands between the registration's read and its txn
    plain = client(consul_double)
    racing = Hooked(plain, "txn", lambda: run(plain, None, 4))

    # WHEN the registration's txn loses the cas (409)
    result = run(racing, registration(), 3)

    # THEN it reads the tombstone and gives up without writing anything more
    assert result.kind == "stale"
    assert consul_double.nodes() == {}
    assert consul_double.count(path_prefix="/v1/txn") == 2
    assert [r.status for r in consul_double.requests if r.path == "/v1/txn"] == [200, 409]


def test_unreadable_record_is_overwritten(consul_double: ConsulDouble) -> None:
    request = urllib.request.Request(
        f"{consul_double.url}/v1/kv/{KEY}", data=b"garbage", method="PUT"
    )
    urllib.request.urlopen(request).close()

    result = run(client(consul_double), registration(), 3)

    assert result.kind == "registered"
    assert json.loads(consul_double.kv()[KEY][0])["version"] == 3


def test_sidecar_drift_behind_a_current_record_is_repaired(consul_double: ConsulDouble) -> None:
    # GIVEN a registered task whose sidecar someone deleted
    c = client(consul_double)
    run(c, registration(), 3)
    sidecar = catalog.sidecar_body(registration())["Service"]["ID"]
    body = json.dumps({"Node": NODE, "ServiceID": sidecar}).encode()
    request = urllib.request.Request(
        f"{consul_double.url}/v1/catalog/deregister", data=body, method="PUT"
    )
    urllib.request.urlopen(request).close()

    # WHEN a duplicate of the event arrives
    result = run(c, registration(), 3)

    # THEN the sidecar is back
    assert result.kind == "repaired"
    assert sidecar in {s["ServiceID"] for s in consul_double.services(node=NODE)}


HOST_TASK = "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"


def host_registration() -> Registration:
    """The host-mode `api` task with an HTTP health path (its app listens on loopback)."""
    td = task_definition("api")
    api = td.container("api")
    assert api is not None
    api = replace(api, labels={**api.labels, "consul-mesh.health-check-path": "/ready"})
    td = replace(td, containers=(api, *[c for c in td.containers if c.name != "api"]))
    event = parse_event(json.dumps(task_event("task_running_host.json")))
    return desired_registration(event, td, api, Host(HOST_IP, "mi-0", "ssm"))


def run_host(c: consul.Consul, version: int) -> apply.Result:
    key = f"ecs-registrar/mesh/tasks/{HOST_TASK}"
    return apply.apply(
        c, key=key, node=f"ecs-task-{HOST_TASK}", desired=host_registration(), version=version
    )


def test_host_task_sidecar_lands_with_the_expose_path_its_checks_use(
    consul_double: ConsulDouble,
) -> None:
    # WHEN a host-mode task with a health path is registered
    run_host(client(consul_double), 3)
    # THEN its sidecar carries the expose path (written by catalog/register, which keeps it)
    node = f"ecs-task-{HOST_TASK}"
    (proxy,) = [s for s in consul_double.services(node) if s.get("ServiceKind") == "connect-proxy"]
    assert proxy["ServiceProxy"]["Expose"] == {
        "Paths": [
            {"ListenerPort": 21500, "Path": "/ready", "LocalPathPort": 9090, "Protocol": "http"}
        ]
    }
    # AND every HTTP check consul-esm runs targets that Envoy listener
    urls = {c["Definition"].get("HTTP") for c in consul_double.checks(node)}
    assert urls == {f"http://{HOST_IP}:21500/ready", None}  # None: the public listener's TCP


def test_sidecar_that_lost_its_expose_path_is_repaired(consul_double: ConsulDouble) -> None:
    # GIVEN a registered host-mode task whose sidecar was rewritten as before, minus Expose
    # (as an older registrar wrote it)
    c = client(consul_double)
    run_host(c, 3)
    node = f"ecs-task-{HOST_TASK}"
    body = catalog.sidecar_body(host_registration())
    del body["Service"]["Proxy"]["Expose"]
    c.catalog_register(body)
    proxy = next(s for s in consul_double.services(node) if s.get("ServiceKind"))
    assert proxy["ServiceProxy"]["Expose"] == {}
    # WHEN a duplicate of the event arrives
    result = run_host(c, 3)
    # THEN the sidecar is written again, with its expose path
    assert result.kind == "repaired"
    proxy = next(s for s in consul_double.services(node) if s.get("ServiceKind"))
    assert proxy["ServiceProxy"]["Expose"]["Paths"][0]["ListenerPort"] == 21500


class ScriptedTxn:
    """A Consul whose KV is always empty and whose txn always fails as given."""

    def __init__(self, error: consul.TxnConflict) -> None:
        self.error = error
        self.txns = 0

    def kv_get(self, key: str, *, consistent: bool = False) -> consul.KVEntry | None:
        return None

    def txn(self, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        self.txns += 1
        raise self.error

    def catalog_register(self, body: Mapping[str, Any]) -> None:
        raise AssertionError("no sidecar write after a failed txn")

    def catalog_deregister(self, node: str) -> None:
        raise AssertionError("unexpected")

    def service_instances(self, service: str, *, node: str) -> list[dict[str, Any]]:
        return []

    def node_services(self, node: str) -> list[dict[str, Any]] | None:
        return None


def test_endless_cas_conflicts_give_up_after_a_bound() -> None:
    fake = ScriptedTxn(consul.TxnConflict([consul.TxnOpError(0, "index is stale")]))

    with pytest.raises(apply.Contention, match="changed 5 times"):
        run(fake, registration(), 3)
    assert fake.txns == apply.CAS_ATTEMPTS


def test_txn_rejected_for_another_reason_is_not_retried() -> None:
    fake = ScriptedTxn(consul.TxnConflict([consul.TxnOpError(2, "Missing node registration")]))

    with pytest.raises(apply.TxnRejected, match="op 2: Missing node registration"):
        run(fake, registration(), 3)
    assert fake.txns == 1


def test_txn_ops_stay_far_below_consul_limit() -> None:
    reg = registration()
    many = replace(reg, services=reg.services * MAX_PORTS)
    ops = [catalog.kv_cas_op(KEY, StateRecord(1, "running"), 0), *catalog.register_ops(many)]
    assert len(ops) == 2 + 2 * MAX_PORTS
    assert len(ops) <= 64  # even Consul < 1.14 accepts a registration of the most ports
