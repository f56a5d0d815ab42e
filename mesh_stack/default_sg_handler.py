"""CDK's own handler that empties the VPC's default security group, held to our rules.

`restrict_default_security_group=True` (feature flag @aws-cdk/aws-ec2:restrictDefaultSecurityGroup)
makes CDK add a stack-level singleton, `Custom::VpcRestrictDefaultSGCustomResourceProvider`, whose
`Role` and `Handler` are plain `CfnResource`s. So cdk-nag's rules (which match `CfnRole`,
`CfnFunction`) never look at them, and as CDK writes them:
- the role carries `AWSLambdaBasicExecutionRole`, `logs:CreateLogGroup`/`CreateLogStream`/
  `PutLogEvents` on `*`: the one IAM wildcard of the stack no acknowledgement could cover
  (`python -m tools.review --strict` failed on the default app);
- the handler writes to `/aws/lambda/<function>`, a log group Lambda creates on first use,
  outside the template: unencrypted by our key, never expiring, left behind by `cdk destroy`.

Here the handler logs to a log group of the template (a year, the stack's log key) through
`LoggingConfig.LogGroup`, and the managed policy gives way to a policy that may write only that
group's streams. The handler needs nothing else from CloudWatch Logs: it logs only through
`console.log`, and the group exists before the function (CloudFormation creates it first: the
`LoggingConfig` Ref), so `logs:CreateLogGroup`, which Lambda's page lists for the default
group, is not needed; writing takes `logs:CreateLogStream` and `logs:PutLogEvents` on the
group's `Arn`, which ends in `:*`
(https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html,
https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-logs-loggroup.html).
"""

from __future__ import annotations

from aws_cdk import CfnResource, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from mesh_stack.nag import acknowledge

PROVIDER_ID = "Custom::VpcRestrictDefaultSGCustomResourceProvider"
RESOURCE_TYPE = "Custom::VpcRestrictDefaultSG"
# The handler may run 15 minutes, so CloudFormation waits a minute more for an answer rather
# than its default hour.
SERVICE_TIMEOUT_S = 960


def _cfn_child(parent: IConstruct, child_id: str) -> CfnResource:
    child = parent.node.try_find_child(child_id)
    if child is None or not CfnResource.is_cfn_resource(child):
        raise RuntimeError(
            f"{parent.node.path}/{child_id} is not a CloudFormation resource: the pinned "
            "aws-cdk-lib builds the default-security-group handler differently; review "
            "mesh_stack/default_sg_handler.py against it"
        )
    assert isinstance(child, CfnResource)
    return child


def confine(scope: Construct, vpc: ec2.Vpc, *, log_key: kms.IKey) -> None:
    """Give CDK's default-security-group handler (`vpc`'s) a log group in the template and a
    role that writes only there. Constructs under `scope`: `DefaultSgHandlerLogs`,
    `DefaultSgHandlerLogWrites`."""
    provider = Stack.of(vpc).node.try_find_child(PROVIDER_ID)
    if provider is None:
        raise RuntimeError(
            f"{PROVIDER_ID} not found: call confine() after creating the VPC with "
            "restrict_default_security_group=True"
        )
    role = _cfn_child(provider, "Role")
    handler = _cfn_child(provider, "Handler")
    log_group = logs.LogGroup(
        scope, "DefaultSgHandlerLogs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=log_key
    )
    handler.add_property_override("LoggingConfig", {"LogGroup": log_group.log_group_name})
    role.add_property_deletion_override("ManagedPolicyArns")
    writes = iam.CfnPolicy(
        scope,
        "DefaultSgHandlerLogWrites",
        policy_name="DefaultSgHandlerLogWrites",
        roles=[role.ref],
        policy_document=iam.PolicyDocument(
            statements=[
                iam.PolicyStatement(
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    # The group's `Arn` attribute ends in `:*`: its log streams, which these
                    # actions act on.
                    resources=[log_group.log_group_arn],
                )
            ]
        ),
    )
    # The first invocation (the custom resource's Create) must find the role able to log.
    handler.add_dependency(writes)
    acknowledge(
        writes,
        "NIST.800.53.R5-IAMNoInlinePolicy",
        "Attached to CDK's default-security-group handler role only; it replaces the "
        "AWS-managed AWSLambdaBasicExecutionRole, which writes to every log group.",
    )
    for child in vpc.node.find_all():
        if isinstance(child, CfnResource) and child.cfn_resource_type == RESOURCE_TYPE:
            child.add_property_override("ServiceTimeout", SERVICE_TIMEOUT_S)
