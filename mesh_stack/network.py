"""The VPC the Consul servers and the Lambdas run in (created, or an existing one), and its
path to on-prem (`onprem.py`)."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from mesh_stack import default_sg_handler
from mesh_stack.config import MeshConfig
from mesh_stack.nag import acknowledge
from mesh_stack.onprem import OnPremConnection, connect_onprem


class Network(Construct):
    """A VPC with public and private subnets in every configured AZ, with flow logs.

    Private subnets hold the Consul servers, their internal NLB and the Lambdas. Public
    subnets hold only the NAT gateways the servers need to download Consul at boot and to
    reach AWS APIs; they never assign public IPs. With `vpc_id` set, the existing VPC is
    looked up instead (this needs an account and a committed cdk.context.json, see README).
    A created VPC gets the on-prem path `onprem_connectivity` asks for (`onprem`: None with
    `none`, which an existing VPC must use: it is assumed routed already).

    log_key: customer-managed KMS key the flow log and VPN tunnel log groups are encrypted with.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: MeshConfig, log_key: kms.IKey
    ) -> None:
        super().__init__(scope, construct_id)
        self.onprem: OnPremConnection | None = None
        if config.vpc_id:
            self.vpc: ec2.IVpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=config.vpc_id)
            return
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.vpc_cidr),
            availability_zones=list(config.zones),
            nat_gateways=len(config.zones),
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="Public",
                    subnet_type=ec2.SubnetType.PUBLIC,
                    cidr_mask=26,
                    map_public_ip_on_launch=False,
                ),
                ec2.SubnetConfiguration(
                    name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22
                ),
            ],
            restrict_default_security_group=True,
        )
        default_sg_handler.confine(self, vpc, log_key=log_key)
        for subnet in vpc.public_subnets:
            acknowledge(
                subnet,
                "NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW",
                "Public subnets hold only the NAT gateways; no instance, load balancer "
                "or Lambda is placed in them and they never assign public IPs.",
            )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=log_key,
        )
        role = iam.Role(
            self,
            "FlowLogRole",
            assumed_by=iam.ServicePrincipal("vpc-flow-logs.amazonaws.com"),
            description="Lets VPC Flow Logs write into the flow log group only",
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs, role),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        acknowledge(
            role,
            "NIST.800.53.R5-IAMNoInlinePolicy",
            "CDK-generated policy attached to this role only, scoped to the flow log "
            "group; a managed policy would grant the same to no one else.",
        )
        self.vpc = vpc
        self.flow_log_group = flow_logs
        self.onprem = connect_onprem(self, config=config, vpc=vpc, log_key=log_key)
