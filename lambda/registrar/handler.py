"""SQS entry point: parse each message, delegate, report the ones that failed.

Returns `{"batchItemFailures": [{"itemIdentifier": <messageId>}, ...]}` (ReportBatchItemFailures)
so one bad message never fails its neighbours. Never raises: an exception escaping here would
make SQS redeliver the whole batch, including messages already applied.

An event applied while a sidecar write got no answer is acknowledged, and a delayed re-check
of it is sent to the queue (recheck.py); when that send fails, the message is reported failed
instead, so that SQS redelivers it and the redelivery checks the catalog.

A malformed body is reported failed too, not dropped: SQS redrive after maxReceiveCount is the
only path to the DLQ, where an operator can read the message next to its log line. (Dropping it
would lose the evidence; raising would fail the batch.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import apply
import aws
import host_state
import identity
import logs
import recheck
import registrar
import retry
from metrics import Metrics
from model import MalformedEvent, TaskEvent, parse_event, task_arn_hint

# Result kind -> metric name.
_METRIC = {
    "registered": "Registered",
    "deregistered": "Deregistered",
    "stale": "IgnoredStale",
    "duplicate": "Duplicate",
    "repaired": "Repaired",
    "ignored": "Skipped",
    "invalid": "InvalidTaskDefinition",
    "unaddressable": "HostAddressRefused",
    "checked": "Checked",
}


def handler(event: Mapping[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    """Lambda entry point for the SQS event source mapping."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        logs.error("invocation event has no Records list", keys=sorted(event or {}))
        return {"batchItemFailures": []}
    ids = [str(r.get("messageId")) for r in records if isinstance(r, Mapping)]
    try:
        rt = registrar.runtime()
    except Exception as err:
        logs.error("registrar is misconfigured; failing the batch", error=str(err))
        return {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        budget = retry.Budget(remaining, rt.settings.reserve_ms)
    else:  # a local run without a Lambda context
        budget = retry.Budget.fixed(60.0)
    metrics = Metrics({"ClusterName": identity.cluster_name(rt.settings.cluster_arn)})
    worker = registrar.Registrar(rt, budget)
    with aws.within(budget):
        failures = _handle_records(worker, records, budget, metrics)
    try:
        metrics.flush()
    except Exception as err:  # metrics must never turn a success into a redelivery
        logs.error("could not write metrics", error=str(err))
    return {"batchItemFailures": failures}


def _handle_records(
    worker: registrar.Registrar,
    records: list[Any],
    budget: retry.Budget,
    metrics: Metrics,
) -> list[dict[str, str]]:
    failures = []
    for record in records:
        if not isinstance(record, Mapping):
            logs.error("SQS record is not an object; it cannot be reported", record=str(record))
            continue
        message_id = str(record.get("messageId"))
        with logs.task_context(message_id=message_id):
            try:
                applied = _process(worker, record, budget, metrics)
            except Exception as err:  # the last line of "one bad message never fails a batch"
                logs.error("message failed unexpectedly", error=f"{type(err).__name__}: {err}")
                metrics.count("Failed")
                applied = False
            if not applied:
                failures.append({"itemIdentifier": message_id})
    return failures


def _route(body: object, metrics: Metrics) -> str | None:
    """Where a body goes: `instance` or `task`; None (logged, counted) when it is malformed."""
    if not isinstance(body, str):
        logs.error("malformed message: body is not a string", reason="no body")
        metrics.count("Malformed")
        return None
    try:
        logs.set_task_arn(task_arn_hint(body))
        return "instance" if host_state.is_instance_event(body) else "task"
    except Exception as err:  # json raises RecursionError, not ValueError, on deep nesting
        logs.error("malformed message; it will end in the DLQ", reason=type(err).__name__)
        metrics.count("Malformed")
        return None


def _process(
    worker: registrar.Registrar, record: Mapping[str, Any], budget: retry.Budget, metrics: Metrics
) -> bool:
    """Handle one SQS record; True when it may be deleted from the queue."""
    body = record.get("body")
    route = _route(body, metrics)
    if route is None or not isinstance(body, str):
        return False
    if budget.exhausted:
        logs.warning("no time left in this invocation; leaving the message to SQS")
        metrics.count("Failed")
        return False
    if route == "instance":
        return host_state.process(body, budget, metrics)
    try:
        number = recheck.count(record)
        event = parse_event(body)
        result = worker.recheck(event) if number else worker.handle(event)
    except (MalformedEvent, recheck.MalformedRecheck) as err:
        logs.error("malformed message; it will end in the DLQ", reason=str(err))
        metrics.count("Malformed")
        return False
    except Exception as err:
        logs.error(
            "failed to apply the event; SQS will redeliver it",
            error=f"{type(err).__name__}: {err}",
            retryable=isinstance(err, retry.RetryableError),
        )
        metrics.count("Failed")
        return False
    _report(event, result, number, metrics)
    return not result.unanswered or _recheck_later(worker, body, number, result.unanswered, metrics)


def _report(event: TaskEvent, result: apply.Result, number: int, metrics: Metrics) -> None:
    """Count and log what an event (or re-check `number`) did."""
    metrics.count(_METRIC[result.kind])
    fields: dict[str, Any] = {
        "outcome": result.kind,
        "reason": result.reason,
        "version": event.version,
        "last_status": event.last_status,
        "desired_status": event.desired_status,
    }
    if number:
        fields["recheck"] = number
    if result.kind in ("registered", "deregistered"):
        lag_ms = (datetime.now(UTC) - event.event_time).total_seconds() * 1000
        metrics.lag(lag_ms)
        fields["lag_ms"] = round(lag_ms)
    # An opted-in task the mesh cannot serve is the service owner's to fix: make it stand out;
    # a host whose address cannot be registered is the operator's, and takes its tasks out.
    log: Callable[..., None] = {"invalid": logs.warning, "unaddressable": logs.error}.get(
        result.kind, logs.info
    )
    log(f"event {result.kind}", **fields)


def _recheck_later(
    worker: registrar.Registrar, body: str, number: int, unanswered: int, metrics: Metrics
) -> bool:
    """The event is applied but `unanswered` sidecar writes may still land: look again later.

    True when the message may be deleted: a re-check is on its way, or the re-checks are used
    up (the reconcile pass is the backstop). False when the re-check could not be sent: SQS
    then redelivers the message itself, and the redelivery checks the catalog.
    """
    if number >= recheck.MAX_RECHECKS:
        logs.warning(
            "sidecar write got no answer on the last re-check; the reconcile pass will check "
            "the task",
            unanswered=unanswered,
            recheck=number,
        )
        metrics.count("RecheckGaveUp")
        return True
    try:
        worker.schedule_recheck(body, number + 1)
    except Exception as err:
        logs.error(
            "sidecar write got no answer and the re-check could not be sent; SQS will "
            "redeliver the message",
            error=f"{type(err).__name__}: {err}",
            unanswered=unanswered,
        )
        metrics.count("Failed")
        return False
    logs.warning(
        "applied; a sidecar write got no answer and may still land: re-check scheduled",
        unanswered=unanswered,
        recheck=number + 1,
    )
    metrics.count("RecheckScheduled")
    return True
