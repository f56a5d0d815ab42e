"""The stack's outputs: the names operators, scripts and the docs read after a deploy.

An output declared directly on the stack keeps its construct ID as its CloudFormation logical
ID, so `describe-stacks ... OutputKey=='RegisterHostCommand'` finds it; one declared inside a
construct gets a hashed ID (`EcsAnywhereRegisterHostCommandFE6D83B0`) that no runbook can
name. Every output is therefore declared here, on the stack, with the ID below. The names
are a contract: tests/docs/test_doc_outputs.py checks that every output the README and
docs/*.md name exists in the synthesized template.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import CfnOutput, Stack

# Name -> description (shown by `describe-stacks`). Values come from the stack's wiring.
OUTPUTS: dict[str, str] = {
    "ClusterName": "ECS cluster the on-prem hosts join (ECS Anywhere)",
    "ClusterArn": "ARN of the ECS cluster; --cluster of the ECS CLI commands takes it",
    "RegisterHostCommand": (
        "Run with bash on a new on-prem host, with AWS credentials that may read the "
        "activation secret; registers the host with the ECS Anywhere cluster"
    ),
    "ActivationSecretArn": (
        "Secret holding the SSM activation ('<id> <code>'); grant read on it (and kms:Decrypt "
        "via Secrets Manager) to whoever registers hosts"
    ),
    "ActivationFunctionName": 'Invoke with {"action":"reissue"} for a fresh SSM activation',
    "ConsulHttpsAddress": "Consul HTTPS API through the internal load balancer (CONSUL_HTTP_ADDR)",
    "ConsulGrpcAddress": "Consul gRPC-TLS (xDS for Envoy) through the internal load balancer",
    "ConsulUiUrl": "Consul web UI; reachable from onprem_cidrs and operator_cidrs",
    "ConsulCaCertSecretArn": "Secret holding the Consul CA certificate (PEM, CONSUL_CACERT)",
    "OperatorTokenSecretArn": (
        "Secret holding the operators' read-only Consul ACL token (UI and CLI reads)"
    ),
    "ConsulManagementTokenSecretArn": (
        "Secret holding the Consul management token: break-glass writes only (docs/runbook.md)"
    ),
    "RegistrarTokenSecretArn": "Secret holding the registrar's Consul ACL token",
    "ConsulSnapshotBucket": "S3 bucket of the servers' scheduled `consul snapshot save` files",
    "ConsulServerGroupName": (
        "Auto Scaling group of the Consul servers: suspend its HealthCheck and "
        "ReplaceUnhealthy processes before stopping Consul on a server (docs/operations.md)"
    ),
    "RegistrarDeadLetterQueueUrl": (
        "DLQ of the registrar's queue: events the registrar failed on after every retry"
    ),
    "EventRuleDeadLetterQueueUrl": (
        "DLQ of the EventBridge rule: events EventBridge could not deliver to the queue"
    ),
}


def add_outputs(stack: Stack, values: Mapping[str, str]) -> None:
    """Declare every output of OUTPUTS on `stack` with its fixed ID; `values` must name each."""
    missing = sorted(set(OUTPUTS) - set(values))
    unknown = sorted(set(values) - set(OUTPUTS))
    if missing or unknown:
        raise ValueError(f"stack outputs: missing values {missing}, unknown names {unknown}")
    for name, description in OUTPUTS.items():
        CfnOutput(stack, name, value=values[name], description=description)
