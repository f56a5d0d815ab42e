"""Redriving the EventBridge rule's DLQ (tools/redrive.py), against moto's SQS."""

from __future__ import annotations

import json

import boto3
from moto import mock_aws

from tools.redrive import redrive


@mock_aws
def test_every_dead_lettered_event_lands_on_the_registrars_queue_once() -> None:
    # GIVEN 23 events EventBridge could not deliver, in the rule target's DLQ
    sqs = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")  # fmt: skip
    dlq = sqs.create_queue(QueueName="rule-dlq")["QueueUrl"]
    queue = sqs.create_queue(QueueName="registrar")["QueueUrl"]
    events = [json.dumps({"detail-type": "ECS Task State Change", "id": str(i)}) for i in range(23)]
    for body in events:
        sqs.send_message(QueueUrl=dlq, MessageBody=body)
    # WHEN the operator redrives it
    moved = redrive(sqs, dlq, queue)
    # THEN each event is on the registrar's queue, unchanged, and the DLQ is empty
    assert moved == 23
    received: list[str] = []
    while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        received += [m["Body"] for m in batch]
        sqs.delete_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in batch],
        )
    assert sorted(received) == sorted(events)
    attrs = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
