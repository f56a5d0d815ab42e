"""Resource policies of buckets, queues, topics, secrets and functions."""

from __future__ import annotations

from pathlib import Path

from tests.review.builder import allow, getatt, policy, ref, resource, write_assembly
from tools.review.load import load_assembly
from tools.review.resource_policies import resource_policies

DENY_PLAIN_HTTP = {
    "Effect": "Deny",
    "Principal": {"AWS": "*"},
    "Action": "sqs:*",
    "Resource": "*",
    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
}


def test_each_policy_lists_its_statements_and_flags_the_open_ones(tmp_path: Path) -> None:
    template = {
        "Resources": {
            "Queue": resource("AWS::SQS::Queue", "App/Queue/Resource"),
            "QueuePolicy": resource(
                "AWS::SQS::QueuePolicy",
                "App/Queue/Policy/Resource",
                Queues=[ref("Queue")],
                PolicyDocument=policy(
                    DENY_PLAIN_HTTP,
                    allow(
                        "sqs:SendMessage",
                        getatt("Queue", "Arn"),
                        Principal={"Service": "events.amazonaws.com"},
                        Condition={"ArnEquals": {"aws:SourceArn": getatt("Rule", "Arn")}},
                    ),
                    allow("sqs:SendMessage", getatt("Queue", "Arn"), Principal="*"),
                ),
            ),
            "Rule": resource("AWS::Events::Rule", "App/Rule/Resource"),
            "Fn": resource("AWS::Lambda::Function", "App/Fn/Resource"),
            "Invoke": resource(
                "AWS::Lambda::Permission",
                "App/Fn/Invoke",
                FunctionName=getatt("Fn", "Arn"),
                Action="lambda:InvokeFunction",
                Principal="events.amazonaws.com",
            ),
        }
    }
    found = resource_policies(load_assembly(write_assembly(tmp_path, {"App": template})))
    queue, permission = found
    assert [r.logical_id for r in queue.applies_to] == ["Queue"]
    assert [(s.effect, s.flag) for s in queue.statements] == [
        ("Deny", ""),
        ("Allow", ""),
        ("Allow", "anyone, without a condition"),
    ]
    # A Lambda permission without SourceArn lets any use of the service invoke the function
    [statement] = permission.statements
    assert [r.logical_id for r in permission.applies_to] == ["Fn"]
    assert statement.flag.startswith("service principal without a condition")
