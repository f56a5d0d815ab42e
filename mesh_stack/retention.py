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

Applied as an aspect at synthesis, so every retained resource of the stack is covered, whoever
adds it (CDK's defaults retain KMS keys, secrets, buckets and log groups).
"""

from __future__ import annotations

import jsii
from aws_cdk import CfnDeletionPolicy, CfnResource, IAspect
from constructs import IConstruct


@jsii.implements(IAspect)
class RetainExceptOnCreate:
    def visit(self, node: IConstruct) -> None:
        if (
            isinstance(node, CfnResource)
            and node.cfn_options.deletion_policy == CfnDeletionPolicy.RETAIN
        ):
            node.cfn_options.deletion_policy = CfnDeletionPolicy.RETAIN_EXCEPT_ON_CREATE
