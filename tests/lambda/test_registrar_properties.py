"""Property tests of DESIGN.md guarantees 1 and 2, through handler.handler and the double.

For random per-task histories (PENDING -> RUNNING -> STOPPING -> STOPPED with increasing
versions; some tasks never stop, some stop before running, some are asked to stop while
running), every event delivered 1-5 times in any order, cut into batches handled by several
concurrent invocations: once everything is processed, the catalog holds exactly the running
tasks, on the right address and ports. With Consul faults injected, failed messages are
redelivered (as SQS would) until none fails, and the re-checks the registrar sends to its
queue are delivered, and the same holds; no message needs more receives than the queue's
maxReceiveCount. Fuzzed bodies never break a
batch: bad ones are reported, good ones applied.

Nothing here races the wall clock: what happens is decided by the drawn data, by the order the
concurrent invocations happen to run in (which is the point), and never by how fast the machine
is. A slow Consul is a `late` fault (no answer; the write lands when the test says), not a
sleep raced against the client's timeout, and every draw is made before the first delivery, so
a machine too loaded to keep up changes neither the data nor the verdict.

One double serves a whole test (examples use fresh task ids), so examples stay cheap.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import handler
import pytest
import registrar
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from registrar_fixtures import (
    INSTANCE_ARN,
    FakeHosts,
    FakeRechecks,
    LambdaContext,
    failed_ids,
    fake_runtime,
    sqs_event,
    task_event,
)

from tests.consul_double import ConsulDouble

OTHER_INSTANCE = INSTANCE_ARN.replace("5d7e3c2a", "99990000")
ADDRESSES = {INSTANCE_ARN: "10.20.30.40", OTHER_INSTANCE: "10.20.30.41"}

Kind = Literal["runs", "stops", "asked-to-stop", "never-runs"]
KINDS: tuple[Kind, ...] = ("runs", "stops", "asked-to-stop", "never-runs")

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


RECHECKS = FakeRechecks()
# mesh_stack/registrar.py: a message received this many times without success goes to the DLQ.
MAX_RECEIVE_COUNT = 5


@pytest.fixture(scope="module")
def double() -> Iterator[ConsulDouble]:
    with ConsulDouble() as consul:
        # The production default: no answer is raced against it (slow answers are `late` faults).
        registrar.set_runtime(
            fake_runtime(
                consul.url,
                hosts=FakeHosts(dict(ADDRESSES)),
                consul_timeout_s=5.0,
                rechecks=RECHECKS,
            )
        )
        yield consul
        registrar.set_runtime(None)
        assert not consul.internal_errors, consul.internal_errors


@dataclass(frozen=True)
class Task:
    task_id: str
    kind: Kind
    instance: str
    app_port: int
    envoy_port: int

    @property
    def node(self) -> str:
        return f"ecs-task-{self.task_id}"

    def events(self, extra_running: bool) -> list[dict[str, Any]]:
        """The task's history as ECS would emit it, versions increasing."""

        def event(template: str, version: int, **kw: Any) -> dict[str, Any]:
            bound = template == "task_running_bridge.json"
            ports = {"web": {8080: self.app_port}, "envoy": {20000: self.envoy_port}}
            return task_event(
                template,
                task_id=self.task_id,
                version=version,
                container_instance_arn=self.instance,
                host_ports=ports if bound else {},
                **kw,
            )

        history = [event("task_pending.json", 1)]
        if self.kind == "never-runs":
            return [*history, event("task_stopped.json", 2)]
        history.append(event("task_running_bridge.json", 2))
        if extra_running:  # a container state change that changes nothing
            history.append(event("task_running_bridge.json", 3))
        if self.kind == "stops":
            history += [event("task_stopping.json", 4), event("task_stopped.json", 6)]
        elif self.kind == "asked-to-stop":
            history += [
                event("task_running_bridge.json", 4, desired_status="STOPPED"),
                event("task_stopped.json", 5),
            ]
        return history


@st.composite
def tasks(draw: st.DrawFn) -> list[Task]:
    count = draw(st.integers(1, 4))
    host_ports = draw(
        st.lists(st.integers(32768, 60999), min_size=2 * count, max_size=2 * count, unique=True)
    )
    return [
        Task(
            task_id=uuid.uuid4().hex,
            kind=draw(st.sampled_from(KINDS)),
            instance=draw(st.sampled_from(sorted(ADDRESSES))),
            app_port=host_ports[2 * n],
            envoy_port=host_ports[2 * n + 1],
        )
        for n in range(count)
    ]


@st.composite
def deliveries(draw: st.DrawFn, plan: list[Task]) -> list[dict[str, Any]]:
    """Every event 1-5 times, in any order."""
    events = []
    for task in plan:
        for one in task.events(extra_running=draw(st.booleans())):
            events += [one] * draw(st.integers(1, 5))
    return draw(st.permutations(events))


# Batch sizes (the event source's maximum is 10), drawn once and used in turn for every
# delivery round: how many messages a round redelivers must not change what is drawn.
BATCH_SIZES = st.lists(st.integers(1, 10), min_size=1, max_size=12)


def _batches(sizes: list[int], bodies: list[Any]) -> list[list[Any]]:
    batches, rest = [], list(bodies)
    while rest:
        size = sizes[len(batches) % len(sizes)]
        batches.append(rest[:size])
        rest = rest[size:]
    return batches


@dataclass(frozen=True)
class Message:
    """An SQS message: its body, which re-check it is (0: an ECS event), how often received."""

    body: Any
    recheck: int = 0
    receives: int = 0


def _sqs_batch(batch: list[Any], prefix: str) -> dict[str, Any]:
    if not all(isinstance(m, Message) for m in batch):
        return sqs_event(batch, prefix)
    records = []
    for i, message in enumerate(batch):
        (one,) = sqs_event([message.body], prefix, recheck_number=message.recheck or None)[
            "Records"
        ]
        records.append({**one, "messageId": f"{prefix}-{i}"})
    return {"Records": records}


def _invoke_concurrently(batches: list[list[Any]], workers: int, tag: str) -> list[Any]:
    """Hand batches (of bodies or Messages) round-robin to `workers` concurrent invocations;
    the failed ones."""
    failed: list[Any] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for b, batch in enumerate(batches[n::workers]):
            prefix = f"{tag}-w{n}-b{b}"
            response = handler.handler(_sqs_batch(batch, prefix), LambdaContext())
            failures = set(failed_ids(response))
            with lock:
                failed.extend(one for i, one in enumerate(batch) if f"{prefix}-{i}" in failures)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failed


def assert_catalog_matches(double: ConsulDouble, plan: list[Task]) -> None:
    nodes = double.nodes()
    for task in plan:
        if task.kind != "runs":
            assert task.node not in nodes, f"zombie: {task}"
            continue
        assert task.node in nodes, f"missing: {task}"
        services = {s["ServiceID"]: s for s in double.services(node=task.node)}
        web, sidecar = f"web-{task.task_id}", f"web-{task.task_id}-sidecar-proxy"
        assert sorted(services) == [web, sidecar]
        address = ADDRESSES[task.instance]
        assert {s["ServiceAddress"] for s in services.values()} == {address}
        assert nodes[task.node]["Address"] == address
        assert services[web]["ServicePort"] == task.app_port
        assert services[sidecar]["ServicePort"] == task.envoy_port
        assert services[sidecar]["ServiceProxy"]["LocalServicePort"] == task.app_port
        assert len(services[sidecar]["ServiceProxy"]["Upstreams"]) == 2


@PROPERTY_SETTINGS
@given(data=st.data())
def test_catalog_holds_exactly_the_running_tasks(double: ConsulDouble, data: st.DataObject) -> None:
    # GIVEN random histories, every event delivered 1-5 times in any order
    plan = data.draw(tasks())
    bodies = data.draw(deliveries(plan))
    batches = _batches(data.draw(BATCH_SIZES), bodies)
    workers = data.draw(st.integers(1, 3))

    # WHEN several concurrent invocations handle the batches
    failed = _invoke_concurrently(batches, workers, "p")

    event(f"tasks running at the end: {sum(t.kind == 'runs' for t in plan)} of {len(plan)}")
    # THEN nothing fails and the catalog holds exactly the running tasks
    assert failed == []
    assert_catalog_matches(double, plan)


FAULT = st.fixed_dictionaries(
    {
        # late: no answer, and the write lands after the round, when no writer looks any more
        "kind": st.sampled_from(["status", "refuse", "late"]),
        "status": st.sampled_from([500, 503, 429]),
        "path_prefix": st.sampled_from(
            ["/v1/kv/", "/v1/txn", "/v1/catalog/register", "/v1/catalog/"]
        ),
        "times": st.integers(1, 12),  # 4 in a row exhaust a call's retries
    }
)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_faults_and_redelivery_converge_to_the_running_tasks(
    double: ConsulDouble, data: st.DataObject
) -> None:
    # GIVEN random histories and Consul failing some requests (errors, refused connections,
    # requests that get no answer and are applied all the same, later)
    plan = data.draw(tasks())
    bodies = data.draw(deliveries(plan))
    double.clear_faults()
    for fault in data.draw(st.lists(FAULT, max_size=6)):
        double.inject(**fault)
    workers = data.draw(st.integers(1, 3))
    sizes = data.draw(BATCH_SIZES)

    # WHEN failed messages are redelivered, as SQS does, and the registrar's re-checks are
    # delivered, until nothing is left
    RECHECKS.take()
    pending, rounds = [Message(body) for body in bodies], 0
    while pending:
        rounds += 1
        assert rounds <= 8, f"still failing after {rounds - 1} rounds: {len(pending)} messages"
        if rounds == 4:
            double.clear_faults()  # a long outage ends
        received = [replace(m, receives=m.receives + 1) for m in pending]
        failed = _invoke_concurrently(_batches(sizes, received), workers, f"f{rounds}")
        # a message failed on its last receive would go to the DLQ: the outage of the first
        # three rounds must not cost a message its maxReceiveCount
        spent = [m for m in failed if m.receives >= MAX_RECEIVE_COUNT]
        assert spent == [], f"{len(spent)} messages would go to the DLQ"
        # SQS redelivers a failed message after its visibility timeout and a re-check after
        # its DelaySeconds; by then Consul has normally answered every request and applied
        # every write it will (recheck.py: a margin, not a guarantee). Unanswered writes land
        # last: the worst moment that margin allows.
        double.wait_idle()
        double.land_late()
        pending = failed + [Message(body, number) for body, number in RECHECKS.take()]

    # THEN the catalog holds exactly the running tasks
    event(f"delivery rounds: {rounds}")
    double.clear_faults()
    assert_catalog_matches(double, plan)


# --------------------------------------------------------------------------------------------
# Fuzzed bodies

REQUIRED_STRINGS = (
    "taskArn",
    "clusterArn",
    "taskDefinitionArn",
    "desiredStatus",
    "lastStatus",
    "launchType",
)
NOT_A_STRING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.lists(st.integers(), max_size=2), st.just("")
)
NOT_A_VERSION = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.floats(), st.integers(max_value=-1)
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def bad_body(draw: st.DrawFn) -> str:
    """A body that cannot be a usable ECS Task State Change event."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.text(max_size=40))
    if choice == 1:
        return json.dumps(draw(JSON_VALUES))
    doc = task_event(task_id=uuid.uuid4().hex)
    detail = doc["detail"]
    if choice == 2:
        field = draw(st.sampled_from(REQUIRED_STRINGS))
        if draw(st.booleans()):
            del detail[field]
        else:
            detail[field] = draw(NOT_A_STRING)
    elif choice == 3:
        detail["version"] = draw(NOT_A_VERSION)
    elif choice == 4:
        doc[draw(st.sampled_from(["detail-type", "source", "detail", "time"]))] = draw(NOT_A_STRING)
    else:
        detail["containers"] = draw(
            st.one_of(st.text(max_size=5), st.integers(), st.just({"a": 1}))
        )
    return json.dumps(doc)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_fuzzed_bodies_are_reported_and_good_ones_applied(
    double: ConsulDouble, data: st.DataObject
) -> None:
    # GIVEN a batch mixing good RUNNING events with garbage
    good = [
        Task(uuid.uuid4().hex, "runs", INSTANCE_ARN, 40000 + n, 41000 + n)
        for n in range(data.draw(st.integers(0, 3)))
    ]
    bad = data.draw(st.lists(bad_body(), min_size=1, max_size=6))
    labelled = [("good", json.dumps(t.events(False)[1])) for t in good] + [("bad", b) for b in bad]
    labelled = data.draw(st.permutations(labelled))

    # WHEN one invocation handles it
    response = handler.handler(sqs_event([body for _, body in labelled]), LambdaContext())

    # THEN exactly the bad ones are reported and the good ones are in the catalog
    expected = [f"msg-{i}" for i, (label, _) in enumerate(labelled) if label == "bad"]
    assert failed_ids(response) == expected
    assert_catalog_matches(double, good)
