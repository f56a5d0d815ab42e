"""Re-checks: a second look at a task's catalog entries after a write that got no answer.

A sidecar `PUT /v1/catalog/register` whose answer never came may still be applied later, after
the message that sent it has checked the catalog and after a stop, recreating the node of a
stopped task (docs/architecture.md "Ordering, duplicates and concurrency"). The message is
applied and acknowledged; a copy of its body goes back to the registrar's own queue with
`DelaySeconds`, marked by the message attribute ATTRIBUTE (how many re-checks it is), and its
handling compares the catalog with the task's state record and repairs it
(`apply.recheck`): no AWS lookup, and a fresh receive count, so the original message's DLQ
budget is untouched.

Why DEFAULT_DELAY_S = 120: after the client gave up, Consul can still hold the write for
- up to `rpc_hold_timeout` (7 s default) on a follower forwarding it to the leader, twice
  when leadership changes meanwhile (agent/consul/rpc.go `forwardRequestToLeader`, `canRetry`;
  agent/structs/structs.go `WriteRequest.HasTimedOut`), and
- up to `enqueueLimit` (30 s) for the leader to enqueue it in Raft (agent/consul/rpc.go
  `raftApplyWithEncoder`: `s.raft.Apply(buf, enqueueLimit)`); once enqueued, Raft commits it
  before anything enqueued later, such as the re-check's own deregister.
That is 44 s; 120 s leaves room for the commit and a slow server, and still comes well before
the reconcile pass (every 5 min), which stays the backstop: Consul puts no end-to-end deadline
on a write (a forwarded RPC stuck in TCP retransmission is bounded by nothing above), so the
delay is a margin, not a guarantee. SQS allows DelaySeconds from 0 to 900 (SendMessage, SQS API
reference).

A re-check whose own repair write goes unanswered schedules the next one, up to MAX_RECHECKS;
after that a WARNING leaves the task to the reconcile pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aws

# SQS message attribute (Number): which re-check of the event this message is (1..MAX_RECHECKS).
ATTRIBUTE = "consul-mesh-recheck"
MAX_RECHECKS = 3
DEFAULT_DELAY_S = 120
MAX_DELAY_S = 900  # SendMessage DelaySeconds: "Valid values: 0 to 900" (SQS API reference)


class MalformedRecheck(ValueError):
    """The re-check attribute is present but is not a re-check number we send."""


def count(record: Mapping[str, Any]) -> int:
    """Which re-check an SQS record is: 0 for an event from EventBridge.

    Raises MalformedRecheck when the attribute is there but not 1..MAX_RECHECKS.
    """
    attributes = record.get("messageAttributes")
    if not isinstance(attributes, Mapping) or ATTRIBUTE not in attributes:
        return 0
    attribute = attributes[ATTRIBUTE]
    raw = attribute.get("stringValue") if isinstance(attribute, Mapping) else None
    if isinstance(raw, str) and raw.isdigit() and 1 <= int(raw) <= MAX_RECHECKS:
        return int(raw)
    raise MalformedRecheck(
        f"message attribute {ATTRIBUTE} is {raw!r}; allowed: a whole number from 1 to "
        f"{MAX_RECHECKS}"
    )


class Scheduler(Protocol):
    def schedule(self, body: str, number: int) -> None:
        """Send `body` back as re-check `number`; raises when it could not be sent."""


class SqsScheduler:
    """SendMessage to the registrar's own queue, delayed by `delay_s`."""

    def __init__(self, sqs: Callable[[], Any], queue_url: str, delay_s: int) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._delay_s = delay_s

    def schedule(self, body: str, number: int) -> None:
        aws.aws_call(
            f"SendMessage (re-check {number})",
            lambda: self._sqs().send_message(
                QueueUrl=self._queue_url,
                MessageBody=body,
                DelaySeconds=self._delay_s,
                MessageAttributes={ATTRIBUTE: {"DataType": "Number", "StringValue": str(number)}},
            ),
        )


class NoScheduler:
    """No queue configured (local runs): every schedule fails, so the message is redelivered."""

    def schedule(self, body: str, number: int) -> None:
        raise aws.AwsLookupError("RECHECK_QUEUE_URL is not set: no re-check can be scheduled")
