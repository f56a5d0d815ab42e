"""Retained resources are retained from a stack that existed, not from a failed first create.

`DeletionPolicy: Retain` keeps a resource even when the create that made it rolls back: a first
deploy that fails (a quota, a boot that never signals) would leave the stack's KMS keys,
secrets, buckets and log groups behind, with no stack left to list them, and each retry adds
another set. `RetainExceptOnCreate` "behaves like Retain for stack operations, except for the
stack operation that initially created the resource. If the stack operation that created the
resource is rolled back, CloudFormation deletes the resource" (CloudFormation User Guide,
"DeletionPolicy attribute"); CDK calls it `RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE`
(aws-cdk-lib 2.275.0, `RemovalPolicy`). A stack delete (`make destroy`) and a replacement keep
the resource exactly as before; only the policy attribute changes, never a logical ID.

Applied at synthesis (stack.py's one synthesis pass), so every retained resource of the stack
is covered, whoever adds it (CDK's defaults retain KMS keys, secrets, buckets and log groups).
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import CfnDeletionPolicy, CfnResource
from constructs import IConstruct


def retain_except_on_create(constructs: Iterable[IConstruct]) -> None:
    """Turn every `Retain` deletion policy among `constructs` into `RetainExceptOnCreate`."""
    for node in constructs:
        if isinstance(node, CfnResource):
            options = node.cfn_options
            if options.deletion_policy == CfnDeletionPolicy.RETAIN:
                options.deletion_policy = CfnDeletionPolicy.RETAIN_EXCEPT_ON_CREATE
