"""ConsulFleet template: what an operator and a security reviewer rely on."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import assertions
from aws_cdk import aws_ec2 as ec2
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from mesh_stack.config import MeshConfig
from mesh_stack.consul_fleet import ASSETS, ConsulFleet
from mesh_stack.keys import Keys
from mesh_stack.network import Network
from mesh_stack.ports import ENVOY_INBOUND_PORTS
from tests.conftest import cdk_json_context

ONPREM = "192.168.0.0/16"
IMAGE = "ami-0123456789abcdef0"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Built:
    stack: cdk.Stack
    fleet: ConsulFleet
    registrar: ec2.SecurityGroup
    template: assertions.Template
    json: dict[str, Any]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.json["Resources"].items() if v["Type"] == kind}


def build(tmp_path: Path, *, nag: bool = False, **kwargs: Any) -> tuple[cdk.App, Built]:
    app = cdk.App(context=cdk_json_context(), outdir=str(tmp_path))
    stack = cdk.Stack(app, "FleetTest", env=cdk.Environment(region="us-east-1"))
    config = MeshConfig.from_context({})
    keys = Keys(stack, "Keys")
    vpc = Network(stack, "Network", config=config, log_key=keys.key).vpc
    kwargs.setdefault("image_id", IMAGE)
    fleet = ConsulFleet(stack, "ConsulFleet", vpc=vpc, consul_version="1.21.4", **kwargs)
    fleet.allow_clients(ec2.Peer.ipv4(ONPREM), "on-prem ECS Anywhere hosts")
    fleet.allow_checks_to(ec2.Peer.ipv4(ONPREM), ENVOY_INBOUND_PORTS, "on-prem Envoy listeners")
    registrar = ec2.SecurityGroup(stack, "Registrar", vpc=vpc, allow_all_outbound=False)
    fleet.allow_from(registrar)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), NIST80053R5Checks(app))
    template = assertions.Template.from_stack(stack)
    return app, Built(stack, fleet, registrar, template, template.to_json())


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("default"))[1]


@pytest.fixture(scope="module")
def five_plaintext(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("five"), server_count=5, plaintext_listeners=True)[1]


# --- servers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "count"), [("default", 3), ("five_plaintext", 5)])
def test_group_holds_exactly_the_voters_spread_over_three_azs(
    request: pytest.FixtureRequest, fixture: str, count: int
) -> None:
    built: Built = request.getfixturevalue(fixture)
    (asg,) = built.resources("AWS::AutoScaling::AutoScalingGroup").values()
    props = asg["Properties"]
    assert props["MinSize"] == props["MaxSize"] == str(count)
    # One private subnet per AZ, three AZs: the group balances, so at most 2 per AZ for 5.
    subnets = {s["Ref"] for s in props["VPCZoneIdentifier"]}
    zones = {built.json["Resources"][s]["Properties"]["AvailabilityZone"] for s in subnets}
    assert len(subnets) == len(zones) == 3
    assert -(-count // len(zones)) <= 2
    assert asg["CreationPolicy"]["ResourceSignal"]["Count"] == count


@pytest.mark.parametrize(("fixture", "count"), [("default", 3), ("five_plaintext", 5)])
def test_rolling_update_replaces_one_server_at_a_time_and_waits_for_its_signal(
    request: pytest.FixtureRequest, fixture: str, count: int
) -> None:
    built: Built = request.getfixturevalue(fixture)
    (asg,) = built.resources("AWS::AutoScaling::AutoScalingGroup").values()
    rolling = asg["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MaxBatchSize"] == 1
    assert rolling["MinInstancesInService"] == count - 1
    assert rolling["WaitOnResourceSignals"] is True


def user_data(built: Built) -> str:
    (lt,) = built.resources("AWS::EC2::LaunchTemplate").values()
    parts = lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


def test_signal_is_sent_only_after_the_health_gate(default: Built) -> None:
    text = user_data(default)
    gate = re.search(r"if (.*); then signal SUCCESS; else failed; exit 1; fi", text)
    assert gate is not None
    # `failed` signals FAILURE, then takes the instance out of service (set-instance-health)
    assert re.search(r"^failed\(\) \{ signal FAILURE \|\| true; unhealthy; \}$", text, re.M)
    assert re.search(r"consul_bootstrap.sh && timeout \d+ python3", gate.group(1))
    assert 'health-gate "consul-server-$INSTANCE_ID" 3' in gate.group(1)
    logical_id = default.stack.get_logical_id(
        default.fleet.auto_scaling_group.node.default_child  # type: ignore[arg-type]
    )
    assert f"--logical-resource-id {default.stack.resolve(logical_id)}" in text


def test_user_data_carries_the_rendered_server_config(default: Built) -> None:
    text = user_data(default)
    body = text.split("cat > /etc/consul-fleet/consul.json <<'CONSUL_FLEET_EOF'\n")[1]
    config = json.loads(body.split("\nCONSUL_FLEET_EOF")[0])
    assert config["acl"]["default_policy"] == "deny"
    assert config["bootstrap_expect"] == 3
    (asg,) = default.resources("AWS::AutoScaling::AutoScalingGroup").values()
    (tag,) = [t for t in asg["Properties"]["Tags"] if t["Key"] == "consul-mesh:fleet"]
    assert tag["PropagateAtLaunch"] is True
    assert f"tag_value={tag['Value']} " in config["retry_join"][0]


def test_launch_template_requires_imdsv2_and_encrypts_a_gp3_volume(default: Built) -> None:
    default.template.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": assertions.Match.object_like(
                {
                    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                    "Monitoring": {"Enabled": True},
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": assertions.Match.object_like(
                                {"Encrypted": True, "VolumeType": "gp3"}
                            ),
                        }
                    ],
                }
            )
        },
    )
    (lt,) = default.resources("AWS::EC2::LaunchTemplate").values()
    assert "KeyName" not in lt["Properties"]["LaunchTemplateData"]


def test_the_image_is_the_one_given_not_a_deploy_time_ssm_parameter(default: Built) -> None:
    # GIVEN a fleet built with an image ID
    (lt,) = default.resources("AWS::EC2::LaunchTemplate").values()
    # THEN the launch template carries it literally: a public SSM parameter would be resolved
    # again at every deploy and roll the fleet whenever AWS publishes an image.
    assert lt["Properties"]["LaunchTemplateData"]["ImageId"] == IMAGE
    parameters = default.json.get("Parameters", {}).values()
    assert not [p for p in parameters if "AWS::EC2::Image::Id" in p["Type"]]


def test_fails_when_the_image_is_not_an_ami_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"image_id must be an AMI ID.*got latest"):
        build(tmp_path, image_id="latest")


# --- load balancer ---------------------------------------------------------------------------


def listener_ports(built: Built) -> set[int]:
    return {
        listener["Properties"]["Port"]
        for listener in built.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    }


def test_nlb_is_internal_cross_zone_and_tls_only_by_default(default: Built) -> None:
    assert listener_ports(default) == {8501, 8503}
    for listener in default.resources("AWS::ElasticLoadBalancingV2::Listener").values():
        assert listener["Properties"]["Protocol"] == "TCP"
    default.template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {
            "Scheme": "internal",
            "Type": "network",
            "LoadBalancerAttributes": assertions.Match.array_with(
                [{"Key": "load_balancing.cross_zone.enabled", "Value": "true"}]
            ),
        },
    )


def test_plaintext_opt_in_adds_8500_and_8502(five_plaintext: Built) -> None:
    assert listener_ports(five_plaintext) == {8500, 8501, 8502, 8503}


def test_targets_use_tcp_health_checks_without_client_ip_preservation(default: Built) -> None:
    groups = default.resources("AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert {g["Properties"]["Port"] for g in groups} == {8501, 8503}
    for group in groups:
        props = group["Properties"]
        assert props["HealthCheckProtocol"] == "TCP"
        assert {"Key": "preserve_client_ip.enabled", "Value": "false"} in props[
            "TargetGroupAttributes"
        ]


def test_addresses_clients_use_point_at_the_nlb(default: Built) -> None:
    resolve = default.stack.resolve
    (nlb,) = default.resources("AWS::ElasticLoadBalancingV2::LoadBalancer")
    dns = {"Fn::GetAtt": [nlb, "DNSName"]}
    assert resolve(default.fleet.https_address) == {"Fn::Join": ["", ["https://", dns, ":8501"]]}
    assert resolve(default.fleet.grpc_host) == dns
    assert resolve(default.fleet.tls_server_name) == dns
    assert default.fleet.grpc_port == 8503
    # ...and that same name is signed into every server certificate at boot.
    assert "NLB_DNS_NAME=" in user_data(default)
    assert '-additional-dnsname "$NLB_DNS_NAME"' in (ASSETS / "consul_bootstrap.sh").read_text()


# --- security groups -------------------------------------------------------------------------


def ingress(built: Built) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in built.resources("AWS::EC2::SecurityGroupIngress").values()]
    for group in built.resources("AWS::EC2::SecurityGroup").values():
        rules += group["Properties"].get("SecurityGroupIngress", [])
    return rules


def group_id(built: Built, construct: ec2.SecurityGroup) -> str:
    return str(built.stack.resolve(construct.security_group_id)["Fn::GetAtt"][0])


def test_nothing_is_open_to_the_internet(default: Built, five_plaintext: Built) -> None:
    for built in (default, five_plaintext):
        for rule in ingress(built):
            assert rule.get("CidrIp") != "0.0.0.0/0", rule
            assert rule.get("CidrIpv6") != "::/0", rule


def test_servers_talk_raft_and_gossip_only_among_themselves(default: Built) -> None:
    servers = group_id(default, default.fleet.server_security_group)
    balancer = group_id(default, default.fleet.load_balancer_security_group)
    to_servers = [
        r for r in ingress(default) if r.get("GroupId", {}).get("Fn::GetAtt", [""])[0] == servers
    ]
    peer = {
        (r["IpProtocol"], r["FromPort"])
        for r in to_servers
        if r["SourceSecurityGroupId"]["Fn::GetAtt"][0] == servers
    }
    assert peer == {("tcp", 8300), ("tcp", 8301), ("udp", 8301)}
    from_nlb = {
        r["FromPort"] for r in to_servers if r["SourceSecurityGroupId"]["Fn::GetAtt"][0] == balancer
    }
    assert from_nlb == {8501, 8503}
    assert all("CidrIp" not in r for r in to_servers)


def test_clients_reach_only_the_tls_ports_through_the_nlb(default: Built) -> None:
    balancer = group_id(default, default.fleet.load_balancer_security_group)
    registrar = group_id(default, default.registrar)
    rules = [
        r for r in ingress(default) if r.get("GroupId", {}).get("Fn::GetAtt", [""])[0] == balancer
    ]
    rules += default.resources("AWS::EC2::SecurityGroup")[balancer]["Properties"].get(
        "SecurityGroupIngress", []
    )
    onprem = {r["FromPort"] for r in rules if r.get("CidrIp") == ONPREM}
    lambdas = {
        r["FromPort"]
        for r in rules
        if r.get("SourceSecurityGroupId", {}).get("Fn::GetAtt", [""])[0] == registrar
    }
    assert onprem == lambdas == {8501, 8503}


def egress(built: Built, group: str) -> list[dict[str, Any]]:
    """Egress rules of the group with logical id `group`, inline or standalone."""
    rules = list(built.json["Resources"][group]["Properties"].get("SecurityGroupEgress", []))
    rules += [
        r["Properties"]
        for r in built.resources("AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"]["Fn::GetAtt"][0] == group
    ]
    return rules


def test_servers_dial_only_https_their_peers_and_onprem_checks(default: Built) -> None:
    # GIVEN the fleet wired like the stack does (clients and checks for one on-prem CIDR)
    servers = group_id(default, default.fleet.server_security_group)
    # WHEN we list where the servers may open connections
    rules = egress(default, servers)
    destinations = {
        (
            r["IpProtocol"],
            r["FromPort"],
            r["ToPort"],
            r.get("CidrIp") or r["DestinationSecurityGroupId"]["Fn::GetAtt"][0],
        )
        for r in rules
    }
    # THEN: HTTPS anywhere (AWS APIs, HashiCorp releases, via NAT), Raft and gossip to peers,
    # and exactly the Envoy listener range to on-prem; no all-traffic rule.
    low, high = ENVOY_INBOUND_PORTS
    assert destinations == {
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("tcp", 8300, 8300, servers),
        ("tcp", 8301, 8301, servers),
        ("udp", 8301, 8301, servers),
        ("tcp", low, high, ONPREM),
    }
    # Every rule says why it exists.
    assert all(len(r.get("Description", "")) > 15 for r in rules), rules


def test_the_nlb_dials_only_the_servers(default: Built) -> None:
    servers = group_id(default, default.fleet.server_security_group)
    balancer = group_id(default, default.fleet.load_balancer_security_group)
    rules = egress(default, balancer)
    assert {r["DestinationSecurityGroupId"]["Fn::GetAtt"][0] for r in rules} == {servers}


def test_fails_when_checks_are_opened_to_the_whole_internet(default: Built) -> None:
    with pytest.raises(ValueError, match=r"allow_checks_to refuses 0\.0\.0\.0/0"):
        default.fleet.allow_checks_to(ec2.Peer.any_ipv4(), ENVOY_INBOUND_PORTS, "everyone")


@pytest.mark.parametrize("ports", [(0, 10), (20999, 20000), (60000, 70000)])
def test_fails_when_the_check_port_range_is_not_a_port_range(
    default: Built, ports: tuple[int, int]
) -> None:
    with pytest.raises(ValueError, match=r"port range within 1-65535"):
        default.fleet.allow_checks_to(ec2.Peer.ipv4("10.9.0.0/16"), ports, "hosts")


def test_fails_when_a_client_peer_is_the_whole_internet(default: Built) -> None:
    with pytest.raises(ValueError, match=r"allow_clients refuses 0\.0\.0\.0/0"):
        default.fleet.allow_clients(ec2.Peer.any_ipv4(), "everyone")


# --- secrets, IAM, snapshots -----------------------------------------------------------------


def test_every_secret_is_encrypted_with_the_fleets_own_key(default: Built) -> None:
    secrets = default.resources("AWS::SecretsManager::Secret")
    assert len(secrets) == 6
    key = default.stack.resolve(default.fleet.kms_key.key_arn)
    for secret in secrets.values():
        assert secret["Properties"]["KmsKeyId"] == key
        assert secret["Properties"]["SecretString"].startswith("pending:")
    default.template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def statements(built: Built) -> list[dict[str, Any]]:
    role = group = built.stack.resolve(built.fleet.auto_scaling_group.role.role_name)["Ref"]
    result: list[dict[str, Any]] = []
    for policy in built.resources("AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            result += policy["Properties"]["PolicyDocument"]["Statement"]
    assert group
    return result


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_iam_is_scoped_to_join_own_secrets_own_key_snapshots_and_signal(default: Built) -> None:
    stmts = statements(default)
    wildcard = [s for s in stmts if "*" in as_list(s["Resource"])]
    assert [as_list(s["Action"]) for s in wildcard] == [
        ["ec2:DescribeInstances"],
        ["cloudwatch:PutMetricData"],
    ]
    assert wildcard[1]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "ConsulMesh/Fleet"}
    }
    secret_arns = {
        json.dumps(default.stack.resolve(s.secret_arn)) for s in default.fleet._secrets.values()
    }
    for stmt in stmts:
        actions = as_list(stmt["Action"])
        if any(a.startswith("secretsmanager:") for a in actions):
            assert {json.dumps(r) for r in as_list(stmt["Resource"])} <= secret_arns
        if "s3:PutObject" in actions:
            (resource,) = as_list(stmt["Resource"])
            assert resource["Fn::Join"][1][-1] == "/snapshots/*"
        if any(a.startswith("kms:") for a in actions):
            assert stmt["Resource"] == default.stack.resolve(default.fleet.kms_key.key_arn)
        if "cloudformation:SignalResource" in actions:
            assert stmt["Resource"] == {"Ref": "AWS::StackId"}


def test_snapshot_bucket_is_private_encrypted_versioned_and_expires(default: Built) -> None:
    bucket = default.stack.resolve(default.fleet.snapshot_bucket.bucket_name)["Ref"]
    props = default.json["Resources"][bucket]["Properties"]
    rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 30
    assert "LoggingConfiguration" in props
    default.template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket},
            "PolicyDocument": {
                "Statement": assertions.Match.array_with(
                    [
                        assertions.Match.object_like(
                            {
                                "Effect": "Deny",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                ),
                "Version": "2012-10-17",
            },
        },
    )


# --- no secrets anywhere ---------------------------------------------------------------------

SECRET_LOOKING = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "UUID token": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I),
    "32-byte base64 key": re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])"),
}


@pytest.mark.parametrize("fixture", ["default", "five_plaintext"])
def test_no_secret_looking_literal_in_the_template(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    text = json.dumps(request.getfixturevalue(fixture).json)
    for what, pattern in SECRET_LOOKING.items():
        assert not pattern.search(text), what


@pytest.mark.parametrize("asset", sorted(ASSETS.iterdir()), ids=lambda p: p.name)
def test_no_secret_looking_literal_in_the_assets(asset: Path) -> None:
    text = asset.read_text()
    for what, pattern in SECRET_LOOKING.items():
        assert not pattern.search(text), f"{what} in {asset.name}"


def test_the_secret_detector_finds_what_it_looks_for() -> None:
    samples = {
        "private key": "-----BEGIN RSA PRIVATE KEY-----",
        "UUID token": "b1c3e2a4-1d2f-4e5a-9b8c-7d6e5f4a3b2c",
        "32-byte base64 key": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
    }
    for what, sample in samples.items():
        assert SECRET_LOOKING[what].search(f'"x": "{sample}"'), what


# --- contract and checks ---------------------------------------------------------------------


def test_stateful_resources_keep_their_logical_ids(default: Built) -> None:
    ids = {
        name: default.stack.resolve(
            default.stack.get_logical_id(default.fleet.node.find_child(name).node.default_child)
        )  # type: ignore[arg-type]
        for name in (
            "Key",
            "GossipKey",
            "ManagementToken",
            "AgentToken",
            "EsmToken",
            "CertificateAuthority",
            "CaCertificate",
            "SnapshotBucket",
            "AccessLogs",
        )
    }
    assert ids == {
        "Key": "ConsulFleetKey16BD162A",
        "GossipKey": "ConsulFleetGossipKey7BC9C34A",
        "ManagementToken": "ConsulFleetManagementTokenDB7F4636",
        "AgentToken": "ConsulFleetAgentToken64190A01",
        "EsmToken": "ConsulFleetEsmTokenDF3A2857",
        "CertificateAuthority": "ConsulFleetCertificateAuthorityE0B1AF02",
        "CaCertificate": "ConsulFleetCaCertificate219D15BB",
        "SnapshotBucket": "ConsulFleetSnapshotBucket4E7E7213",
        "AccessLogs": "ConsulFleetAccessLogs436F84EB",
    }


@pytest.mark.parametrize("kwargs", [{}, {"server_count": 5, "plaintext_listeners": True}])
def test_no_unacknowledged_cdk_nag_finding(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    app, _ = build(tmp_path, nag=True, **kwargs)
    app.synth()  # raises on any unacknowledged AwsSolutions / NIST 800-53 R5 finding
    report = json.loads((tmp_path / "validation-report.json").read_text())
    assert {"AwsSolutions", "NIST.800.53.R5"} <= {r["pluginName"] for r in report["pluginReports"]}
    assert [v for r in report["pluginReports"] for v in r["violations"]] == []


def test_template_passes_cfn_lint(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    app.synth()
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "cfn-lint"),
            "--format",
            "parseable",
            str(tmp_path / "FleetTest.template.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [
        line
        for line in result.stdout.splitlines()
        if ":E" in line or line.split(":")[-2:-1] == ["E"]
    ]
    assert result.returncode in (0, 4, 8), result.stdout + result.stderr  # 4/8: warnings/info only
    assert errors == [], result.stdout


@pytest.mark.parametrize("count", [1, 4])
def test_fails_when_server_count_is_not_3_or_5(tmp_path: Path, count: int) -> None:
    with pytest.raises(ValueError, match=f"server_count must be 3 or 5, got {count}"):
        build(tmp_path, server_count=count)


def test_default_esm_node_prefix_is_the_registrars() -> None:
    import inspect

    import identity  # lambda/registrar, on the pytest path

    default_prefix = inspect.signature(ConsulFleet.__init__).parameters["external_node_prefix"]
    assert default_prefix.default == identity.NODE_PREFIX
