"""The registrar end to end: SQS batches into handler.handler, against the Consul double.

AWS lookups come from the in-memory fakes of registrar_fixtures (the moto-backed wiring has
its own tests in test_registrar_aws.py); Consul is the real HTTP double on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import aws
import handler
import kv_layout
import pytest
import registrar
from ecs_fake import FakeEcs, throttled
from model import TaskDefinition
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    INSTANCE_ARN,
    OTHER_CLUSTER_ARN,
    PLAIN_TD,
    VPC_TD,
    WEB_TD,
    FakeHosts,
    FakeTaskDefinitions,
    LambdaContext,
    failed_ids,
    fake_runtime,
    load_event,
    sqs_event,
    task_event,
)

from tests.consul_double import ConsulDouble

TASK = "0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b"
NODE = f"ecs-task-{TASK}"
KEY = kv_layout.task_key(CLUSTER_ARN, TASK)
TASK_ARN = f"arn:aws:ecs:us-east-1:123456789012:task/mesh/{TASK}"
META = {
    "task-arn": TASK_ARN,
    "task-id": TASK,
    "cluster-arn": CLUSTER_ARN,
    "container-instance-arn": INSTANCE_ARN,
    "source": "ecs-anywhere-registrar",
}


@pytest.fixture
def hosts() -> FakeHosts:
    return FakeHosts()


@pytest.fixture
def consul(consul_double: ConsulDouble, hosts: FakeHosts) -> Iterator[ConsulDouble]:
    """The double, with the registrar's runtime pointed at it."""
    registrar.set_runtime(fake_runtime(consul_double.url, hosts=hosts))
    yield consul_double
    registrar.set_runtime(None)


def run(*bodies: str | dict[str, Any], prefix: str = "msg", **context: Any) -> list[str]:
    """Invoke the handler with one SQS batch; the ids of the failed messages."""
    return failed_ids(handler.handler(sqs_event(bodies, prefix), LambdaContext(**context)))


def by_id(double: ConsulDouble, node: str = NODE) -> dict[str, dict[str, Any]]:
    return {s["ServiceID"]: s for s in double.services(node=node)}


def record(double: ConsulDouble, key: str = KEY) -> dict[str, Any] | None:
    entry = double.kv().get(key)
    return None if entry is None else json.loads(entry[0])


# --------------------------------------------------------------------------------------------
# What lands in Consul


def test_running_bridge_task_lands_in_the_catalog_with_every_contract_field(
    consul: ConsulDouble,
) -> None:
    # GIVEN a RUNNING event of an opted-in bridge-mode task
    # WHEN the registrar handles it
    assert run(task_event()) == []

    # THEN its node is synthetic, on the host's address, with consul-esm's node meta
    node = consul.nodes()[NODE]
    assert node["Address"] == HOST_IP
    assert node["Meta"] == {
        "external-node": "true",
        "external-probe": "false",
        "source": "ecs-anywhere-registrar",
        "cluster-arn": CLUSTER_ARN,
    }
    # AND the service instance has the host port, tags and ownership meta
    services = by_id(consul)
    svc = services[f"web-{TASK}"]
    assert (svc["ServiceName"], svc["ServiceKind"]) == ("web", "")
    assert (svc["ServiceAddress"], svc["ServicePort"]) == (HOST_IP, 32768)
    assert svc["ServiceTags"] == ["v1", "blue"]
    assert svc["ServiceMeta"] == META
    # AND the sidecar keeps its upstreams and bind config (written outside the txn)
    sidecar = services[f"web-{TASK}-sidecar-proxy"]
    assert (sidecar["ServiceName"], sidecar["ServiceKind"]) == (
        "web-sidecar-proxy",
        "connect-proxy",
    )
    assert (sidecar["ServiceAddress"], sidecar["ServicePort"]) == (HOST_IP, 32769)
    assert sidecar["ServiceMeta"] == META
    proxy = sidecar["ServiceProxy"]
    assert proxy["DestinationServiceName"] == "web"
    assert proxy["DestinationServiceID"] == f"web-{TASK}"
    assert (proxy["LocalServiceAddress"], proxy["LocalServicePort"]) == (HOST_IP, 32768)
    assert proxy["Config"] == {"bind_address": "0.0.0.0", "bind_port": 20000}
    assert [
        (u["DestinationName"], u["LocalBindPort"], u["LocalBindAddress"])
        for u in proxy["Upstreams"]
    ] == [("backend", 9001, "0.0.0.0"), ("db", 9002, "0.0.0.0")]
    assert len(services) == 2
    # AND every check carries a Definition consul-esm can run; none is serfHealth
    checks = {c["CheckID"]: c for c in consul.checks(node=NODE)}
    assert checks[f"service:web-{TASK}"]["Definition"]["HTTP"] == f"http://{HOST_IP}:32768/healthz"
    assert checks[f"service:web-{TASK}-sidecar-proxy"]["Definition"]["TCP"] == f"{HOST_IP}:32769"
    assert all(c["Definition"].get("Interval") == "10s" for c in checks.values())
    assert all(c["CheckID"] != "serfHealth" for c in checks.values())
    assert consul.warnings == []
    # AND the state record holds the applied version
    assert record(consul) is not None
    assert (record(consul) or {})["version"] == 3


def test_running_host_task_registers_each_port_and_one_sidecar(consul: ConsulDouble) -> None:
    task = "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"

    assert run(load_event("task_running_host.json")) == []

    services = by_id(consul, f"ecs-task-{task}")
    assert sorted(services) == [
        f"api-{task}-9090",
        f"api-{task}-9090-sidecar-proxy",
        f"api-{task}-9091",
    ]
    assert services[f"api-{task}-9091"]["ServicePort"] == 9091
    proxy = services[f"api-{task}-9090-sidecar-proxy"]["ServiceProxy"]
    assert (proxy["LocalServiceAddress"], proxy["LocalServicePort"]) == ("127.0.0.1", 9090)
    assert proxy["Upstreams"][0]["LocalBindAddress"] == "127.0.0.1"
    assert services[f"api-{task}-9090-sidecar-proxy"]["ServicePort"] == 21000


def test_port_range_bindings_do_not_make_the_event_malformed(consul: ConsulDouble) -> None:
    # GIVEN a RUNNING task whose app also publishes a port range and whose log router publishes
    # only a range (NetworkBinding: containerPortRange/hostPortRange, no single ports)
    # WHEN the registrar handles it
    assert run(load_event("task_running_port_range.json")) == []

    # THEN it is registered from the single-port bindings, as without the ranges
    services = by_id(consul)
    assert services[f"web-{TASK}"]["ServicePort"] == 32768
    assert services[f"web-{TASK}-sidecar-proxy"]["ServicePort"] == 32769


@pytest.mark.parametrize(
    ("address", "app_port", "envoy_port"),
    [("10.20.30.40", 32768, 32769), ("fd00:10:20::40", 32770, 32771)],
    ids=["ipv4-host", "ipv6-host"],
)
def test_the_port_bound_on_the_hosts_address_family_is_advertised(
    consul: ConsulDouble, hosts: FakeHosts, address: str, app_port: int, envoy_port: int
) -> None:
    # GIVEN Docker published the task's ports on :: and 0.0.0.0 with different host ports
    # (the IPv6 binding first), on a host reached over IPv4 or IPv6
    hosts.addresses[INSTANCE_ARN] = address

    assert run(load_event("task_running_dual_stack.json")) == []

    # THEN Consul advertises the ports bound on the family of the host's address
    services = by_id(consul)
    assert services[f"web-{TASK}"]["ServicePort"] == app_port
    sidecar = services[f"web-{TASK}-sidecar-proxy"]
    assert sidecar["ServicePort"] == envoy_port
    assert sidecar["ServiceProxy"]["LocalServicePort"] == app_port


def test_a_host_whose_ssm_address_is_docker0_is_never_registered(
    consul: ConsulDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN SSM reports the host's docker0 address (aws/amazon-ssm-agent#553)
    ecs = FakeEcs()
    ecs.instances[INSTANCE_ARN].address = "172.17.0.1"
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: ecs, ttl_s=300)
    registrar.set_runtime(fake_runtime(consul.url, hosts=hosts))
    capsys.readouterr()

    # WHEN a RUNNING event of a task on it is handled
    failed = run(ecs.put_task(TASK))

    # THEN nothing is registered, and the message is not retried (redelivery cannot fix it)
    assert failed == []
    assert consul.nodes() == {}
    assert consul.writes() == 0
    # AND one error line names the container instance and the attribute to set; a metric counts it
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = [line for line in lines if line.get("level") == "ERROR"]
    assert len(errors) == 1
    assert INSTANCE_ARN in errors[0]["reason"]
    assert "consul-mesh.address" in errors[0]["reason"]
    (emf,) = [line for line in lines if "_aws" in line]
    assert emf["HostAddressRefused"] == 1


@pytest.mark.parametrize(
    ("template", "overrides"),
    [
        ("task_stopping.json", {}),
        ("task_stopped.json", {}),
        ("task_running_bridge.json", {"desired_status": "STOPPED", "version": 4}),
    ],
    ids=["stopping", "stopped", "asked-to-stop"],
)
def test_stop_removes_the_task_at_once_and_leaves_a_tombstone(
    consul: ConsulDouble, template: str, overrides: dict[str, Any]
) -> None:
    # GIVEN a registered task
    assert run(task_event()) == []
    assert NODE in consul.nodes()

    # WHEN it stops (or is asked to stop)
    assert run(task_event(template, **overrides)) == []

    # THEN its node, services and checks are gone and the record is a tombstone
    assert NODE not in consul.nodes()
    assert consul.services(node=NODE) == []
    assert consul.checks(node=NODE) == []
    assert (record(consul) or {})["status"] == "stopped"


# --------------------------------------------------------------------------------------------
# Steady state: nothing written when nothing changed


def test_duplicates_and_unchanged_events_write_nothing(consul: ConsulDouble) -> None:
    assert run(task_event()) == []
    before = (consul.services(), consul.checks(), consul.kv(), consul.index)
    consul.reset_requests()

    # WHEN the same event is redelivered, and a newer RUNNING event changes nothing
    assert run(task_event(), task_event(), task_event(version=4)) == []

    # THEN Consul saw reads only, and holds exactly what it held
    assert consul.writes() == 0
    assert (consul.services(), consul.checks(), consul.kv(), consul.index) == before


def test_later_stop_events_after_the_stop_write_nothing(consul: ConsulDouble) -> None:
    assert run(task_event(), task_event("task_stopping.json")) == []
    consul.reset_requests()

    assert run(task_event("task_stopped.json"), task_event("task_stopping.json")) == []

    assert consul.writes() == 0


def test_stale_event_does_not_undo_a_newer_one(consul: ConsulDouble, hosts: FakeHosts) -> None:
    # GIVEN version 5 registered the task on 10.20.30.40
    assert run(task_event(version=5)) == []
    # AND the host's address has changed since
    hosts.addresses[INSTANCE_ARN] = "10.99.0.1"
    consul.reset_requests()

    # WHEN an older RUNNING event (version 4) arrives late
    assert run(task_event(version=4)) == []

    # THEN it is ignored
    assert consul.writes() == 0
    assert by_id(consul)[f"web-{TASK}"]["ServiceAddress"] == HOST_IP

    # WHILE a newer one (version 6) moves the task to the new address, sidecar included
    assert run(task_event(version=6)) == []
    assert {s["ServiceAddress"] for s in consul.services(node=NODE)} == {"10.99.0.1"}
    assert consul.nodes()[NODE]["Address"] == "10.99.0.1"


def test_late_running_event_does_not_resurrect_a_stopped_task(consul: ConsulDouble) -> None:
    # GIVEN the STOPPED event arrives before the RUNNING one
    assert run(task_event("task_stopped.json")) == []
    consul.reset_requests()

    # WHEN the RUNNING event finally arrives
    assert run(task_event()) == []

    # THEN nothing is registered: the tombstone wins, whatever the version order
    assert consul.nodes() == {}
    assert consul.writes() == 0
    assert (record(consul) or {})["status"] == "stopped"


def test_events_of_other_tasks_cost_no_consul_request(consul: ConsulDouble) -> None:
    # GIVEN events the registrar does not act on
    bodies = [
        task_event("task_pending.json"),
        task_event(last_status="ACTIVATING"),
        task_event(cluster_arn=OTHER_CLUSTER_ARN),
        task_event(launch_type="EC2"),
        task_event(task_definition_arn=PLAIN_TD),
        task_event("task_stopped.json", task_definition_arn=PLAIN_TD),
        task_event(task_definition_arn=VPC_TD),
    ]

    # WHEN they are handled
    failed = run(*bodies)

    # THEN none fails and Consul is never asked anything
    assert failed == []
    assert consul.requests == []


def test_stop_of_an_unknown_opted_in_task_writes_only_its_tombstone(consul: ConsulDouble) -> None:
    assert run(task_event("task_stopping.json")) == []

    assert consul.nodes() == {}
    assert (record(consul) or {})["status"] == "stopped"


def _ecs_runtime(consul: ConsulDouble, ecs: FakeEcs) -> registrar.Runtime:
    """A fresh Lambda container: its task definition cache is empty."""
    definitions = aws.EcsTaskDefinitions(lambda: ecs)
    rt = fake_runtime(consul.url, task_definitions=definitions)
    registrar.set_runtime(rt)
    return rt


@pytest.mark.parametrize("why", ["deregistered", "throttled"])
def test_a_stop_lands_when_its_task_definition_cannot_be_described(
    consul: ConsulDouble, why: str
) -> None:
    # GIVEN a task registered by its RUNNING event
    ecs = FakeEcs()
    _ecs_runtime(consul, ecs)
    assert run(ecs.put_task(TASK)) == []
    # AND, by the time its stop is handled (a backlog, a DLQ redrive), the task has stopped
    # and its revision was deregistered (ECS no longer describes it), or ECS throttles
    stop = ecs.put_task(TASK, version=5, last_status="STOPPED", desired_status="STOPPED")
    if why == "deregistered":
        ecs.deregistered.add(WEB_TD)
    else:
        ecs.faults["DescribeTaskDefinition"] = [throttled("DescribeTaskDefinition")] * 4
    _ecs_runtime(consul, ecs)

    # WHEN the stop is handled by a container that never saw the task definition
    failed = run(stop)

    # THEN it is applied from the state record: the task is gone and tombstoned
    assert failed == []
    assert consul.nodes() == {}
    assert (record(consul) or {})["status"] == "stopped"


@dataclass
class StricterRelease:
    """What a later release that refuses the web revision (as it refuses awsvpc) sees."""

    def get(self, arn: str) -> TaskDefinition:
        return replace(FakeTaskDefinitions().get(arn), network_mode="awsvpc")


def test_a_stop_lands_when_the_revision_is_refused_since_the_task_registered(
    consul: ConsulDouble,
) -> None:
    # GIVEN a task registered by its RUNNING event
    assert run(task_event()) == []
    assert NODE in consul.nodes()
    # AND a release that refuses its revision (stricter validation) by the time it stops
    registrar.set_runtime(fake_runtime(consul.url, task_definitions=StricterRelease()))

    # WHEN its stop is handled
    assert run(task_event("task_stopped.json")) == []

    # THEN the task leaves the catalog and is tombstoned, from its state record
    assert consul.nodes() == {}
    assert (record(consul) or {})["status"] == "stopped"


def test_a_stop_of_a_refused_task_never_registered_writes_nothing(consul: ConsulDouble) -> None:
    # GIVEN a revision refused (awsvpc) whose task never had a record
    registrar.set_runtime(fake_runtime(consul.url, task_definitions=StricterRelease()))

    # WHEN its stop is handled, THEN only the record was read
    assert run(task_event("task_stopped.json")) == []
    assert (consul.count(), consul.writes()) == (1, 0)


def test_a_late_running_event_of_a_stopped_task_whose_revision_is_gone_is_acknowledged(
    consul: ConsulDouble,
) -> None:
    # GIVEN a task that ran and stopped, whose revision was deregistered since
    ecs = FakeEcs()
    _ecs_runtime(consul, ecs)
    running = ecs.put_task(TASK)
    stop = ecs.put_task(TASK, version=5, last_status="STOPPED", desired_status="STOPPED")
    assert run(stop) == []
    ecs.deregistered.add(WEB_TD)
    _ecs_runtime(consul, ecs)

    # WHEN its RUNNING event is delivered late (a backlog, a DLQ redrive)
    failed = run(running)

    # THEN it is acknowledged as stale (not failed into the DLQ) and registers nothing
    assert failed == []
    assert consul.nodes() == {}


def test_a_running_event_whose_revision_is_gone_fails_when_the_task_has_no_tombstone(
    consul: ConsulDouble,
) -> None:
    # GIVEN a revision ECS no longer describes (no task of it is known any more) and no record
    # of the task
    ecs = FakeEcs()
    _ecs_runtime(consul, ecs)
    running = ecs.put_task(TASK)
    ecs.deregistered.add(WEB_TD)
    ecs.forget(TASK)
    _ecs_runtime(consul, ecs)

    # WHEN its RUNNING event is handled, THEN it fails (the DLQ shows it), registering nothing
    assert run(running) == ["msg-0"]
    assert consul.nodes() == {}


def test_a_stop_without_a_record_or_a_task_definition_leaves_a_tombstone(
    consul: ConsulDouble,
) -> None:
    # GIVEN a stop (delivered before its RUNNING event) of a task whose revision ECS no longer
    # describes, so nobody can tell whether it was a mesh task
    ecs = FakeEcs()
    ecs.deregistered.add(WEB_TD)
    _ecs_runtime(consul, ecs)
    stop = ecs.put_task(TASK, version=5, last_status="STOPPED", desired_status="STOPPED")

    # WHEN it is handled, THEN a tombstone is written, so the late RUNNING event cannot register
    # the stopped task (a tombstone of a task that was not a mesh task is collected later)
    assert run(stop) == []
    assert (record(consul) or {})["status"] == "stopped"
    registrar.set_runtime(fake_runtime(consul.url))
    assert run(task_event(task_id=TASK, version=3)) == []
    assert consul.nodes() == {}


def test_a_running_event_of_an_inactive_but_referenced_definition_registers(
    consul: ConsulDouble,
) -> None:
    # GIVEN a revision deregistered while a task of it still runs: ECS still describes it
    ecs = FakeEcs()
    ecs.deregistered.add(WEB_TD)
    _ecs_runtime(consul, ecs)

    assert run(ecs.put_task(TASK)) == []

    assert NODE in consul.nodes()


# --------------------------------------------------------------------------------------------
# Failures: retried, then reported alone


def _three_tasks() -> list[dict[str, Any]]:
    return [task_event(task_id=f"{n:032x}") for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 429},
        {"kind": "status", "status": 503},
        {"kind": "refuse"},
    ],
    ids=["500", "429", "503", "refused"],
)
def test_consul_failure_fails_only_its_message(consul: ConsulDouble, fault: dict[str, Any]) -> None:
    # GIVEN Consul keeps failing every request about the first task (past the retries)
    first = f"{1:032x}"
    consul.inject(path_prefix=f"/v1/kv/{kv_layout.task_key(CLUSTER_ARN, first)}", times=-1, **fault)

    # WHEN a batch of three tasks is handled
    failed = run(*_three_tasks())

    # THEN only the first is reported; its neighbours are registered
    assert failed == ["msg-0"]
    assert sorted(consul.nodes()) == [f"ecs-task-{2:032x}", f"ecs-task-{3:032x}"]
    # AND it was retried before giving up (4 attempts per call)
    assert consul.count(path_prefix=f"/v1/kv/{kv_layout.task_key(CLUSTER_ARN, first)}") == 4

    # WHEN Consul recovers and SQS redelivers the failed message
    consul.clear_faults()
    assert run(_three_tasks()[0], prefix="again") == []

    # THEN it lands too
    assert f"ecs-task-{first}" in consul.nodes()


@pytest.mark.parametrize(
    "path", ["/v1/txn", "/v1/catalog/register", "/v1/kv/"], ids=["txn", "sidecar", "record"]
)
def test_transient_consul_errors_are_retried_within_the_invocation(
    consul: ConsulDouble, path: str
) -> None:
    consul.inject(kind="status", status=500, path_prefix=path, times=2)

    assert run(task_event()) == []

    assert len(by_id(consul)) == 2


def test_slow_consul_times_out_and_is_retried(consul_double: ConsulDouble) -> None:
    registrar.set_runtime(fake_runtime(consul_double.url, consul_timeout_s=0.2))
    consul_double.inject(kind="delay", delay=1.0, path_prefix="/v1/txn", times=1)
    try:
        assert run(task_event()) == []
    finally:
        registrar.set_runtime(None)

    assert len(by_id(consul_double)) == 2


def test_failed_sidecar_write_is_repaired_by_the_redelivery(consul: ConsulDouble) -> None:
    # GIVEN the txn lands but every sidecar write fails
    consul.inject(kind="status", status=500, path_prefix="/v1/catalog/register", times=-1)
    assert run(task_event()) == ["msg-0"]
    assert sorted(by_id(consul)) == [f"web-{TASK}"]

    # WHEN Consul recovers and SQS redelivers the message (same version as the record)
    consul.clear_faults()
    assert run(task_event()) == []

    # THEN the redelivery notices the missing sidecar and writes it
    assert f"web-{TASK}-sidecar-proxy" in by_id(consul)


def test_a_sidecar_write_that_lands_late_cannot_bring_back_a_stopped_task(
    consul: ConsulDouble,
) -> None:
    # GIVEN a RUNNING event whose first sidecar write gets no answer, which Consul applies
    # later all the same; the resend lands at once, so the registration looks complete
    consul.inject(kind="late", path_prefix="/v1/catalog/register")
    failed = run(task_event())

    # WHEN the task stops, and only then does the unanswered write land, recreating the node
    assert run(task_event("task_stopped.json")) == []
    assert consul.land_late() == 1
    assert NODE in consul.nodes()

    # AND SQS redelivers what was not acknowledged, after the visibility timeout
    if failed:
        assert run(task_event(), prefix="again") == []

    # THEN no zombie: the RUNNING message was left to SQS, and its redelivery removed the node
    assert NODE not in consul.nodes()
    assert failed == ["msg-0"]
    assert (record(consul) or {})["status"] == "stopped"


def test_no_time_left_reports_messages_without_touching_consul(
    consul_double: ConsulDouble,
) -> None:
    registrar.set_runtime(fake_runtime(consul_double.url, reserve_ms=5_000))
    try:
        failed = run(*_three_tasks(), remaining_ms=4_000)
    finally:
        registrar.set_runtime(None)

    assert failed == ["msg-0", "msg-1", "msg-2"]
    assert consul_double.requests == []


def test_an_aws_request_that_could_outlast_the_invocation_is_not_started(
    consul_double: ConsulDouble,
) -> None:
    # GIVEN 5 s left before the reserve: enough for Consul (its timeout shrinks to fit), not
    # for an AWS request, which botocore lets run for up to connect 3 s + read 5 s
    ecs = FakeEcs()
    rt = fake_runtime(consul_double.url, reserve_ms=2_000)
    rt.task_definitions = aws.EcsTaskDefinitions(lambda: ecs)
    registrar.set_runtime(rt)
    try:
        # WHEN a RUNNING event needs its task definition
        failed = run(ecs.put_task(TASK), remaining_ms=7_000)
    finally:
        registrar.set_runtime(None)

    # THEN the request is not started and the message is left to SQS
    assert failed == ["msg-0"]
    assert ecs.calls["DescribeTaskDefinition"] == 0
    assert aws.ATTEMPT_S == 8


# --------------------------------------------------------------------------------------------
# Malformed input


def test_malformed_bodies_are_reported_and_good_neighbours_applied(
    consul: ConsulDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies: list[str | dict[str, Any]] = [
        task_event(task_id=f"{1:032x}"),
        "{not json",
        {**load_event("container_instance_state_change.json"), "detail-type": "ECS Service Action"},
        load_event("malformed_missing_version.json"),
        load_event("malformed_wrong_types.json"),
        task_event(task_id=f"{2:032x}"),
    ]
    capsys.readouterr()

    failed = run(*bodies)

    assert failed == ["msg-1", "msg-2", "msg-3", "msg-4"]
    assert sorted(consul.nodes()) == [f"ecs-task-{1:032x}", f"ecs-task-{2:032x}"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    malformed = {
        line["message_id"]: line["reason"]
        for line in lines
        if line.get("message", "").startswith("malformed")
    }
    assert malformed["msg-1"].startswith("body is not JSON")
    assert "ECS Service Action" in malformed["msg-2"]
    assert malformed["msg-3"] == "detail.version is missing"
    assert malformed["msg-4"] == "detail.containers must be a list, got dict"
    emf = [line for line in lines if "_aws" in line]
    assert emf[-1]["Malformed"] == 4
    assert emf[-1]["Registered"] == 2


def test_handler_never_raises_on_an_unexpected_invocation(consul: ConsulDouble) -> None:
    assert handler.handler({"detail-type": "Scheduled Event"}, LambdaContext()) == {
        "batchItemFailures": []
    }
    response = handler.handler({"Records": [{"messageId": "m1"}]}, LambdaContext())
    assert failed_ids(response) == ["m1"]


def test_misconfiguration_fails_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    registrar.set_runtime(None)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    monkeypatch.setenv("ECS_CLUSTER_ARN", CLUSTER_ARN)

    assert run(task_event(), task_event(version=4)) == ["msg-0", "msg-1"]
    registrar.set_runtime(None)


# --------------------------------------------------------------------------------------------
# Observability


def test_every_log_line_names_the_task_and_metrics_are_emf(
    consul: ConsulDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    consul.inject(kind="status", status=500, path_prefix="/v1/txn", times=1)
    capsys.readouterr()

    assert run(task_event(), task_event("task_stopping.json")) == []

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    logs = [line for line in lines if "_aws" not in line]
    assert logs
    assert all(line["task_arn"] == TASK_ARN for line in logs)
    assert any(line["message"] == "retrying after a transient failure" for line in logs)
    (emf,) = [line for line in lines if "_aws" in line]
    metrics = {m["Name"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert metrics == {"Registered", "Deregistered", "EventToCatalogLagMs"}
    assert (emf["Registered"], emf["Deregistered"], emf["ClusterName"]) == (1, 1, "mesh")
    assert len(emf["EventToCatalogLagMs"]) == 2


def test_requests_per_task_start_and_stop(consul: ConsulDouble) -> None:
    """The figures DESIGN.md guarantee 4 asks for: few requests per task lifecycle."""
    run(task_event("task_pending.json"))
    assert consul.count() == 0

    run(task_event())
    start = [(r.method, r.path.split("/")[2]) for r in consul.requests]
    consul.reset_requests()
    run(task_event("task_stopping.json"))
    stop = [(r.method, r.path.split("/")[2]) for r in consul.requests]
    consul.reset_requests()
    run(task_event("task_stopped.json"))
    late_stop = consul.count()

    # start: read record, txn, sidecar register, re-read record
    assert start == [("GET", "kv"), ("PUT", "txn"), ("PUT", "catalog"), ("GET", "kv")]
    # stop: read record, txn (node delete + tombstone)
    assert stop == [("GET", "kv"), ("PUT", "txn")]
    # a later stop event of the same task: one read
    assert late_stop == 1


# --------------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_invocations_for_one_task_converge(consul: ConsulDouble) -> None:
    # GIVEN eight invocations racing with RUNNING and STOPPING events of the same task
    bodies = [task_event(), task_event("task_stopping.json")] * 4
    failures: list[list[str]] = []
    barrier = threading.Barrier(len(bodies))

    def invoke(n: int) -> None:
        barrier.wait()
        failures.append(run(bodies[n], prefix=f"t{n}"))

    threads = [threading.Thread(target=invoke, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # THEN none fails and the stop wins: no zombie
    assert failures == [[]] * len(bodies)
    assert consul.nodes() == {}
    assert (record(consul) or {})["status"] == "stopped"


def test_concurrent_duplicates_register_once(consul: ConsulDouble) -> None:
    barrier = threading.Barrier(6)
    results: list[list[str]] = []

    def invoke(n: int) -> None:
        barrier.wait()
        results.append(run(task_event(), prefix=f"t{n}"))

    threads = [threading.Thread(target=invoke, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [[]] * 6
    assert len(by_id(consul)) == 2
    # one txn won the cas; the others lost it (409) or saw the record first
    assert sum(1 for r in consul.requests if r.path == "/v1/txn" and r.status == 200) == 1


def test_unusable_opted_in_task_definition_is_a_warning_not_a_retry(
    consul: ConsulDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an opted-in task definition in awsvpc mode (not supported on ECS Anywhere)
    capsys.readouterr()

    # WHEN its RUNNING event is handled
    failed = run(task_event(task_definition_arn=VPC_TD))

    # THEN it is not retried (a redrive cannot fix a task definition) but stands out in the logs
    assert failed == []
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"level"' in x]
    assert (line["level"], line["outcome"]) == ("WARNING", "invalid")
    assert "network mode 'awsvpc' is not supported" in line["reason"]
    assert consul.requests == []
