"""Bodies that break the JSON parser itself still fail alone, never their batch neighbours.

Python's json raises RecursionError (not ValueError) on deeply nested input. Any exception that
escapes the per-message path makes the handler raise, so Lambda fails the whole batch: every
neighbour is redelivered with the poison message and, after maxReceiveCount, lands in the DLQ
with it (DESIGN.md section 2.2).
"""

from __future__ import annotations

from collections.abc import Iterator

import handler
import pytest
import registrar
from registrar_fixtures import (
    FakeHosts,
    LambdaContext,
    failed_ids,
    fake_runtime,
    sqs_event,
    task_event,
)

from tests.consul_double import ConsulDouble

NESTED = "[" * 100_000
# Also routed through the container instance path: it names that detail-type.
NESTED_INSTANCE_EVENT = '{"detail-type": "ECS Container Instance State Change", "x": ' + NESTED


@pytest.fixture
def consul(consul_double: ConsulDouble) -> Iterator[ConsulDouble]:
    registrar.set_runtime(fake_runtime(consul_double.url, hosts=FakeHosts()))
    yield consul_double
    registrar.set_runtime(None)


def test_a_body_that_overflows_the_json_parser_fails_alone(consul: ConsulDouble) -> None:
    # GIVEN a batch with two good task events around two pathologically nested bodies
    bodies = [
        task_event(task_id=f"{1:032x}"),
        NESTED,
        NESTED_INSTANCE_EVENT,
        task_event(task_id=f"{2:032x}"),
    ]
    # WHEN the handler processes the batch
    response = handler.handler(sqs_event(bodies, "msg"), LambdaContext())
    # THEN only the two poison messages are reported failed (on to the DLQ) ...
    assert failed_ids(response) == ["msg-1", "msg-2"]
    # ... and both neighbours are in the catalog
    assert sorted(consul.nodes()) == [f"ecs-task-{1:032x}", f"ecs-task-{2:032x}"]
