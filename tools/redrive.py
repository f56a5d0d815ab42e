"""Move the EventBridge rule's dead-letter messages back into the registrar's queue.

    python -m tools.redrive RULE_DLQ_URL QUEUE_URL [--region REGION]

SQS's own redrive (StartMessageMoveTask) accepts as its source only "dead-letter queues whose
sources are other Amazon SQS queues"; a DLQ fed by anything else (here: an EventBridge rule
target) is not supported, with or without `--destination-arn` (SQS API reference,
StartMessageMoveTask, SourceArn). So this tool does it by hand: receive, send the body to the
registrar's queue, then delete from the DLQ, one batch at a time. The body of a message
EventBridge dead-letters is the event itself (EventBridge User Guide, "Using dead-letter queues
to process undelivered events"), which is what the rule would have put on the queue.

A message is deleted from the DLQ only after SendMessageBatch accepted it, so a crash between
the two re-sends it at worst: the registrar applies a duplicate event as a no-op (its ordering
record, docs/architecture.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import boto3


def redrive(sqs: Any, source_url: str, destination_url: str) -> int:
    """Move every message of `source_url` to `destination_url`; returns how many moved."""
    moved = 0
    while True:
        messages = sqs.receive_message(
            QueueUrl=source_url, MaxNumberOfMessages=10, VisibilityTimeout=60, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            return moved
        sent = sqs.send_message_batch(
            QueueUrl=destination_url,
            Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)],
        )
        ok = {entry["Id"] for entry in sent.get("Successful", [])}
        for failed in sent.get("Failed", []):
            print(f"not moved (kept in the DLQ): {failed}", file=sys.stderr)
        done = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
            if str(i) in ok
        ]
        if not done:
            return moved  # nothing accepted: stop rather than spin on the same messages
        sqs.delete_message_batch(QueueUrl=source_url, Entries=done)
        moved += len(done)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.redrive", description=__doc__)
    parser.add_argument("source_url")
    parser.add_argument("destination_url")
    parser.add_argument("--region")
    args = parser.parse_args(argv)

    moved = redrive(
        boto3.client("sqs", region_name=args.region), args.source_url, args.destination_url
    )
    print(f"moved {moved} message(s) to {args.destination_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
