"""The network path to on-prem: what `onprem_connectivity` adds to the template, and nothing else.

Whole-app synths (with both nag packs) for the VPN and transit gateway paths; the default app
comes from the session fixture. Small stacks cover the VPN's BGP variants.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import assertions
from aws_cdk import aws_ec2 as ec2

from app import build_app
from mesh_stack.config import AMAZON_SIDE_ASN, ConfigError, MeshConfig
from mesh_stack.keys import Keys
from mesh_stack.network import Network
from mesh_stack.onprem import OnPremVpn
from mesh_stack.onprem_contract import DH_GROUPS, ENCRYPTION, INTEGRITY
from mesh_stack.ports import ENVOY_INBOUND_PORTS
from tests.conftest import cdk_json_context
from tests.infra.conftest import Synthesized
from tools.nag_gate import unacknowledged

ONPREM = ["192.168.0.0/16", "172.20.0.0/16"]
DEVICE_IP = "44.192.10.20"
TGW = "tgw-0123456789abcdef0"
PATH_TYPES = {
    "AWS::EC2::VPNGateway",
    "AWS::EC2::CustomerGateway",
    "AWS::EC2::VPNConnection",
    "AWS::EC2::VPNConnectionRoute",
    "AWS::EC2::VPNGatewayRoutePropagation",
    "AWS::EC2::TransitGatewayAttachment",
    "AWS::EC2::TransitGatewayVpcAttachment",
}


@dataclass
class Synth:
    outdir: Path
    stack: cdk.Stack
    network: Network
    template: dict[str, Any]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}

    def only(self, kind: str) -> tuple[str, dict[str, Any]]:
        (item,) = self.of_type(kind).items()
        return item

    def route_tables(self, subnets: list[ec2.ISubnet]) -> set[str]:
        return {self.stack.resolve(s.route_table.route_table_id)["Ref"] for s in subnets}


def synth_app(outdir: Path, **context: object) -> Synth:
    app = build_app({**cdk_json_context(), "onprem_cidrs": ONPREM, **context}, str(outdir))
    app.synth()  # raises on any unacknowledged AwsSolutions / NIST 800-53 R5 finding
    stack = app.node.find_child("consul-mesh-dev")
    assert isinstance(stack, cdk.Stack)
    network = stack.node.find_child("Network")
    assert isinstance(network, Network)
    template = json.loads((outdir / "consul-mesh-dev.template.json").read_text())
    return Synth(outdir, stack, network, template)


@pytest.fixture(scope="module")
def vpn(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth_app(
        tmp_path_factory.mktemp("vpn"),
        onprem_connectivity="vpn",
        vpn_customer_gateway_ip=DEVICE_IP,
    )


@pytest.fixture(scope="module")
def tgw(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth_app(
        tmp_path_factory.mktemp("tgw"),
        onprem_connectivity="transit_gateway",
        transit_gateway_id=TGW,
    )


def onprem_routes(synth: Synth, target_key: str, target: object) -> list[dict[str, Any]]:
    return [
        r
        for r in synth.of_type("AWS::EC2::Route").values()
        if r["Properties"].get(target_key) == target
    ]


def assert_every_private_table_routes_every_cidr(
    synth: Synth, target_key: str, target: object, attachment: str
) -> None:
    vpc = synth.network.vpc
    private = synth.route_tables(vpc.private_subnets)
    assert len(private) == 3
    routes = onprem_routes(synth, target_key, target)
    pairs = {
        (r["Properties"]["RouteTableId"]["Ref"], r["Properties"]["DestinationCidrBlock"])
        for r in routes
    }
    assert pairs == set(itertools.product(private, ONPREM))
    assert len(routes) == len(pairs)  # one route per pair, no duplicates
    # A route to a gateway fails until the gateway is attached: each waits for the attachment.
    assert all(attachment in r.get("DependsOn", []) for r in routes)
    # Public subnets hold only the NAT gateways: nothing routes them to on-prem.
    public = synth.route_tables(vpc.public_subnets)
    assert not public & {r["Properties"]["RouteTableId"]["Ref"] for r in routes}


# --- VPN ---------------------------------------------------------------------------------------


def test_vpn_routes_every_onprem_cidr_from_every_private_route_table_to_the_gateway(
    vpn: Synth,
) -> None:
    gateway, props = vpn.only("AWS::EC2::VPNGateway")
    assert props["Properties"] == {
        "Type": "ipsec.1",
        "AmazonSideAsn": AMAZON_SIDE_ASN,
        "Tags": [{"Key": "Name", "Value": "consul-mesh-dev/Network/OnPremVpn"}],
    }
    attachments = [
        k
        for k, v in vpn.of_type("AWS::EC2::VPCGatewayAttachment").items()
        if v["Properties"].get("VpnGatewayId") == {"Ref": gateway}
    ]
    assert len(attachments) == 1
    assert_every_private_table_routes_every_cidr(vpn, "GatewayId", {"Ref": gateway}, attachments[0])


def test_static_vpn_routes_each_onprem_cidr_into_the_tunnels(vpn: Synth) -> None:
    customer, cgw = vpn.only("AWS::EC2::CustomerGateway")
    assert cgw["Properties"]["IpAddress"] == DEVICE_IP
    assert cgw["Properties"]["Type"] == "ipsec.1"
    connection, conn = vpn.only("AWS::EC2::VPNConnection")
    gateway, _ = vpn.only("AWS::EC2::VPNGateway")
    assert conn["Properties"]["CustomerGatewayId"] == {"Ref": customer}
    assert conn["Properties"]["VpnGatewayId"] == {"Ref": gateway}
    assert conn["Properties"]["StaticRoutesOnly"] is True
    static = {
        v["Properties"]["DestinationCidrBlock"]
        for v in vpn.of_type("AWS::EC2::VPNConnectionRoute").values()
        if v["Properties"]["VpnConnectionId"] == {"Ref": connection}
    }
    assert static == set(ONPREM)
    # No pre-shared key in the template: AWS generates them.
    assert "PreSharedKey" not in json.dumps(conn)


def test_customer_gateways_of_two_stacks_for_one_device_do_not_collide(tmp_path: Path) -> None:
    # GIVEN two environments (dev and prod) whose VPNs end on the same on-prem device, static
    # routing (so both customer gateways have ASN 65000)
    app = cdk.App(context=cdk_json_context(), outdir=str(tmp_path))
    config = MeshConfig.from_context(
        {"onprem_connectivity": "vpn", "vpn_customer_gateway_ip": DEVICE_IP}
    )
    stacks = [
        cdk.Stack(app, name, env=cdk.Environment(region="us-east-1"))
        for name in ("consul-mesh-dev", "consul-mesh-prod")
    ]
    for stack in stacks:
        Network(stack, "Network", config=config, log_key=Keys(stack, "Keys").key)
    gateways = {}
    for stack in stacks:
        template = assertions.Template.from_stack(stack)
        (cgw,) = template.find_resources("AWS::EC2::CustomerGateway").values()
        gateways[stack.stack_name] = cgw["Properties"]
    # THEN each customer gateway carries its stack's name as device name: CreateCustomerGateway
    # returns the existing gateway for an identical type, IP address and ASN unless the device
    # names differ (EC2 API reference), so neither stack takes over the other's.
    for name, props in gateways.items():
        assert (props["IpAddress"], props["BgpAsn"]) == (DEVICE_IP, 65000)
        assert props["DeviceName"] == name


def test_both_tunnels_accept_only_ikev2_strong_ciphers_and_log_to_an_encrypted_group(
    vpn: Synth,
) -> None:
    _, conn = vpn.only("AWS::EC2::VPNConnection")
    tunnels = conn["Properties"]["VpnTunnelOptionsSpecifications"]
    assert len(tunnels) == 2
    log_group, group = _tunnel_log_group(vpn)
    assert "KmsKeyId" in group["Properties"]
    assert group["Properties"]["RetentionInDays"] == 365

    def values(tunnel: dict[str, Any], key: str) -> list[object]:
        return [item["Value"] for item in tunnel[key]]

    for tunnel in tunnels:
        assert values(tunnel, "IKEVersions") == ["ikev2"]
        for phase in ("Phase1", "Phase2"):
            assert values(tunnel, f"{phase}EncryptionAlgorithms") == list(ENCRYPTION)
            assert values(tunnel, f"{phase}IntegrityAlgorithms") == list(INTEGRITY)
            assert values(tunnel, f"{phase}DHGroupNumbers") == list(DH_GROUPS)
        groups = set(
            values(tunnel, "Phase1DHGroupNumbers") + values(tunnel, "Phase2DHGroupNumbers")
        )
        # MODP 2048-8192 (14-18) and ECP (19-21) only: no 1024-bit MODP groups 2 and 5, and
        # none of RFC 5114's groups 22-24 (22 is a 1024-bit MODP group).
        assert groups == set(range(14, 22))
        logs = tunnel["LogOptions"]["CloudwatchLogOptions"]
        assert logs["LogEnabled"] is True
        arn = json.dumps(logs["LogGroupArn"])
        assert log_group in arn
        assert ":log-group:" in arn
        assert "BgpLogEnabled" not in logs  # static routing: no BGP session to log


def _tunnel_log_group(synth: Synth) -> tuple[str, dict[str, Any]]:
    assert synth.network.onprem is not None
    vpn = synth.network.onprem.path
    assert isinstance(vpn, OnPremVpn)
    logical_id = synth.stack.resolve(vpn.tunnel_logs.log_group_name)["Ref"]
    return logical_id, synth.template["Resources"][logical_id]


def test_tunnel_logs_go_to_a_vended_logs_group_unique_per_stack_creation(vpn: Synth) -> None:
    # GIVEN the VPN's tunnel log group
    _, group = _tunnel_log_group(vpn)
    # THEN its name starts with /aws/vendedlogs/, so the VPN service does not grow the account's
    # CloudWatch Logs resource policy (5,120 characters) with it (S2S VPN guide, VPN logs)...
    name = group["Properties"]["LogGroupName"]
    assert name == {
        "Fn::Join": [
            "",
            [
                "/aws/vendedlogs/consul-mesh-dev/vpn-tunnels/",
                # ...and ends with the stack's UUID: the group is retained when the stack is
                # deleted, and the next creation of the stack must not collide with it.
                {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]},
            ],
        ]
    }


def test_vpn_outputs_the_connection_and_where_to_get_the_device_configuration(vpn: Synth) -> None:
    connection, _ = vpn.only("AWS::EC2::VPNConnection")
    outputs = vpn.template["Outputs"]
    assert outputs["OnPremVpnConnectionId"]["Value"] == {"Ref": connection}
    hint = json.dumps(outputs["OnPremVpnDeviceConfiguration"]["Value"])
    assert "Download configuration" in hint
    assert "aws ec2 get-vpn-connection-device-sample-configuration --vpn-connection-id" in hint
    assert hint.count(f'{{"Ref": "{connection}"}}') == 2
    assert "OnPremTransitGatewayAttachmentId" not in outputs


@pytest.mark.parametrize(
    ("asn", "prop"),
    [(65010, "BgpAsn"), (2_147_483_647, "BgpAsn"), (4_200_000_000, "BgpAsnExtended")],
)
def test_bgp_vpn_learns_routes_dynamically_and_keeps_the_table_routes(
    tmp_path: Path, asn: int, prop: str
) -> None:
    # GIVEN a VPN whose device speaks BGP
    app = cdk.App(context=cdk_json_context(), outdir=str(tmp_path))
    stack = cdk.Stack(app, "OnPremTest", env=cdk.Environment(region="us-east-1"))
    config = MeshConfig.from_context(
        {
            "onprem_connectivity": "vpn",
            "vpn_customer_gateway_ip": DEVICE_IP,
            "vpn_bgp_asn": asn,
            "onprem_cidrs": ONPREM,
        }
    )
    network = Network(stack, "Network", config=config, log_key=Keys(stack, "Keys").key)
    template = assertions.Template.from_stack(stack)
    # THEN the customer gateway carries the ASN in the property its size needs...
    other = ({"BgpAsn", "BgpAsnExtended"} - {prop}).pop()
    template.has_resource_properties(
        "AWS::EC2::CustomerGateway", {prop: asn, other: assertions.Match.absent()}
    )
    # ...the connection routes dynamically, with no static VPN routes, and logs BGP too...
    template.has_resource_properties("AWS::EC2::VPNConnection", {"StaticRoutesOnly": False})
    template.resource_count_is("AWS::EC2::VPNConnectionRoute", 0)
    connection = template.to_json()["Resources"]
    (conn,) = (v for v in connection.values() if v["Type"] == "AWS::EC2::VPNConnection")
    for tunnel in conn["Properties"]["VpnTunnelOptionsSpecifications"]:
        assert tunnel["LogOptions"]["CloudwatchLogOptions"]["BgpLogEnabled"] is True
    # ...and every private route table still sends each on-prem CIDR to the gateway.
    assert network.onprem is not None
    assert len(network.onprem.routes) == 3 * len(ONPREM)


def test_fails_when_the_device_asn_is_the_amazon_side_asn(tmp_path: Path) -> None:
    stack = cdk.Stack(cdk.App(outdir=str(tmp_path)), "OnPremTest")
    vpc = ec2.Vpc(stack, "Vpc")
    with pytest.raises(
        ValueError, match=f"bgp_asn must differ from the Amazon side ASN {AMAZON_SIDE_ASN}"
    ):
        OnPremVpn(
            stack,
            "OnPrem",
            vpc=vpc,
            onprem_cidrs=ONPREM,
            customer_gateway_ip=DEVICE_IP,
            bgp_asn=AMAZON_SIDE_ASN,
            log_key=Keys(stack, "Keys").key,
        )


# --- transit gateway ---------------------------------------------------------------------------


def test_transit_gateway_attaches_the_private_subnets(tgw: Synth) -> None:
    _, props = tgw.only("AWS::EC2::TransitGatewayAttachment")
    vpc = tgw.network.vpc
    assert props["Properties"]["TransitGatewayId"] == TGW
    assert props["Properties"]["VpcId"] == tgw.stack.resolve(vpc.vpc_id)
    # One subnet per AZ, the private ones, where the servers, the NLB and the Lambdas live.
    subnets = [tgw.stack.resolve(s.subnet_id) for s in vpc.private_subnets]
    assert props["Properties"]["SubnetIds"] == subnets
    assert not tgw.of_type("AWS::EC2::VPNGateway")


def test_transit_gateway_routes_every_onprem_cidr_from_every_private_route_table(
    tgw: Synth,
) -> None:
    attachment, _ = tgw.only("AWS::EC2::TransitGatewayAttachment")
    assert_every_private_table_routes_every_cidr(tgw, "TransitGatewayId", TGW, attachment)


def test_transit_gateway_outputs_the_attachment(tgw: Synth) -> None:
    attachment, _ = tgw.only("AWS::EC2::TransitGatewayAttachment")
    outputs = tgw.template["Outputs"]
    assert outputs["OnPremTransitGatewayAttachmentId"]["Value"] == {"Ref": attachment}
    assert "OnPremVpnConnectionId" not in outputs


# --- every variant -----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["vpn", "tgw"])
def test_path_variants_pass_nag_and_cfn_lint(request: pytest.FixtureRequest, fixture: str) -> None:
    synth: Synth = request.getfixturevalue(fixture)
    assert unacknowledged(synth.outdir) == []
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cfn-lint"),
            "--format",
            "parseable",
            str(synth.outdir / "consul-mesh-dev.template.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ":E" in line]
    assert errors == [], "\n".join(errors)
    assert result.returncode != 1, result.stderr  # 1: cfn-lint could not run
    assert result.returncode & 2 == 0, result.stdout


def _server_egress(template: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    (servers,) = (
        k
        for k, v in template["Resources"].items()
        if v["Type"] == "AWS::EC2::SecurityGroup"
        and v["Properties"]["GroupDescription"].startswith("Consul servers")
    )
    return {
        (r["IpProtocol"], r["FromPort"], r["ToPort"], r["CidrIp"])
        for r in template["Resources"][servers]["Properties"].get("SecurityGroupEgress", [])
    }


@pytest.mark.parametrize("fixture", ["vpn", "tgw"])
def test_servers_may_check_exactly_the_envoy_range_of_each_onprem_cidr(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    synth: Synth = request.getfixturevalue(fixture)
    low, high = ENVOY_INBOUND_PORTS
    onprem = {rule for rule in _server_egress(synth.template) if rule[3] != "0.0.0.0/0"}
    assert onprem == {("tcp", low, high, cidr) for cidr in ONPREM}


def test_default_synth_adds_no_path_and_only_the_check_rule(synthesized: Synthesized) -> None:
    # GIVEN the default configuration (onprem_connectivity=none)
    template = synthesized.templates()["consul-mesh-dev"]
    resources = template["Resources"].values()
    # THEN no gateway, attachment or VPN exists...
    assert not {r["Type"] for r in resources} & PATH_TYPES
    # ...private route tables hold only their NAT default route...
    routes = [r["Properties"] for r in resources if r["Type"] == "AWS::EC2::Route"]
    assert {r["DestinationCidrBlock"] for r in routes} == {"0.0.0.0/0"}
    assert not any("TransitGatewayId" in r for r in routes)
    assert not any(name.startswith("OnPrem") for name in template["Outputs"])
    # ...and the servers' egress opens only HTTPS and the Envoy range of the default CIDR.
    low, high = ENVOY_INBOUND_PORTS
    assert _server_egress(template) == {
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("tcp", low, high, "192.168.0.0/16"),
    }


def test_switching_paths_retargets_each_route_in_place(vpn: Synth, tgw: Synth) -> None:
    # GIVEN the same VPC and on-prem CIDRs, once with the VPN and once with the transit gateway
    def by_destination(synth: Synth) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
        return {
            (r["Properties"]["RouteTableId"]["Ref"], r["Properties"]["DestinationCidrBlock"]): (
                logical_id,
                r["Properties"],
            )
            for logical_id, r in synth.of_type("AWS::EC2::Route").items()
            if r["Properties"]["DestinationCidrBlock"] in ONPREM
        }

    via_vpn, via_tgw = by_destination(vpn), by_destination(tgw)
    assert via_vpn.keys() == via_tgw.keys()
    assert len(via_vpn) == 3 * len(ONPREM)
    for key, (vpn_id, vpn_props) in via_vpn.items():
        tgw_id, tgw_props = via_tgw[key]
        # THEN each (route table, CIDR) route has one logical ID on both paths, so switching
        # updates its target in place (AWS::EC2::Route: only RouteTableId and the destination
        # are create-only) instead of creating a second route for the destination, which EC2
        # refuses while the old one exists (RouteAlreadyExists)...
        assert vpn_id == tgw_id
        # ...and only the target differs.
        assert {
            k for k in vpn_props.keys() | tgw_props.keys() if vpn_props.get(k) != tgw_props.get(k)
        } == {
            "GatewayId",
            "TransitGatewayId",
        }


def test_path_resources_keep_their_logical_ids(vpn: Synth, tgw: Synth) -> None:
    # Replacing the VPN connection or either gateway changes the tunnel addresses and keys,
    # or the attachment the network team routes to: both mean work on the on-prem side.
    def ids(synth: Synth, *kinds: str) -> set[str]:
        return {k for kind in kinds for k in synth.of_type(kind)}

    assert ids(
        vpn, "AWS::EC2::VPNGateway", "AWS::EC2::CustomerGateway", "AWS::EC2::VPNConnection"
    ) == {
        "NetworkOnPremVpnGateway64A1D6A1",
        "NetworkOnPremVpnCustomerGateway67EF30EC",
        "NetworkOnPremVpnConnection3EFB1A75",
    }
    assert ids(tgw, "AWS::EC2::TransitGatewayAttachment") == {
        "NetworkOnPremTransitGatewayAttachment39A5FEFD"
    }
    # Switching paths must not ask CloudFormation to change a resource's type.
    vpn_types = {k: v["Type"] for k, v in vpn.template["Resources"].items()}
    tgw_types = {k: v["Type"] for k, v in tgw.template["Resources"].items()}
    assert {k for k in vpn_types.keys() & tgw_types.keys() if vpn_types[k] != tgw_types[k]} == set()


# --- Operators' networks -----------------------------------------------------------------------

OPERATOR_OUTSIDE = "10.9.0.0/24"  # outside the VPC (10.40.0.0/16) and outside ONPREM
OPERATOR_BASTION = "10.40.250.0/24"  # inside the VPC: its local route answers it
OPERATOR_ONPREM = "192.168.7.0/24"  # inside an on-prem CIDR: already routed with it


def _path_template(path: str, **context: object) -> assertions.Template:
    stack = cdk.Stack(cdk.App(context=cdk_json_context()), "OnPremTest")
    paths: dict[str, dict[str, object]] = {
        "static": {"onprem_connectivity": "vpn", "vpn_customer_gateway_ip": DEVICE_IP},
        "bgp": {
            "onprem_connectivity": "vpn",
            "vpn_customer_gateway_ip": DEVICE_IP,
            "vpn_bgp_asn": 65010,
        },
        "tgw": {"onprem_connectivity": "transit_gateway", "transit_gateway_id": TGW},
    }
    config = MeshConfig.from_context({"onprem_cidrs": ONPREM, **paths[path], **context})
    Network(stack, "Network", config=config, log_key=Keys(stack, "Keys").key)
    return assertions.Template.from_stack(stack)


@pytest.mark.parametrize("path", ["static", "bgp", "tgw"])
def test_operators_outside_the_vpc_and_onprem_are_routed_like_onprem(path: str) -> None:
    # GIVEN a managed path and operators in three places: outside everything, on a bastion
    # subnet of the VPC, and inside an on-prem CIDR
    operators = [OPERATOR_OUTSIDE, OPERATOR_BASTION, OPERATOR_ONPREM]
    template = _path_template(path, operator_cidrs=operators)
    routes = template.find_resources("AWS::EC2::Route")
    destinations = [
        r["Properties"]["DestinationCidrBlock"]
        for r in routes.values()
        if r["Properties"]["DestinationCidrBlock"] != "0.0.0.0/0"  # NAT and internet gateway
    ]
    # THEN every private route table (3) sends the outside operators' network to the gateway,
    # like each on-prem CIDR, and nothing else gets a second route
    assert sorted(destinations) == sorted([*ONPREM, OPERATOR_OUTSIDE] * 3)
    # ...a static VPN also routes it into the tunnels (BGP learns it from the device)...
    static = {
        v["Properties"]["DestinationCidrBlock"]
        for v in template.find_resources("AWS::EC2::VPNConnectionRoute").values()
    }
    assert static == ({*ONPREM, OPERATOR_OUTSIDE} if path == "static" else set())
    # ...and the on-prem routes keep their logical IDs (stateless, but no replacement churn).
    without = _path_template(path).find_resources("AWS::EC2::Route")
    assert set(without) < set(routes)
    assert all(routes[k] == v for k, v in without.items())


def test_an_operator_network_across_the_vpc_edge_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"operator_cidrs.*10\.40\.0\.0/15.*overlaps vpc_cidr"):
        _path_template("tgw", operator_cidrs=["10.40.0.0/15"])
