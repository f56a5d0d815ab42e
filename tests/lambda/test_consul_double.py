"""The Consul double behaves like Consul where the registrar and the ACL custom resource rely on it.

Each test drives the double over real HTTP, the way the Lambda code will, and checks what a client
of Consul would notice: status codes, bodies, indexes, atomicity, and the failures it injects.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest

from tests.consul_double import ConsulDouble

NODE = "ecs-task-0123456789abcdef"
ROOT = "root-token"


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def call(
    double: ConsulDouble,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTP request to the double, as a Consul client would send it."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["X-Consul-Token"] = token
    request = urllib.request.Request(
        double.url + path, data=data, method=method, headers=all_headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def registration(
    node: str = NODE, service_id: str = "web-0123", *, meta: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "Node": node,
        "Address": "10.1.2.3",
        "NodeMeta": {"external-node": "true", "external-probe": "false"},
        "Service": {
            "ID": service_id,
            "Service": "web",
            "Tags": ["v1"],
            "Port": 32768,
            "Meta": meta or {"task-id": "0123", "source": "ecs-anywhere-registrar"},
        },
        "Check": {
            "CheckID": f"{service_id}-tcp",
            "Name": "tcp",
            "ServiceID": service_id,
            "Definition": {"TCP": "10.1.2.3:32768", "Interval": "10s"},
        },
    }


def sidecar(service_id: str = "web-0123") -> dict[str, Any]:
    return {
        "ID": f"{service_id}-sidecar-proxy",
        "Service": "web-sidecar-proxy",
        "Kind": "connect-proxy",
        "Port": 21000,
        "Address": "10.1.2.3",
        "TaggedAddresses": {"lan": {"Address": "10.1.2.3", "Port": 21000}},
        "Proxy": {
            "DestinationServiceName": "web",
            "DestinationServiceID": service_id,
            "LocalServiceAddress": "10.1.2.3",
            "LocalServicePort": 32768,
            "Mode": "direct",
            "MeshGateway": {"Mode": "local"},
            "TransparentProxy": {"OutboundListenerPort": 15001},
            "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9001}],
            "Config": {"bind_address": "0.0.0.0", "bind_port": 20000},
            "Expose": {"Checks": True},
        },
    }


def kv_op(
    verb: str, key: str, value: bytes | None = None, index: int | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode()
    if index is not None:
        op["Index"] = index
    return {"KV": op}


def register(double: ConsulDouble, body: dict[str, Any] | None = None, **kwargs: Any) -> None:
    answer = call(double, "PUT", "/v1/catalog/register", body or registration(), **kwargs)
    assert (answer.status, answer.json()) == (200, True), answer.body


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    """Synchronise with a background thread (not an assertion on elapsed time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# --------------------------------------------------------------------------------------------
# Catalog register / deregister / reads


def test_registered_service_is_listed_with_consul_query_headers(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN an empty catalog WHEN a task's node, service and check are registered
    answer = call(consul_double, "PUT", "/v1/catalog/register", registration())
    assert (answer.status, answer.json()) == (200, True)

    # THEN the service lists with its meta, node meta and a query index equal to the raft index
    listed = call(consul_double, "GET", "/v1/catalog/service/web")
    assert listed.status == 200
    [entry] = listed.json()
    assert entry["Node"] == NODE
    assert entry["Address"] == "10.1.2.3"
    assert entry["ServiceID"] == "web-0123"
    assert entry["ServiceMeta"]["task-id"] == "0123"
    assert entry["NodeMeta"] == {"external-node": "true", "external-probe": "false"}
    assert entry["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert entry["CreateIndex"] == entry["ModifyIndex"] == consul_double.index == 1
    assert listed.headers["X-Consul-Index"] == "1"
    assert listed.headers["X-Consul-KnownLeader"] == "true"
    assert listed.headers["X-Consul-LastContact"] == "0"


def test_every_write_consumes_an_index_and_reads_do_not(consul_double: ConsulDouble) -> None:
    register(consul_double)
    call(consul_double, "GET", "/v1/catalog/nodes")
    call(consul_double, "GET", "/v1/health/service/web")
    assert consul_double.index == 1

    call(consul_double, "PUT", "/v1/kv/some/key", b"v")
    call(consul_double, "PUT", "/v1/catalog/deregister", {"Node": NODE})

    assert consul_double.index == 3


def test_an_empty_catalog_still_reports_index_one(consul_double: ConsulDouble) -> None:
    # X-Consul-Index 0 would make blocking clients spin: Consul sends 1 instead.
    assert call(consul_double, "GET", "/v1/catalog/services").headers["X-Consul-Index"] == "1"


def test_unchanged_reregistration_keeps_modify_index_but_uses_a_raft_index(
    consul_double: ConsulDouble,
) -> None:
    register(consul_double)
    register(consul_double)

    [entry] = consul_double.services(NODE)
    assert entry["ModifyIndex"] == 1
    assert consul_double.index == 2
    assert consul_double.nodes()[NODE]["ModifyIndex"] == 1


def test_service_id_defaults_to_service_name(consul_double: ConsulDouble) -> None:
    body = registration()
    del body["Service"]["ID"]
    del body["Check"]
    register(consul_double, body)

    assert [s["ServiceID"] for s in consul_double.services(NODE)] == ["web"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("Node"), "Must provide node"),
        (lambda b: b.pop("Address"), "Must provide address if SkipNodeUpdate is not set"),
        (
            lambda b: b.update(Service={"Service": "p", "Kind": "connect-proxy", "Port": 1}),
            "Proxy.DestinationServiceName must be non-empty for Connect proxy services",
        ),
        (
            lambda b: b.update(Service={"ID": "x", "Port": 1}),
            "Must provide service name (Service.Service) when service ID is provided",
        ),
    ],
)
def test_invalid_registration_is_a_500_with_consuls_message_and_writes_nothing(
    consul_double: ConsulDouble, change: Any, message: str
) -> None:
    # Consul returns these validation errors from its RPC layer: the HTTP status is 500, not 400.
    body = registration()
    change(body)

    answer = call(consul_double, "PUT", "/v1/catalog/register", body)

    assert answer.status == 500
    assert message in answer.text
    assert consul_double.nodes() == {}
    assert consul_double.index == 0


def test_undecodable_registration_is_a_400(consul_double: ConsulDouble) -> None:
    body = registration()
    body["Service"]["Port"] = "8080"

    answer = call(consul_double, "PUT", "/v1/catalog/register", body)

    assert answer.status == 400
    assert answer.text.startswith("Request decode failed: json: cannot unmarshal string")


def test_field_names_match_case_insensitively_like_go(consul_double: ConsulDouble) -> None:
    register(consul_double, {"node": NODE, "address": "10.0.0.9", "service": {"service": "api"}})

    assert consul_double.services(NODE)[0]["ServiceName"] == "api"


def test_unknown_node_reads_answer_null_not_404(consul_double: ConsulDouble) -> None:
    node = call(consul_double, "GET", "/v1/catalog/node/nope")
    node_services = call(consul_double, "GET", "/v1/catalog/node-services/nope")

    assert (node.status, node.json()) == (200, None)
    assert (node_services.status, node_services.json()) == (200, {"Node": None, "Services": None})


def test_node_endpoints_return_the_node_and_its_services(consul_double: ConsulDouble) -> None:
    register(consul_double)

    by_map = call(consul_double, "GET", f"/v1/catalog/node/{NODE}").json()
    by_list = call(consul_double, "GET", f"/v1/catalog/node-services/{NODE}").json()
    checks = call(consul_double, "GET", f"/v1/health/node/{NODE}").json()

    assert by_map["Node"]["Address"] == "10.1.2.3"
    assert by_map["Services"]["web-0123"]["Port"] == 32768
    assert [s["ID"] for s in by_list["Services"]] == ["web-0123"]
    assert [(c["CheckID"], c["Status"], c["Type"]) for c in checks] == [
        ("web-0123-tcp", "critical", "tcp")
    ]


def test_catalog_services_lists_names_with_their_tags(consul_double: ConsulDouble) -> None:
    register(consul_double)
    register(consul_double, registration(node="ecs-task-2", service_id="web-2"))

    assert call(consul_double, "GET", "/v1/catalog/services").json() == {"web": ["v1"]}


def test_health_service_returns_node_service_and_checks(consul_double: ConsulDouble) -> None:
    register(consul_double)

    [entry] = call(consul_double, "GET", "/v1/health/service/web").json()
    passing = call(consul_double, "GET", "/v1/health/service/web?passing").json()

    assert entry["Node"]["Node"] == NODE
    assert entry["Service"]["ID"] == "web-0123"
    assert [c["Definition"] for c in entry["Checks"]] == [
        {"TCP": "10.1.2.3:32768", "Interval": "10s"}
    ]
    assert passing == []  # catalog checks start critical until something (consul-esm) runs them


def test_health_checks_and_state_endpoints(consul_double: ConsulDouble) -> None:
    register(consul_double)

    by_service = call(consul_double, "GET", "/v1/health/checks/web").json()
    critical = call(consul_double, "GET", "/v1/health/state/critical").json()
    passing = call(consul_double, "GET", "/v1/health/state/passing").json()

    assert [c["CheckID"] for c in by_service] == ["web-0123-tcp"]
    assert [c["CheckID"] for c in critical] == ["web-0123-tcp"]
    assert passing == []


def test_deregistering_a_node_removes_its_services_and_checks(consul_double: ConsulDouble) -> None:
    register(consul_double)
    register(consul_double, registration(node="ecs-task-other", service_id="web-other"))

    answer = call(consul_double, "PUT", "/v1/catalog/deregister", {"Node": NODE})

    assert (answer.status, answer.json()) == (200, True)
    assert list(consul_double.nodes()) == ["ecs-task-other"]
    assert [s["ServiceID"] for s in consul_double.services()] == ["web-other"]
    assert [c["Node"] for c in consul_double.checks()] == ["ecs-task-other"]


def test_deregistering_a_service_removes_only_it_and_its_checks(
    consul_double: ConsulDouble,
) -> None:
    body = registration()
    body["Checks"] = [{"CheckID": "node-alive", "Name": "node"}]
    register(consul_double, body)

    call(consul_double, "PUT", "/v1/catalog/deregister", {"Node": NODE, "ServiceID": "web-0123"})

    assert consul_double.services(NODE) == []
    assert [c["CheckID"] for c in consul_double.checks(NODE)] == ["node-alive"]
    assert NODE in consul_double.nodes()


def test_deregistering_something_absent_still_answers_true(consul_double: ConsulDouble) -> None:
    answer = call(consul_double, "PUT", "/v1/catalog/deregister", {"Node": "never-registered"})

    assert (answer.status, answer.json()) == (200, True)


def test_node_names_match_case_insensitively(consul_double: ConsulDouble) -> None:
    register(consul_double)

    call(consul_double, "PUT", "/v1/catalog/deregister", {"Node": NODE.upper()})

    assert consul_double.nodes() == {}


def test_check_for_a_missing_service_fails_the_whole_registration(
    consul_double: ConsulDouble,
) -> None:
    body = registration()
    body["Check"]["ServiceID"] = "not-registered"

    answer = call(consul_double, "PUT", "/v1/catalog/register", body)

    assert answer.status == 500
    assert "Missing service registration" in answer.text
    assert consul_double.nodes() == {}  # the node and service of the same request rolled back
    assert consul_double.index == 1  # ... yet the raft entry was used, as in Consul


def test_serf_health_check_is_accepted_but_recorded_as_a_warning(
    consul_double: ConsulDouble,
) -> None:
    body = registration()
    body["Check"] = {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}

    register(consul_double, body)

    assert [c["CheckID"] for c in consul_double.checks(NODE)] == ["serfHealth"]
    assert len(consul_double.warnings) == 1
    assert "serfHealth" in consul_double.warnings[0]


def test_connect_endpoint_lists_the_sidecar_of_a_service(consul_double: ConsulDouble) -> None:
    register(consul_double)
    register(consul_double, {"Node": NODE, "Address": "10.1.2.3", "Service": sidecar()})

    [entry] = call(consul_double, "GET", "/v1/catalog/connect/web").json()

    assert entry["ServiceKind"] == "connect-proxy"
    assert entry["ServiceProxy"]["Upstreams"] == [{"DestinationName": "db", "LocalBindPort": 9001}]
    assert entry["ServiceProxy"]["Config"] == {"bind_address": "0.0.0.0", "bind_port": 20000}


# --------------------------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('ServiceMeta["task-id"] == "0123"', ["web-0123"]),
        ("ServiceMeta.source == ecs-anywhere-registrar", ["web-0123", "web-4567"]),
        ('ServiceMeta["task-id"] != "0123"', ["web-4567"]),
        ('NodeMeta["external-node"] == "true" and Node == "ecs-task-b"', ["web-4567"]),
        ('Node == "ecs-task-a" or ServiceID == "web-4567"', ["web-0123", "web-4567"]),
        ('not (Node == "ecs-task-a")', ["web-4567"]),
        ('"canary" in ServiceTags', ["web-4567"]),
        ('ServiceTags contains "canary"', ["web-4567"]),
        ('"canary" not in ServiceTags', ["web-0123"]),
        ('"owner" in ServiceMeta', ["web-4567"]),
        ("ServiceMeta.owner is empty", ["web-0123"]),
        ("ServiceMeta.owner is not empty", ["web-4567"]),
        ('ServiceKind == ""', ["web-0123", "web-4567"]),
        ("ServicePort == 4567", ["web-4567"]),
        ('Address matches "^10\\\\.1\\\\."', ["web-0123", "web-4567"]),
        ('ServiceID not matches "4567$"', ["web-0123"]),
        ('ServiceName == "web" and (Node == "nope" or ServicePort == 123)', ["web-0123"]),
    ],
)
def test_filter_expressions_select_like_bexpr(
    consul_double: ConsulDouble, expression: str, expected: list[str]
) -> None:
    a = registration(node="ecs-task-a", service_id="web-0123")
    a["Service"]["Port"] = 123
    b = registration(
        node="ecs-task-b",
        service_id="web-4567",
        meta={"task-id": "4567", "source": "ecs-anywhere-registrar", "owner": "team"},
    )
    b["Service"]["Port"] = 4567
    b["Service"]["Tags"] = ["v1", "canary"]
    register(consul_double, a)
    register(consul_double, b)

    query = urllib.parse.urlencode({"filter": expression})
    answer = call(consul_double, "GET", f"/v1/catalog/service/web?{query}")

    assert answer.status == 200, answer.text
    assert [e["ServiceID"] for e in answer.json()] == expected


def test_filter_applies_to_the_health_entry_shape(consul_double: ConsulDouble) -> None:
    register(consul_double)
    query = urllib.parse.urlencode({"filter": 'Service.Meta["task-id"] == "0123"'})
    checks = urllib.parse.urlencode({"filter": '"critical" in Checks.Status'})

    assert len(call(consul_double, "GET", f"/v1/health/service/web?{query}").json()) == 1
    assert len(call(consul_double, "GET", f"/v1/health/service/web?{checks}").json()) == 1


def test_filter_on_nodes_uses_the_node_fields(consul_double: ConsulDouble) -> None:
    register(consul_double)
    register(consul_double, {"Node": "plain", "Address": "10.9.9.9"})
    query = urllib.parse.urlencode({"filter": 'Meta["external-node"] == "true"'})

    nodes = call(consul_double, "GET", f"/v1/catalog/nodes?{query}").json()

    assert [n["Node"] for n in nodes] == [NODE]


@pytest.mark.parametrize(
    "expression",
    [
        'ServiceMeta["task-id"] = "x"',  # not an operator
        "ServiceName ==",  # no value
        '(ServiceName == "web"',  # unbalanced
        'NoSuchField == "x"',  # unknown selector
        'ServiceTags == "v1"',  # == on a list
        "ServicePort == eighty",  # not an int
        'ServiceName == "web" garbage',
    ],
)
def test_unsupported_filter_is_rejected_like_consul(
    consul_double: ConsulDouble, expression: str
) -> None:
    query = urllib.parse.urlencode({"filter": expression})

    answer = call(consul_double, "GET", f"/v1/catalog/service/web?{query}")

    # The filter is compiled inside the RPC, so Consul's HTTP layer answers 500.
    assert answer.status == 500
    assert answer.text.startswith("Failed to create boolean expression evaluator: ")


# --------------------------------------------------------------------------------------------
# Transactions


def test_txn_applies_all_ops_and_returns_their_results(consul_double: ConsulDouble) -> None:
    ops = [
        kv_op("cas", "ecs-registrar/c/tasks/0123", b'{"version": 1}', index=0),
        {"Node": {"Verb": "set", "Node": {"Node": NODE, "Address": "10.1.2.3"}}},
        {"Service": {"Verb": "set", "Node": NODE, "Service": {"ID": "web-0123", "Service": "web"}}},
        {"Check": {"Verb": "set", "Check": {"Node": NODE, "CheckID": "c", "Name": "c"}}},
    ]

    answer = call(consul_double, "PUT", "/v1/txn", ops)

    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["Errors"] is None
    assert [next(iter(r)) for r in body["Results"]] == ["KV", "Node", "Service", "Check"]
    assert body["Results"][0]["KV"]["Value"] is None  # set/cas results carry no value
    assert body["Results"][2]["Service"]["ModifyIndex"] == consul_double.index == 1
    assert consul_double.kv()["ecs-registrar/c/tasks/0123"] == (b'{"version": 1}', 1)


def test_failed_txn_applies_nothing_and_names_the_failing_op(consul_double: ConsulDouble) -> None:
    consul_double.seed_kv("record", b"old")
    ops = [
        {"Node": {"Verb": "set", "Node": {"Node": NODE, "Address": "10.1.2.3"}}},
        kv_op("cas", "record", b"new", index=0),  # stale: the key exists
        {"Service": {"Verb": "set", "Node": NODE, "Service": {"Service": "web"}}},
    ]

    answer = call(consul_double, "PUT", "/v1/txn", ops)

    assert answer.status == 409
    assert answer.json() == {
        "Results": None,
        "Errors": [{"OpIndex": 1, "What": 'failed to set key "record", index is stale'}],
    }
    assert consul_double.nodes() == {}
    assert consul_double.kv()["record"] == (b"old", 1)


def test_failed_txn_reports_every_failing_op(consul_double: ConsulDouble) -> None:
    ops = [
        kv_op("get", "missing"),
        kv_op("set", "fine", b"x"),
        {"Service": {"Verb": "set", "Node": "no-node", "Service": {"Service": "web"}}},
    ]

    answer = call(consul_double, "PUT", "/v1/txn", ops)

    assert answer.status == 409
    assert answer.json()["Errors"] == [
        {"OpIndex": 0, "What": 'key "missing" doesn\'t exist'},
        {"OpIndex": 2, "What": "Missing node registration"},
    ]
    assert consul_double.kv() == {}


def test_txn_allows_128_ops_and_rejects_129_with_413(consul_double: ConsulDouble) -> None:
    ops = [kv_op("set", f"k/{i}", b"v") for i in range(129)]

    too_many = call(consul_double, "PUT", "/v1/txn", ops)
    enough = call(consul_double, "PUT", "/v1/txn", ops[:128])

    assert too_many.status == 413
    assert too_many.text == "Transaction contains too many operations (129 > 128)"
    assert enough.status == 200
    assert len(consul_double.kv()) == 128


def test_txn_service_op_keeps_only_what_convert_ops_maps(consul_double: ConsulDouble) -> None:
    # GIVEN a sidecar with upstreams, proxy config and tagged addresses, written through a txn
    call(consul_double, "PUT", "/v1/catalog/register", {"Node": NODE, "Address": "10.1.2.3"})
    op = {"Service": {"Verb": "set", "Node": NODE, "Service": sidecar()}}

    answer = call(consul_double, "PUT", "/v1/txn", [op])

    # THEN only the fields agent/txn_endpoint.go copies survive
    assert answer.status == 200, answer.text
    [stored] = consul_double.services(NODE)
    assert stored["ServiceKind"] == "connect-proxy"
    assert stored["ServicePort"] == 21000
    assert stored["ServiceProxy"] == {
        "DestinationServiceName": "web",
        "DestinationServiceID": "web-0123",
        "LocalServiceAddress": "10.1.2.3",
        "LocalServicePort": 32768,
        "Mode": "",
        "MeshGateway": {"Mode": "local"},
        "Expose": {},
        "TransparentProxy": {"OutboundListenerPort": 15001},
    }
    assert "ServiceTaggedAddresses" not in stored


def test_txn_service_set_wipes_upstreams_written_by_catalog_register(
    consul_double: ConsulDouble,
) -> None:
    register(consul_double, {"Node": NODE, "Address": "10.1.2.3", "Service": sidecar()})
    assert consul_double.services(NODE)[0]["ServiceProxy"]["Upstreams"]

    op = {"Service": {"Verb": "set", "Node": NODE, "Service": sidecar()}}
    call(consul_double, "PUT", "/v1/txn", [op])

    assert "Upstreams" not in consul_double.services(NODE)[0]["ServiceProxy"]


EXPOSE = {
    "Paths": [{"ListenerPort": 20500, "Path": "/health", "LocalPathPort": 9090, "Protocol": "http"}]
}


def test_catalog_register_keeps_expose_paths_and_a_txn_service_set_drops_them(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN a sidecar registered with explicit expose paths (agent/structs ExposeConfig)
    body = sidecar()
    body["Proxy"]["Expose"] = EXPOSE
    register(consul_double, {"Node": NODE, "Address": "10.1.2.3", "Service": body})
    # THEN the catalog returns them as sent
    assert consul_double.services(NODE)[0]["ServiceProxy"]["Expose"] == EXPOSE
    # AND a txn Service op on the same ID drops them (api-docs/txn.mdx keeps no Expose)
    op = {"Service": {"Verb": "set", "Node": NODE, "Service": body}}
    call(consul_double, "PUT", "/v1/txn", [op])
    assert consul_double.services(NODE)[0]["ServiceProxy"]["Expose"] == {}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ({"ListenerPort": 20500, "Path": ""}, "expose.paths: empty path exposed"),
        ({"ListenerPort": 0, "Path": "/h"}, "expose.paths: invalid listener port: 0"),
        ({"ListenerPort": 20500, "Path": "/h", "Protocol": "grpc"}, "protocol 'grpc' not"),
        ({"ListenerPort": 20500, "Path": "/other"}, "duplicate listener ports exposed"),
    ],
)
def test_invalid_expose_paths_are_refused_like_consul_validates_them(
    consul_double: ConsulDouble, path: dict[str, Any], message: str
) -> None:
    body = sidecar()
    body["Proxy"]["Expose"] = {"Paths": [*EXPOSE["Paths"], path]}
    if "duplicate" not in message:
        body["Proxy"]["Expose"]["Paths"] = [path]
    answer = call(
        consul_double,
        "PUT",
        "/v1/catalog/register",
        {"Node": NODE, "Address": "10.1.2.3", "Service": body},
    )
    assert answer.status == 500
    assert message in answer.text
    assert consul_double.nodes() == {}


def test_txn_node_delete_removes_services_and_checks(consul_double: ConsulDouble) -> None:
    register(consul_double)

    answer = call(
        consul_double, "PUT", "/v1/txn", [{"Node": {"Verb": "delete", "Node": {"Node": NODE}}}]
    )

    assert answer.json() == {"Results": [], "Errors": None}
    assert (consul_double.nodes(), consul_double.services(), consul_double.checks()) == ({}, [], [])


def test_txn_service_delete_needs_the_service_name(consul_double: ConsulDouble) -> None:
    register(consul_double)
    only_id = {"Service": {"Verb": "delete", "Node": NODE, "Service": {"ID": "web-0123"}}}
    with_name = {
        "Service": {"Verb": "delete", "Node": NODE, "Service": {"ID": "web-0123", "Service": "web"}}
    }

    rejected = call(consul_double, "PUT", "/v1/txn", [only_id])
    accepted = call(consul_double, "PUT", "/v1/txn", [with_name])

    assert rejected.status == 409
    assert "Must provide service name (Service.Service)" in rejected.json()["Errors"][0]["What"]
    assert accepted.status == 200
    assert consul_double.services(NODE) == []


def test_txn_rejects_renaming_an_existing_service_id(consul_double: ConsulDouble) -> None:
    register(consul_double)
    op = {"Service": {"Verb": "set", "Node": NODE, "Service": {"ID": "web-0123", "Service": "api"}}}

    answer = call(consul_double, "PUT", "/v1/txn", [op])

    assert answer.status == 409
    assert "does not match existing service name" in answer.json()["Errors"][0]["What"]


CAS_TARGETS: dict[str, dict[str, Any]] = {
    "Node": {"Node": NODE, "Address": "10.9.9.9"},
    "Service": {"ID": "web-0123", "Service": "web", "Port": 1},
    "Check": {"Node": NODE, "CheckID": "web-0123-tcp", "Status": "passing"},
}


def cas_op(kind: str, index: int) -> dict[str, Any]:
    """A txn cas op on the registered node, service or check, expecting ModifyIndex ``index``."""
    op: dict[str, Any] = {"Verb": "cas", kind: {**CAS_TARGETS[kind], "ModifyIndex": index}}
    if kind == "Service":
        op["Node"] = NODE
    return {kind: op}


@pytest.mark.parametrize("kind", ["Node", "Service", "Check"])
def test_txn_catalog_cas_needs_the_current_modify_index(
    consul_double: ConsulDouble, kind: str
) -> None:
    register(consul_double)  # everything at ModifyIndex 1

    stale = call(consul_double, "PUT", "/v1/txn", [cas_op(kind, 7)])
    must_not_exist = call(consul_double, "PUT", "/v1/txn", [cas_op(kind, 0)])
    current = call(consul_double, "PUT", "/v1/txn", [cas_op(kind, 1)])

    assert stale.status == must_not_exist.status == 409
    assert "index is stale" in stale.json()["Errors"][0]["What"]
    assert current.status == 200, current.text
    assert current.json()["Results"][0][kind]["ModifyIndex"] == consul_double.index


def test_txn_delete_cas_of_a_node(consul_double: ConsulDouble) -> None:
    register(consul_double)

    def delete_cas(index: int) -> list[dict[str, Any]]:
        return [{"Node": {"Verb": "delete-cas", "Node": {"Node": NODE, "ModifyIndex": index}}}]

    stale = call(consul_double, "PUT", "/v1/txn", delete_cas(99))
    current = call(consul_double, "PUT", "/v1/txn", delete_cas(1))

    assert stale.status == 409
    assert current.status == 200
    assert consul_double.nodes() == {}


def test_txn_kv_checks(consul_double: ConsulDouble) -> None:
    index = consul_double.seed_kv("k", b"v")

    ok = call(
        consul_double,
        "PUT",
        "/v1/txn",
        [kv_op("check-index", "k", index=index), kv_op("check-not-exists", "other")],
    )
    bad = call(consul_double, "PUT", "/v1/txn", [kv_op("check-index", "k", index=index + 5)])

    assert ok.status == 200
    [result] = ok.json()["Results"]  # check-not-exists has no result
    assert result["KV"]["Key"] == "k"
    assert result["KV"]["Value"] is None
    assert result["KV"]["ModifyIndex"] == index
    assert bad.status == 409
    assert "failed index check" in bad.json()["Errors"][0]["What"]


def test_txn_kv_delete_cas_and_get(consul_double: ConsulDouble) -> None:
    index = consul_double.seed_kv("k", b"v")

    read = call(consul_double, "PUT", "/v1/txn", [kv_op("get", "k")])
    stale = call(consul_double, "PUT", "/v1/txn", [kv_op("delete-cas", "k", index=index + 1)])
    current = call(consul_double, "PUT", "/v1/txn", [kv_op("delete-cas", "k", index=index)])

    assert read.json()["Results"][0]["KV"]["Value"] == base64.b64encode(b"v").decode()
    assert stale.status == 409
    assert current.status == 200
    assert consul_double.kv() == {}


def test_txn_sessions_are_not_supported(consul_double: ConsulDouble) -> None:
    consul_double.seed_kv("k", b"v")
    lock = {"KV": {"Verb": "lock", "Key": "k", "Session": "abc"}}

    answer = call(consul_double, "PUT", "/v1/txn", [lock, kv_op("check-session", "k")])

    assert answer.status == 409
    assert answer.json()["Errors"][0] == {"OpIndex": 0, "What": 'invalid session "abc"'}


def test_read_only_txn_uses_no_raft_index(consul_double: ConsulDouble) -> None:
    consul_double.seed_kv("k", b"v")

    answer = call(consul_double, "PUT", "/v1/txn", [kv_op("get", "k"), kv_op("get-tree", "")])

    assert answer.status == 409  # get-tree needs a key, like kvsPreApply
    answer = call(consul_double, "PUT", "/v1/txn", [kv_op("get", "k")])
    assert answer.status == 200
    assert consul_double.index == 1


def test_malformed_txn_body_is_a_400(consul_double: ConsulDouble) -> None:
    not_a_list = call(consul_double, "PUT", "/v1/txn", {"KV": {}})
    bad_value = [{"KV": {"Verb": "set", "Key": "k", "Value": "***"}}]
    bad_base64 = call(consul_double, "PUT", "/v1/txn", bad_value)

    assert not_a_list.status == bad_base64.status == 400
    assert not_a_list.text.startswith("Failed to parse body: ")


def test_txn_ops_without_a_known_member_are_dropped(consul_double: ConsulDouble) -> None:
    ops = [{"Session": {"Verb": "delete"}}, kv_op("get", "missing")]

    answer = call(consul_double, "PUT", "/v1/txn", ops)

    assert answer.json()["Errors"][0]["OpIndex"] == 0  # counted without the dropped op


# --------------------------------------------------------------------------------------------
# KV


def test_kv_put_get_and_missing_key(consul_double: ConsulDouble) -> None:
    assert call(consul_double, "PUT", "/v1/kv/a/b?flags=42", b"hello").json() is True

    [entry] = call(consul_double, "GET", "/v1/kv/a/b").json()
    raw = call(consul_double, "GET", "/v1/kv/a/b?raw")
    missing = call(consul_double, "GET", "/v1/kv/a/none")

    assert entry == {
        "LockIndex": 0,
        "Key": "a/b",
        "Flags": 42,
        "Value": base64.b64encode(b"hello").decode(),
        "CreateIndex": 1,
        "ModifyIndex": 1,
    }
    assert (raw.status, raw.body) == (200, b"hello")
    assert (missing.status, missing.body) == (404, b"")
    assert missing.headers["X-Consul-Index"] == "1"


def test_kv_recurse_and_keys(consul_double: ConsulDouble) -> None:
    for key in ("app/a", "app/b/c", "other"):
        consul_double.seed_kv(key, b"x")

    recurse = call(consul_double, "GET", "/v1/kv/app?recurse").json()
    keys = call(consul_double, "GET", "/v1/kv/app/?keys&separator=/").json()
    none = call(consul_double, "GET", "/v1/kv/zzz?keys")

    assert [e["Key"] for e in recurse] == ["app/a", "app/b/c"]
    assert keys == ["app/a", "app/b/"]
    assert none.status == 404


def test_kv_cas_put(consul_double: ConsulDouble) -> None:
    create = call(consul_double, "PUT", "/v1/kv/k?cas=0", b"1").json()
    create_again = call(consul_double, "PUT", "/v1/kv/k?cas=0", b"2").json()
    index = consul_double.kv()["k"][1]
    stale = call(consul_double, "PUT", f"/v1/kv/k?cas={index + 1}", b"3").json()
    current = call(consul_double, "PUT", f"/v1/kv/k?cas={index}", b"4").json()

    assert (create, create_again, stale, current) == (True, False, False, True)
    assert consul_double.kv()["k"][0] == b"4"


def test_kv_delete_cas_and_recurse(consul_double: ConsulDouble) -> None:
    index = consul_double.seed_kv("t/a", b"x")
    consul_double.seed_kv("t/b", b"x")

    stale = call(consul_double, "DELETE", f"/v1/kv/t/a?cas={index + 9}").json()
    current = call(consul_double, "DELETE", f"/v1/kv/t/a?cas={index}").json()
    absent = call(consul_double, "DELETE", "/v1/kv/t/a?cas=5").json()
    tree = call(consul_double, "DELETE", "/v1/kv/t?recurse").json()

    assert (stale, current, absent, tree) == (False, True, True, True)
    assert consul_double.kv() == {}


def test_kv_conflicting_flags_are_a_400(consul_double: ConsulDouble) -> None:
    answer = call(consul_double, "DELETE", "/v1/kv/k?cas=1&recurse")

    assert answer.status == 400
    assert answer.text.startswith("Conflicting flags")


# --------------------------------------------------------------------------------------------
# ACL


def test_acl_rejects_missing_and_unknown_tokens(consul_double_acl: ConsulDouble) -> None:
    missing = call(consul_double_acl, "PUT", "/v1/catalog/register", registration())
    unknown = call(consul_double_acl, "PUT", "/v1/catalog/register", registration(), token="x")
    unknown_read = call(consul_double_acl, "GET", "/v1/catalog/services", token="x")

    assert missing.status == 403
    assert missing.text.startswith("Permission denied")
    assert (unknown.status, unknown.text) == (403, "ACL not found")
    assert (unknown_read.status, unknown_read.text) == (403, "ACL not found")
    assert consul_double_acl.nodes() == {}


@pytest.mark.parametrize(
    "headers",
    [{"X-Consul-Token": ROOT}, {"Authorization": f"Bearer {ROOT}"}],
)
def test_acl_accepts_a_known_token_in_either_header(
    consul_double_acl: ConsulDouble, headers: dict[str, str]
) -> None:
    answer = call(consul_double_acl, "PUT", "/v1/catalog/register", registration(), headers=headers)

    assert answer.status == 200


def test_anonymous_catalog_reads_are_filtered_not_refused(consul_double_acl: ConsulDouble) -> None:
    register(consul_double_acl, token=ROOT)

    answer = call(consul_double_acl, "GET", "/v1/catalog/service/web")

    assert (answer.status, answer.json()) == (200, [])
    assert answer.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"


def test_anonymous_txn_write_fails_per_op(consul_double_acl: ConsulDouble) -> None:
    answer = call(consul_double_acl, "PUT", "/v1/txn", [kv_op("set", "k", b"v")])

    assert answer.status == 409
    assert answer.json()["Errors"][0]["What"].startswith("Permission denied")


def test_token_self_answers_404_for_a_secret_that_is_no_token(
    consul_double_acl: ConsulDouble,
) -> None:
    # agent/acl_endpoint.go ACLTokenSelf: the secret is looked up, not resolved
    unknown = call(consul_double_acl, "GET", "/v1/acl/token/self", token="x")
    known = call(consul_double_acl, "GET", "/v1/acl/token/self", token=ROOT)

    assert (unknown.status, unknown.text) == (404, "Supplied token does not exist")
    assert known.status == 200


def test_a_leader_still_setting_up_acls_answers_like_consul(
    consul_double_acl: ConsulDouble,
) -> None:
    # GIVEN a leader that has not run initializeACLs yet (agent/consul/leader.go)
    consul_double_acl.acls_not_ready_for(0.5)
    leader = call(consul_double_acl, "GET", "/v1/status/leader")
    token_self = call(consul_double_acl, "GET", "/v1/acl/token/self", token=ROOT)
    policies = call(consul_double_acl, "GET", "/v1/acl/policies", token=ROOT)
    anonymous = call(consul_double_acl, "GET", "/v1/catalog/services")

    # THEN a leader is named, token/self cannot find the management token (404), and every
    # endpoint that resolves a token cannot resolve it (403 "ACL not found")
    assert leader.json() == "127.0.0.1:8300"
    assert (token_self.status, token_self.text) == (404, "Supplied token does not exist")
    assert (policies.status, policies.text) == (403, "ACL not found")
    assert (anonymous.status, anonymous.text) == (403, "ACL not found")
    # AND once the leader has created the tokens, both accept the management token
    time.sleep(0.6)
    assert call(consul_double_acl, "GET", "/v1/acl/token/self", token=ROOT).status == 200
    assert call(consul_double_acl, "GET", "/v1/acl/policies", token=ROOT).status == 200


def test_status_endpoints_need_no_token(consul_double_acl: ConsulDouble) -> None:
    assert call(consul_double_acl, "GET", "/v1/status/leader").json() == "127.0.0.1:8300"


def test_rotated_tokens_replace_the_initial_ones(consul_double_acl: ConsulDouble) -> None:
    consul_double_acl.set_tokens({"new-token"})

    assert call(consul_double_acl, "GET", "/v1/kv/x", token=ROOT).status == 403
    assert call(consul_double_acl, "GET", "/v1/kv/x", token="new-token").status == 404


def test_acl_endpoints_answer_401_when_acls_are_disabled(consul_double: ConsulDouble) -> None:
    answer = call(consul_double, "GET", "/v1/acl/policies")

    assert (answer.status, answer.text) == (401, "ACL support disabled")


def test_policy_lifecycle(consul_double_acl: ConsulDouble) -> None:
    body = {
        "Name": "registrar",
        "Description": "d",
        "Rules": 'service_prefix "" { policy = "write" }',
    }

    created = call(consul_double_acl, "PUT", "/v1/acl/policy", body, token=ROOT)
    duplicate = call(consul_double_acl, "PUT", "/v1/acl/policy", body, token=ROOT)
    policy = created.json()
    by_name = call(consul_double_acl, "GET", "/v1/acl/policy/name/registrar", token=ROOT)
    updated = call(
        consul_double_acl,
        "PUT",
        f"/v1/acl/policy/{policy['ID']}",
        {**body, "Description": "new"},
        token=ROOT,
    )
    listed = call(consul_double_acl, "GET", "/v1/acl/policies", token=ROOT).json()
    deleted = call(consul_double_acl, "DELETE", f"/v1/acl/policy/{policy['ID']}", token=ROOT)
    gone = call(consul_double_acl, "GET", f"/v1/acl/policy/{policy['ID']}", token=ROOT)
    gone_by_name = call(consul_double_acl, "GET", "/v1/acl/policy/name/registrar", token=ROOT)

    assert created.status == 200
    assert policy["Rules"] == body["Rules"]
    assert duplicate.status == 500
    assert "already exists" in duplicate.text
    assert by_name.json()["ID"] == policy["ID"]
    assert updated.json()["Description"] == "new"
    assert [(p["Name"], "Rules" in p) for p in listed] == [("registrar", False)]
    assert (deleted.status, deleted.json()) == (200, True)
    assert gone.status == gone_by_name.status == 404
    assert consul_double_acl.acl_policies() == {}


def test_token_with_caller_chosen_ids_can_then_authenticate(
    consul_double_acl: ConsulDouble,
) -> None:
    call(consul_double_acl, "PUT", "/v1/acl/policy", {"Name": "registrar"}, token=ROOT)
    accessor = "7f0ad8b4-6e2c-4c61-9d87-1d7c4f1d0a11"
    secret = "0b1e34a2-3f0b-45f1-8a55-6f7a8f0b2c33"
    body = {
        "AccessorID": accessor,
        "SecretID": secret,
        "Description": "registrar",
        "Policies": [{"Name": "registrar"}],
    }

    created = call(consul_double_acl, "PUT", "/v1/acl/token", body, token=ROOT)
    duplicate = call(consul_double_acl, "PUT", "/v1/acl/token", body, token=ROOT)
    read = call(consul_double_acl, "GET", f"/v1/acl/token/{accessor}", token=ROOT)
    used = call(consul_double_acl, "PUT", "/v1/kv/x", b"y", token=secret)
    listed = call(consul_double_acl, "GET", "/v1/acl/tokens", token=ROOT).json()
    deleted = call(consul_double_acl, "DELETE", f"/v1/acl/token/{accessor}", token=ROOT)
    after_delete = call(consul_double_acl, "PUT", "/v1/kv/x", b"y", token=secret)

    assert created.status == 200, created.text
    assert created.json()["Policies"][0]["Name"] == "registrar"
    assert duplicate.status == 500  # a plain RPC error in Consul, hence 500 rather than 400
    assert "AccessorID is already in use" in duplicate.text
    assert read.json()["SecretID"] == secret
    assert used.status == 200
    assert [t["AccessorID"] for t in listed] == [accessor]
    assert deleted.json() is True
    assert (after_delete.status, after_delete.text) == (403, "ACL not found")


def test_token_rejects_unknown_policy_and_non_uuid_ids(consul_double_acl: ConsulDouble) -> None:
    unknown = call(
        consul_double_acl, "PUT", "/v1/acl/token", {"Policies": [{"Name": "nope"}]}, token=ROOT
    )
    not_uuid = call(consul_double_acl, "PUT", "/v1/acl/token", {"SecretID": "abc"}, token=ROOT)

    assert unknown.status == not_uuid.status == 500
    assert 'No such ACL policy with name "nope"' in unknown.text
    assert "not a valid UUID" in not_uuid.text


def test_missing_token_read_is_404(consul_double_acl: ConsulDouble) -> None:
    path = "/v1/acl/token/7f0ad8b4-6e2c-4c61-9d87-1d7c4f1d0a11"

    assert call(consul_double_acl, "GET", path, token=ROOT).status == 404
    assert call(consul_double_acl, "DELETE", path, token=ROOT).json() is True


# --------------------------------------------------------------------------------------------
# Config entries


def test_config_entry_lifecycle_with_cas(consul_double: ConsulDouble) -> None:
    entry = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}

    created = call(consul_double, "PUT", "/v1/config?cas=0", entry)
    create_again = call(consul_double, "PUT", "/v1/config?cas=0", entry)
    read = call(consul_double, "GET", "/v1/config/service-defaults/web")
    listed = call(consul_double, "GET", "/v1/config/service-defaults").json()
    index = read.json()["ModifyIndex"]
    stale_delete = call(consul_double, "DELETE", f"/v1/config/service-defaults/web?cas={index + 1}")
    deleted = call(consul_double, "DELETE", f"/v1/config/service-defaults/web?cas={index}")
    missing = call(consul_double, "GET", "/v1/config/service-defaults/web")

    assert (created.json(), create_again.json()) == (True, False)
    assert read.json()["Protocol"] == "http"
    assert [e["Name"] for e in listed] == ["web"]
    assert (stale_delete.json(), deleted.json()) == (False, True)
    assert missing.status == 404
    assert missing.text == 'Config entry not found for "service-defaults" / "web"'


def test_config_entry_plain_delete_answers_an_empty_object(consul_double: ConsulDouble) -> None:
    consul_double.seed_config_entry({"Kind": "proxy-defaults", "Name": "global"})

    answer = call(consul_double, "DELETE", "/v1/config/proxy-defaults/global")

    assert answer.json() == {}
    assert consul_double.config_entries() == {}


def test_config_entry_validation(consul_double: ConsulDouble) -> None:
    unknown = call(consul_double, "PUT", "/v1/config", {"Kind": "nope", "Name": "x"})
    wrong_name = call(consul_double, "PUT", "/v1/config", {"Kind": "proxy-defaults", "Name": "x"})

    assert unknown.status == 400
    assert "invalid config entry kind: nope" in unknown.text
    assert wrong_name.status == 500
    assert 'only "global" is supported' in wrong_name.text


# --------------------------------------------------------------------------------------------
# Faults


def test_status_fault_answers_without_touching_state(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="status", path_prefix="/v1/catalog/register", status=500)

    failed = call(consul_double, "PUT", "/v1/catalog/register", registration())
    retried = call(consul_double, "PUT", "/v1/catalog/register", registration())

    assert failed.status == 500
    assert retried.status == 200
    assert consul_double.index == 1
    assert [r.status for r in consul_double.requests] == [500, 200]
    assert consul_double.writes() == 2


def test_429_fault_carries_retry_after(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="status", status=429, method="PUT")

    get = call(consul_double, "GET", "/v1/kv/x")
    put = call(consul_double, "PUT", "/v1/kv/x", b"v")

    assert get.status == 404  # the fault only matches PUTs
    assert put.status == 429
    assert put.headers["Retry-After"] == "1"
    assert consul_double.kv() == {}


def test_refuse_fault_drops_the_connection_without_a_response(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="refuse", path_prefix="/v1/txn")

    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        call(consul_double, "PUT", "/v1/txn", [kv_op("set", "k", b"v")])
    after = call(consul_double, "PUT", "/v1/txn", [kv_op("set", "k", b"v")])

    assert after.status == 200
    assert [r.status for r in consul_double.requests] == [0, 200]


def test_delay_fault_serves_normally_after_the_delay(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="delay", delay=0.2)

    started = time.monotonic()
    answer = call(consul_double, "PUT", "/v1/kv/k", b"v")

    assert answer.status == 200
    assert time.monotonic() - started >= 0.2
    assert consul_double.kv()["k"][0] == b"v"


def test_late_fault_drops_the_connection_and_applies_the_write_when_told(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN a registration whose client gets no answer
    consul_double.inject(kind="late", path_prefix="/v1/catalog/register")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        call(consul_double, "PUT", "/v1/catalog/register", registration())
    assert NODE not in consul_double.nodes()

    # WHEN the node is deleted meanwhile and the kept write then lands
    call(consul_double, "PUT", "/v1/catalog/deregister", {"Node": NODE})
    landed = consul_double.land_late()

    # THEN the late write recreates the node, after the delete; it was recorded once, unanswered
    assert landed == 1
    assert NODE in consul_double.nodes()
    assert [r.status for r in consul_double.requests] == [0, 200]
    assert consul_double.land_late() == 0


def test_wait_idle_returns_once_every_request_is_served(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="delay", delay=0.3)
    writer = threading.Thread(target=call, args=(consul_double, "PUT", "/v1/kv/k", b"v"))
    writer.start()
    while not consul_double.requests_in_service():
        time.sleep(0.01)

    consul_double.wait_idle()

    assert consul_double.kv()["k"][0] == b"v"
    writer.join()


def test_faults_apply_in_order_and_forever_until_cleared(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="status", status=503, times=2)
    consul_double.inject(kind="status", status=502, times=-1)

    statuses = [call(consul_double, "GET", "/v1/kv/x").status for _ in range(4)]
    consul_double.clear_faults()

    assert statuses == [503, 503, 502, 502]
    assert call(consul_double, "GET", "/v1/kv/x").status == 404


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode"},
        {"kind": "status", "times": 0},
        {"kind": "status", "status": 200},
        {"kind": "delay", "delay": -1},
    ],
)
def test_fails_when_a_fault_is_malformed(
    consul_double: ConsulDouble, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="must be"):
        consul_double.inject(**kwargs)


def test_latency_is_added_to_every_request(consul_double: ConsulDouble) -> None:
    consul_double.latency = 0.1

    started = time.monotonic()
    call(consul_double, "GET", "/v1/status/leader")

    assert time.monotonic() - started >= 0.1


def test_no_leader_fails_everything_but_status_and_stale_reads(consul_double: ConsulDouble) -> None:
    consul_double.has_leader = False

    leader = call(consul_double, "GET", "/v1/status/leader")
    write = call(consul_double, "PUT", "/v1/kv/k", b"v")
    stale = call(consul_double, "GET", "/v1/catalog/nodes?stale")

    assert (leader.status, leader.json()) == (200, "")
    assert (write.status, write.text) == (500, "No cluster leader")
    assert stale.status == 200
    assert stale.headers["X-Consul-KnownLeader"] == "false"


# --------------------------------------------------------------------------------------------
# Blocking queries


def test_blocking_query_returns_when_the_service_changes(consul_double: ConsulDouble) -> None:
    register(consul_double)
    index = consul_double.index
    answers: list[Answer] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            call(consul_double, "GET", f"/v1/health/service/web?index={index}&wait=5s")
        )
    )
    waiter.start()
    wait_until(lambda: consul_double.blocked_queries == 1)

    register(consul_double, registration(node="ecs-task-2", service_id="web-2"))
    waiter.join(timeout=5)

    assert not waiter.is_alive()
    assert int(answers[0].headers["X-Consul-Index"]) > index
    assert len(answers[0].json()) == 2


def test_blocking_query_returns_unchanged_after_the_wait(consul_double: ConsulDouble) -> None:
    register(consul_double)
    index = consul_double.index

    started = time.monotonic()
    answer = call(consul_double, "GET", f"/v1/catalog/service/web?index={index}&wait=200ms")

    assert time.monotonic() - started >= 0.2
    assert answer.headers["X-Consul-Index"] == str(index)
    assert len(answer.json()) == 1


def test_blocking_query_ignores_unrelated_writes(consul_double: ConsulDouble) -> None:
    register(consul_double)
    index = consul_double.index
    answers: list[Answer] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            call(consul_double, "GET", f"/v1/catalog/service/web?index={index}&wait=300ms")
        )
    )
    waiter.start()
    wait_until(lambda: consul_double.blocked_queries == 1)

    call(consul_double, "PUT", "/v1/kv/unrelated", b"v")
    waiter.join(timeout=5)

    assert answers[0].headers["X-Consul-Index"] == str(index)


def test_bad_wait_is_a_400(consul_double: ConsulDouble) -> None:
    answer = call(consul_double, "GET", "/v1/catalog/nodes?index=1&wait=soon")

    assert (answer.status, answer.text) == (400, "Invalid wait time")


# --------------------------------------------------------------------------------------------
# Routing, recording, inspection


def test_unknown_endpoint_is_404_and_wrong_method_is_405(consul_double: ConsulDouble) -> None:
    unknown = call(consul_double, "GET", "/v1/nope")
    wrong = call(consul_double, "GET", "/v1/txn")

    assert unknown.status == 404
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "OPTIONS,PUT"


def test_requests_are_recorded_and_counted(consul_double: ConsulDouble) -> None:
    register(consul_double)
    call(consul_double, "GET", "/v1/catalog/service/web?stale")
    call(consul_double, "GET", "/v1/catalog/nodes")

    first = consul_double.requests[0]
    assert (first.method, first.path, first.status) == ("PUT", "/v1/catalog/register", 200)
    assert json.loads(first.body)["Node"] == NODE
    assert consul_double.requests[1].query == {"stale": [""]}
    assert consul_double.count(method="GET") == 2
    assert consul_double.count(path_prefix="/v1/catalog/service/") == 1
    assert consul_double.writes() == 1

    consul_double.reset_requests()
    assert consul_double.requests == []


def test_inspection_returns_copies(consul_double: ConsulDouble) -> None:
    register(consul_double)

    consul_double.services(NODE)[0]["ServiceMeta"]["task-id"] = "changed"
    consul_double.nodes()[NODE]["Address"] = "changed"

    assert consul_double.services(NODE)[0]["ServiceMeta"]["task-id"] == "0123"
    assert consul_double.nodes()[NODE]["Address"] == "10.1.2.3"


def test_seeding_rejects_what_consul_would_reject(consul_double: ConsulDouble) -> None:
    with pytest.raises(ValueError, match="Must provide node"):
        consul_double.seed_register({"Address": "10.0.0.1"})


# --------------------------------------------------------------------------------------------
# Concurrency, and the less common request shapes


def test_concurrent_cas_creates_let_exactly_one_writer_win(consul_double: ConsulDouble) -> None:
    # GIVEN eight Lambda invocations racing to create the same state record
    ops = [kv_op("cas", "ecs-registrar/c/tasks/0123", b"{}", index=0)]
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        statuses.append(call(consul_double, "PUT", "/v1/txn", ops).status)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # THEN one wins and the others see a 409 conflict
    assert sorted(statuses) == [200] + [409] * 7
    assert consul_double.kv()["ecs-registrar/c/tasks/0123"][1] == 1


def test_concurrent_registrations_are_all_applied(consul_double: ConsulDouble) -> None:
    statuses: list[int] = []

    def write(i: int) -> None:
        body = registration(node=f"ecs-task-{i}", service_id=f"web-{i}")
        statuses.append(call(consul_double, "PUT", "/v1/catalog/register", body).status)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert statuses == [200] * 16
    assert len(consul_double.services()) == 16
    assert consul_double.index == 16


def test_chunked_request_bodies_are_read(consul_double: ConsulDouble) -> None:
    connection = http.client.HTTPConnection(consul_double.url.removeprefix("http://"), timeout=5)
    body = json.dumps(registration()).encode()

    connection.request("PUT", "/v1/catalog/register", body=iter([body[:10], body[10:]]))
    answer = connection.getresponse()
    status, text = answer.status, answer.read()
    connection.close()

    assert (status, text) == (200, b"true")
    assert NODE in consul_double.nodes()


def test_token_query_parameter_is_accepted(consul_double_acl: ConsulDouble) -> None:
    assert call(consul_double_acl, "GET", f"/v1/kv/x?token={ROOT}").status == 404


def test_anonymous_kv_read_is_refused(consul_double_acl: ConsulDouble) -> None:
    answer = call(consul_double_acl, "GET", "/v1/kv/x")

    assert answer.status == 403
    assert answer.text.startswith("Permission denied")


def test_other_datacenters_are_unreachable(consul_double: ConsulDouble) -> None:
    answer = call(consul_double, "GET", "/v1/catalog/nodes?dc=dc9")

    assert (answer.status, answer.text) == (500, "No path to datacenter")


def test_node_meta_and_tag_query_parameters(consul_double: ConsulDouble) -> None:
    register(consul_double)
    other = registration(node="plain-node", service_id="web-plain")
    other["NodeMeta"] = {}
    other["Service"]["Tags"] = ["v2"]
    register(consul_double, other)

    by_meta = call(consul_double, "GET", "/v1/catalog/service/web?node-meta=external-node:true")
    by_tag = call(consul_double, "GET", "/v1/catalog/service/web?tag=v2")

    assert [e["Node"] for e in by_meta.json()] == [NODE]
    assert [e["Node"] for e in by_tag.json()] == ["plain-node"]


def test_skip_node_update_keeps_the_node_as_registered(consul_double: ConsulDouble) -> None:
    register(consul_double)
    body = {"Node": NODE, "SkipNodeUpdate": True, "Service": {"ID": "x", "Service": "x"}}

    register(consul_double, body)

    assert consul_double.nodes()[NODE]["Address"] == "10.1.2.3"
    assert sorted(s["ServiceID"] for s in consul_double.services(NODE)) == ["web-0123", "x"]


def test_token_update_keeps_its_secret_and_refuses_to_change_it(
    consul_double_acl: ConsulDouble,
) -> None:
    created = call(consul_double_acl, "PUT", "/v1/acl/token", {"Description": "a"}, token=ROOT)
    token = created.json()
    path = f"/v1/acl/token/{token['AccessorID']}"

    updated = call(consul_double_acl, "PUT", path, {"Description": "b"}, token=ROOT)
    secret_change = call(
        consul_double_acl,
        "PUT",
        path,
        {"SecretID": "0b1e34a2-3f0b-45f1-8a55-6f7a8f0b2c33"},
        token=ROOT,
    )
    self_view = call(consul_double_acl, "GET", "/v1/acl/token/self", token=token["SecretID"])

    assert updated.json()["SecretID"] == token["SecretID"]
    assert updated.json()["Description"] == "b"
    assert secret_change.status == 500
    assert "Changing a token's SecretID is not permitted" in secret_change.text
    assert self_view.json()["AccessorID"] == token["AccessorID"]


def test_a_token_cannot_delete_itself(consul_double_acl: ConsulDouble) -> None:
    token = call(consul_double_acl, "PUT", "/v1/acl/token", {}, token=ROOT).json()

    answer = call(
        consul_double_acl,
        "DELETE",
        f"/v1/acl/token/{token['AccessorID']}",
        token=token["SecretID"],
    )

    assert answer.status == 500
    assert "Deletion of the request's authorization token is not permitted" in answer.text


def test_blocking_kv_read_wakes_when_the_key_changes(consul_double: ConsulDouble) -> None:
    index = consul_double.seed_kv("watched", b"1")
    answers: list[Answer] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            call(consul_double, "GET", f"/v1/kv/watched?index={index}&wait=5s")
        )
    )
    waiter.start()
    wait_until(lambda: consul_double.blocked_queries == 1)

    call(consul_double, "PUT", "/v1/kv/watched", b"2")
    waiter.join(timeout=5)

    assert base64.b64decode(answers[0].json()[0]["Value"]) == b"2"


def test_stop_releases_blocked_queries(consul_double: ConsulDouble) -> None:
    answers: list[Answer] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            call(consul_double, "GET", "/v1/catalog/nodes?index=1&wait=60s")
        )
    )
    waiter.start()
    wait_until(lambda: consul_double.blocked_queries == 1)

    consul_double.stop()
    waiter.join(timeout=5)

    assert not waiter.is_alive()
