"""AWS managed policies the review evaluates like inline ones: a pinned copy of their statements.

A role's `ManagedPolicyArns` entry of an AWS managed policy has no statements in the template;
without them "Read by" and "Which wildcards exist" would be silent about what the policy grants
(AmazonSSMManagedInstanceCore lets every host read every SSM parameter of the account). Each
entry is the policy's default version copied from the AWS Managed Policy Reference
(https://docs.aws.amazon.com/aws-managed-policy/latest/reference/<PolicyName>.html), with that
version. AWS changes managed policies: when the reference shows a newer version, update the
entry and its version here.

An AWS managed policy not in this table is *not evaluated*: every section that depends on it
says so ("may read: managed policy X, not evaluated"), never "no access".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REFERENCE = "https://docs.aws.amazon.com/aws-managed-policy/latest/reference/{name}.html"


@dataclass(frozen=True)
class ManagedPolicy:
    name: str  # as in the ARN after `policy/`, e.g. `service-role/AWSLambdaBasicExecutionRole`
    version: str  # the default version the copy was taken from
    statements: tuple[dict[str, Any], ...]
    partial: str = ""  # what the copy leaves out, '' when complete

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def source(self) -> str:
        return REFERENCE.format(name=self.short)

    def document(self) -> dict[str, Any]:
        return {"Version": "2012-10-17", "Statement": [dict(s) for s in self.statements]}


def _allow(actions: list[str], resource: str | list[str] = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resource, **extra}


TABLE: dict[str, ManagedPolicy] = {
    policy.short: policy
    for policy in (
        ManagedPolicy(
            "AmazonSSMManagedInstanceCore",
            "v2",
            (
                _allow(
                    [
                        "ssm:DescribeAssociation",
                        "ssm:GetDeployablePatchSnapshotForInstance",
                        "ssm:GetDocument",
                        "ssm:DescribeDocument",
                        "ssm:GetManifest",
                        "ssm:GetParameter",
                        "ssm:GetParameters",
                        "ssm:ListAssociations",
                        "ssm:ListInstanceAssociations",
                        "ssm:PutInventory",
                        "ssm:PutComplianceItems",
                        "ssm:PutConfigurePackageResult",
                        "ssm:UpdateAssociationStatus",
                        "ssm:UpdateInstanceAssociationStatus",
                        "ssm:UpdateInstanceInformation",
                    ]
                ),
                _allow(
                    [
                        "ssmmessages:CreateControlChannel",
                        "ssmmessages:CreateDataChannel",
                        "ssmmessages:OpenControlChannel",
                        "ssmmessages:OpenDataChannel",
                    ]
                ),
                _allow(
                    [
                        "ec2messages:AcknowledgeMessage",
                        "ec2messages:DeleteMessage",
                        "ec2messages:FailMessage",
                        "ec2messages:GetEndpoint",
                        "ec2messages:GetMessages",
                        "ec2messages:SendReply",
                    ]
                ),
            ),
        ),
        ManagedPolicy(
            "service-role/AWSLambdaBasicExecutionRole",
            "v1",
            (_allow(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]),),
        ),
        ManagedPolicy(
            "service-role/AWSLambdaVPCAccessExecutionRole",
            "v3",
            (
                _allow(
                    [
                        "logs:CreateLogGroup",
                        "logs:CreateLogStream",
                        "logs:PutLogEvents",
                        "ec2:CreateNetworkInterface",
                        "ec2:DescribeNetworkInterfaces",
                        "ec2:DescribeSubnets",
                        "ec2:DeleteNetworkInterface",
                        "ec2:AssignPrivateIpAddresses",
                        "ec2:UnassignPrivateIpAddresses",
                    ]
                ),
            ),
        ),
        ManagedPolicy(
            "SecretsManagerReadWrite",
            "v5",
            (
                _allow(
                    [
                        "secretsmanager:*",
                        "cloudformation:CreateChangeSet",
                        "cloudformation:DescribeChangeSet",
                        "cloudformation:DescribeStackResource",
                        "cloudformation:DescribeStacks",
                        "cloudformation:ExecuteChangeSet",
                        "docdb-elastic:GetCluster",
                        "docdb-elastic:ListClusters",
                        "ec2:DescribeSecurityGroups",
                        "ec2:DescribeSubnets",
                        "ec2:DescribeVpcs",
                        "kms:DescribeKey",
                        "kms:ListAliases",
                        "kms:ListKeys",
                        "lambda:ListFunctions",
                        "rds:DescribeDBClusters",
                        "rds:DescribeDBInstances",
                        "redshift:DescribeClusters",
                        "redshift-serverless:ListWorkgroups",
                        "redshift-serverless:GetNamespace",
                        "tag:GetResources",
                    ]
                ),
            ),
            partial=(
                "only its first statement (BasePermissions: secretsmanager:* on *) is copied; "
                "the rotation-function statements (Lambda SecretsManager*, serverlessrepo, S3) "
                "are not"
            ),
        ),
        ManagedPolicy("AdministratorAccess", "v1", (_allow(["*"]),)),
        ManagedPolicy(
            "AmazonSSMReadOnlyAccess", "v1", (_allow(["ssm:Describe*", "ssm:Get*", "ssm:List*"]),)
        ),
    )
}


def aws_managed_name(arn: str) -> str:
    """`AWSLambdaBasicExecutionRole` for `arn:<AWS::Partition>:iam::aws:policy/service-role/
    AWSLambdaBasicExecutionRole`; '' for a policy not owned by AWS."""
    head, sep, name = arn.partition(":iam::aws:policy/")
    return name.rsplit("/", 1)[-1] if sep and head.startswith("arn:") else ""


def known(arn: str) -> ManagedPolicy | None:
    return TABLE.get(aws_managed_name(arn))
