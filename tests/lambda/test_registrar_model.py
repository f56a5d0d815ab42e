"""Parsing of events, labels and state records: good input typed, bad input named."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from model import (
    ContainerDefinition,
    InvalidTaskDefinition,
    MalformedEvent,
    PortMapping,
    StateRecord,
    parse_event,
    parse_labels,
    task_arn_hint,
)
from registrar_fixtures import INSTANCE_ARN, load_event, task_definition, task_event


def test_parses_a_running_bridge_task_event() -> None:
    # GIVEN the EventBridge event of a RUNNING bridge-mode task on ECS Anywhere
    body = json.dumps(load_event("task_running_bridge.json"))

    # WHEN it is parsed
    event = parse_event(body)

    # THEN the fields the registrar acts on are typed
    assert event.task_id == "0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b"
    assert event.cluster_arn.endswith(":cluster/mesh")
    assert event.container_instance_arn == INSTANCE_ARN
    assert (event.launch_type, event.desired_status, event.last_status) == (
        "EXTERNAL",
        "RUNNING",
        "RUNNING",
    )
    assert event.version == 3
    assert event.group == "service:web"
    assert event.event_time == datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
    web = event.container("web")
    assert web is not None
    assert web.host_port(8080) == 32768
    envoy = event.container("envoy")
    assert envoy is not None
    assert envoy.host_port(20000) == 32769
    init = event.container("envoy-init")
    assert init is not None
    assert init.network_bindings == ()


def test_parses_stopped_and_pending_events_without_bindings() -> None:
    stopped = parse_event(json.dumps(load_event("task_stopped.json")))
    pending = parse_event(json.dumps(load_event("task_pending.json")))

    assert (stopped.last_status, stopped.desired_status, stopped.version) == (
        "STOPPED",
        "STOPPED",
        5,
    )
    assert stopped.stopped_reason is not None
    assert all(c.network_bindings == () for c in stopped.containers)
    assert (pending.last_status, pending.version) == ("PENDING", 1)


def _binding(doc: dict[str, Any]) -> dict[str, Any]:
    binding: dict[str, Any] = doc["detail"]["containers"][0]["networkBindings"][0]
    return binding


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-version": lambda doc: doc["detail"].pop("version"),
    "string-version": lambda doc: doc["detail"].update(version="3"),
    "bool-version": lambda doc: doc["detail"].update(version=True),
    "no-task-arn": lambda doc: doc["detail"].pop("taskArn"),
    "bad-task-arn": lambda doc: doc["detail"].update(
        taskArn="arn:aws:ecs:us-east-1:123456789012:task/"
    ),
    "bad-cluster-arn": lambda doc: doc["detail"].update(clusterArn=42),
    "containers-object": lambda doc: doc["detail"].update(containers={"name": "web"}),
    "binding-port": lambda doc: _binding(doc).update(hostPort=70000),
    "binding-protocol": lambda doc: _binding(doc).update(protocol="sctp"),
    "detail-list": lambda doc: doc.update(detail=[]),
    "bad-time": lambda doc: doc.update(time="yesterday"),
    "epoch-time": lambda doc: doc.update(time=0),
    "no-status": lambda doc: doc["detail"].update(lastStatus=""),
}


def _mutated(mutate: str) -> str:
    doc = task_event()
    MUTATIONS[mutate](doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "body is not JSON"),
        ("[1, 2]", "event must be a JSON object"),
        ('{"source": "aws.ec2"}', "event.source must be 'aws.ecs', got 'aws.ec2'"),
        (
            json.dumps(load_event("container_instance_state_change.json")),
            "detail-type must be 'ECS Task State Change', got 'ECS Container Instance",
        ),
        (_mutated("no-version"), r"detail.version is missing"),
        (_mutated("string-version"), r"detail.version must be an integer .* got '3'"),
        (_mutated("bool-version"), r"detail.version must be an integer .* got True"),
        (_mutated("no-task-arn"), r"detail.taskArn is missing"),
        (_mutated("bad-task-arn"), r"detail.taskArn: not an ECS task ARN"),
        (_mutated("bad-cluster-arn"), r"detail.clusterArn must be a non-empty string, got 42"),
        (_mutated("containers-object"), r"detail.containers must be a list, got dict"),
        (_mutated("detail-list"), r"event.detail must be a JSON object, got list"),
        (_mutated("bad-time"), r"event.time must be an ISO 8601 timestamp, got 'yesterday'"),
        (_mutated("epoch-time"), r"event.time must be an ISO 8601 timestamp, got 0"),
        (_mutated("no-status"), r"detail.lastStatus must be a non-empty string, got ''"),
    ],
)
def test_fails_when_the_body_is_malformed(body: str, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        parse_event(body)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            "binding-port",
            r"detail.containers\[0\].networkBindings\[0\].hostPort must be an integer in "
            r"1..65535, got 70000",
        ),
        ("binding-protocol", r"protocol must be 'tcp' or 'udp', got 'sctp'"),
    ],
)
def test_fails_when_a_binding_the_registrar_reads_is_malformed(mutate: str, message: str) -> None:
    # GIVEN an event whose app container (the one the registrar reads) has a malformed binding
    event = parse_event(_mutated(mutate))
    web = event.container("web")
    assert web is not None

    # WHEN the registrar reads the container's bindings, THEN the error names the field
    with pytest.raises(MalformedEvent, match=message):
        web.host_port(8080)


def test_bindings_of_containers_the_registrar_does_not_read_are_never_validated() -> None:
    # GIVEN a container the registrar never reads, with bindings it could not use
    doc = task_event()
    doc["detail"]["containers"][2]["networkBindings"] = [{"hostPort": "x", "protocol": "sctp"}]
    doc["detail"]["containers"].append("not a container")

    # WHEN the event is parsed and its app and proxy containers read, THEN nothing fails
    event = parse_event(json.dumps(doc))
    assert [c.name for c in event.containers] == ["web", "envoy", "envoy-init"]
    envoy = event.container("envoy")
    assert envoy is not None
    assert envoy.host_port(20000) == 32769


def test_port_range_bindings_are_skipped() -> None:
    # GIVEN a task whose app container also publishes a port range and whose log router
    # publishes only a range (NetworkBinding: containerPort/hostPort optional, ranges instead)
    event = parse_event(json.dumps(load_event("task_running_port_range.json")))

    # THEN the single-port bindings are read and the ranges skipped
    web, router = event.container("web"), event.container("log-router")
    assert web is not None
    assert router is not None
    assert web.host_port(8080) == 32768
    assert [b.container_port for b in web.network_bindings] == [8080, 8080]
    assert router.network_bindings == ()


def test_the_binding_of_the_hosts_address_family_wins() -> None:
    # GIVEN Docker published the app's port on :: and 0.0.0.0 with different host ports
    event = parse_event(json.dumps(load_event("task_running_dual_stack.json")))
    web = event.container("web")
    assert web is not None

    # THEN an IPv4 host advertises the IPv4 binding, an IPv6 host the IPv6 one
    assert web.host_port(8080) == 32768
    assert web.host_port(8080, ipv6=True) == 32770


def test_host_mode_events_carry_no_bindings() -> None:
    # Current agents send none for host (and awsvpc) tasks: amazon-ecs-agent PR #3479
    event = parse_event(json.dumps(load_event("task_running_host.json")))
    assert all(c.network_bindings == () for c in event.containers)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("malformed_missing_version.json", "detail.version is missing"),
        ("malformed_wrong_types.json", "detail.containers must be a list"),
    ],
)
def test_fails_on_the_malformed_fixtures(name: str, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        parse_event(json.dumps(load_event(name)))


def test_task_arn_hint_names_the_task_of_a_bad_body() -> None:
    assert task_arn_hint(_mutated("no-version")).endswith("0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b")
    assert task_arn_hint("{oops") is None


# --------------------------------------------------------------------------------------------
# Labels


def _app(labels: dict[str, str], ports: tuple[int, ...] = (8080,)) -> ContainerDefinition:
    return ContainerDefinition(
        name="web-app",
        labels={"consul-mesh.enabled": "true", **labels},
        port_mappings=tuple(PortMapping(p, None, "tcp") for p in ports),
    )


def test_labels_default_to_the_documented_values() -> None:
    labels = parse_labels(_app({}))

    assert labels.service == "web-app"
    assert labels.ports is None
    assert labels.tags == ()
    assert labels.upstreams == ()
    assert labels.health_check_path is None
    assert (labels.proxy_container, labels.proxy_port) == ("envoy", 20000)


def test_labels_of_the_web_task_definition() -> None:
    web = task_definition("web").container("web")
    assert web is not None
    labels = parse_labels(web)

    assert labels.service == "web"
    assert labels.tags == ("v1", "blue")
    assert [(u.destination_name, u.local_bind_port) for u in labels.upstreams] == [
        ("backend", 9001),
        ("db", 9002),
    ]
    assert labels.health_check_path == "/healthz"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"consul-mesh.service": "Web_App"}, r"service name 'Web_App' \(from consul-mesh.service"),
        ({"consul-mesh.ports": "80,http"}, r"label consul-mesh.ports: 'http' is not a port"),
        ({"consul-mesh.ports": "80,80"}, r"label consul-mesh.ports: '80,80' repeats a port"),
        ({"consul-mesh.ports": " , "}, r"label consul-mesh.ports is empty"),
        ({"consul-mesh.upstreams": "backend"}, r"'backend' is not 'service:localport'"),
        ({"consul-mesh.upstreams": "a:9001,b:9001"}, r"local ports must be unique"),
        ({"consul-mesh.upstreams": "a:0"}, r"'0' is not a port in 1..65535"),
        ({"consul-mesh.health-check-path": "healthz"}, r"must be a URL path starting with '/'"),
        ({"consul-mesh.proxy-port": "99999"}, r"label consul-mesh.proxy-port: '99999'"),
    ],
)
def test_fails_when_a_label_is_invalid(labels: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidTaskDefinition, match=message):
        parse_labels(_app(labels))


def test_container_name_that_is_no_dns_label_needs_the_service_label() -> None:
    container = ContainerDefinition("Web_App", {"consul-mesh.enabled": "true"}, ())
    with pytest.raises(InvalidTaskDefinition, match=r"from container name.*set consul-mesh"):
        parse_labels(container)


@pytest.mark.parametrize(("value", "opted"), [("true", True), ("TRUE", True), ("yes", False)])
def test_only_true_opts_in(value: str, opted: bool) -> None:
    container = ContainerDefinition("web", {"consul-mesh.enabled": value}, ())
    assert container.opted_in is opted


# --------------------------------------------------------------------------------------------
# State record


def test_state_record_round_trips() -> None:
    record = StateRecord(7, "running", "abc", {"Node": "n"}, "2025-03-14T09:26:53+00:00")
    assert StateRecord.decode(record.encode()) == record


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"version": "1", "status": "running"}', "version must be an integer"),
        (b'{"version": 1, "status": "paused"}', "status must be running|stopped, got 'paused'"),
    ],
)
def test_fails_when_a_state_record_is_unreadable(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StateRecord.decode(data)
