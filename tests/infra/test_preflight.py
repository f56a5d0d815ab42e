"""`make preflight`: tells an operator which on-prem path is configured and what is left to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh_stack.config import MeshConfig
from mesh_stack.onprem_contract import DH_GROUPS
from mesh_stack.ports import ENVOY_INBOUND_PORTS
from tests.conftest import ROOT
from tools.preflight import context_from, main, plan

DEVICE_IP = "44.192.10.20"
TGW = "tgw-0123456789abcdef0"
LOW, HIGH = ENVOY_INBOUND_PORTS


def run(capsys: pytest.CaptureFixture[str], *context: str) -> tuple[int, str, str]:
    argv = [arg for item in context for arg in ("-c", item)]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_default_config_says_no_path_exists_and_how_to_choose_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the repository's cdk.json and no override
    code, out, _ = run(capsys)
    # THEN the operator learns that nothing routes to on-prem, and the three ways out
    assert code == 0
    assert out.startswith("On-prem network path: none")
    assert "ACTION REQUIRED" in out
    assert "no route to 192.168.0.0/16" in out
    for option in ("onprem_connectivity=vpn", "onprem_connectivity=transit_gateway", "vpc_id"):
        assert option in out


def test_static_vpn_lists_what_is_created_and_the_device_steps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys,
        "onprem_connectivity=vpn",
        f"vpn_customer_gateway_ip={DEVICE_IP}",
        "onprem_cidrs=10.9.0.0/16,172.20.0.0/16",
    )
    assert code == 0
    assert out.startswith("On-prem network path: vpn")
    assert "ACTION REQUIRED" not in out
    assert f"customer gateway for your device at {DEVICE_IP}" in out
    assert "static routing: VPN connection routes for 10.9.0.0/16, 172.20.0.0/16" in out
    assert "each of the 3 private route tables" in out
    assert "OnPremVpnDeviceConfiguration" in out
    assert "ESP (IP protocol 50)" in out
    assert "route 10.40.0.0/16 into both tunnels" in out
    assert "ikev2" in out


def test_vpn_names_the_strong_dh_groups_and_the_log_permissions_before_the_deploy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "onprem_connectivity=vpn", f"vpn_customer_gateway_ip={DEVICE_IP}")
    # The device must offer one of DH groups 14-21: no RFC 5114 group 22-24.
    assert "DH groups 14-21;" in out
    assert "device name consul-mesh-dev" in out
    # A restricted CDK execution policy must allow the VPN log delivery before the deploy.
    before, after = out.split("BEFORE `make deploy`:")[1].split("What remains for you:")
    assert "logs:CreateLogDelivery" in before
    assert "logs:PutResourcePolicy" in before
    assert "run `make deploy`" in after


def test_docs_name_the_dh_groups_the_tunnels_accept() -> None:
    # The operator configures the device from docs/services.md: it must list what the template
    # accepts (onprem_contract.DH_GROUPS), not a superset.
    text = " ".join((ROOT / "docs" / "services.md").read_text().split())
    low, high = DH_GROUPS[0], DH_GROUPS[-1]
    assert tuple(range(low, high + 1)) == DH_GROUPS
    assert f"Diffie-Hellman groups {low}-{high} " in text


def test_bgp_vpn_names_both_asns(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(
        capsys,
        "onprem_connectivity=vpn",
        f"vpn_customer_gateway_ip={DEVICE_IP}",
        "vpn_bgp_asn=65010",
    )
    assert "BGP: your device (ASN 65010) peers with the VPN gateway (ASN 64512)" in out
    assert "advertise 192.168.0.0/16 over BGP" in out


def test_transit_gateway_lists_the_network_teams_routes(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(
        capsys, "onprem_connectivity=transit_gateway", f"transit_gateway_id={TGW}", "az_count=2"
    )
    assert out.startswith("On-prem network path: transit_gateway")
    assert f"attachment of the 2 private subnets to {TGW}" in out
    assert "OnPremTransitGatewayAttachmentId" in out
    assert "10.40.0.0/16 towards this attachment" in out
    assert "AWS RAM" in out


def test_shared_transit_gateway_acceptance_comes_before_the_deploy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a transit gateway that may belong to another account
    _, out, _ = run(capsys, "onprem_connectivity=transit_gateway", f"transit_gateway_id={TGW}")
    # THEN the RAM share and the attachment's acceptance are things to settle BEFORE the
    # deploy: the attachment waits in pendingAcceptance during it, and the stack output with
    # its ID does not exist yet, so the owner finds it by state.
    before, after = out.split("BEFORE `make deploy`:")[1].split("What remains for you:")
    assert f"aws ec2 describe-transit-gateways --transit-gateway-ids {TGW}" in before
    assert (
        "aws ec2 describe-transit-gateway-attachments --filters "
        f"Name=transit-gateway-id,Values={TGW} Name=state,Values=pendingAcceptance"
    ) in before
    assert "aws ec2 accept-transit-gateway-vpc-attachment" in before
    assert "WHILE `make deploy` runs" in before
    assert "iam:CreateServiceLinkedRole" in before
    assert "accept" not in after
    assert "run `make deploy`" in after


def test_existing_vpc_is_assumed_routed_and_the_operator_checks_it() -> None:
    config = MeshConfig.from_context({"vpc_id": "vpc-0abc1234", "account": "123456789012"})
    result = plan(config)
    assert result.ready
    assert "vpc-0abc1234" in result.path
    assert any("route table of every private subnet of vpc-0abc1234" in t for t in result.todo)


@pytest.mark.parametrize("plaintext", [False, True])
def test_firewall_rules_cover_both_directions(plaintext: bool) -> None:
    config = MeshConfig.from_context({"plaintext_listeners": plaintext, "region": "eu-west-1"})
    rules = "\n".join(plan(config).firewall)
    assert "TCP 8503" in rules
    assert "TCP 8501" in rules
    assert (
        f"Consul servers (private subnets of the VPC 10.40.0.0/16) -> hosts: TCP {LOW}-{HIGH}"
        in (rules)
    )
    assert "ssmmessages.eu-west-1.amazonaws.com" in rules
    assert "ecs-a-*.eu-west-1.amazonaws.com" in rules
    assert ("TCP 8502" in rules) is plaintext


def test_firewall_rules_name_the_hosts_of_every_registry_the_configuration_pulls_from() -> None:
    # GIVEN the default images (Envoy and the demo on Docker Hub, Python on public.ecr.aws)
    rules = "\n".join(plan(MeshConfig.from_context({})).firewall)
    # THEN the firewall team gets host names, not "Docker Hub": the anonymous pulls' bucket too
    assert "registry-1.docker.io" in rules
    assert "auth.docker.io" in rules
    assert ".r2.cloudflarestorage.com" in rules
    assert "public.ecr.aws" in rules
    assert "d2glxqk2uabbnd.cloudfront.net" in rules  # where public.ecr.aws serves layers from
    # and the ECS Anywhere installer's hosts, which *.s3.<region>.amazonaws.com does not match
    assert "amazon-ecs-agent.s3.amazonaws.com" in rules
    assert "s3.us-east-1.amazonaws.com," in rules  # the agents' bucket, by path
    assert "raw.githubusercontent.com" in rules  # their GPG keys
    # GIVEN every image on one private registry, without the demo
    mirrored = MeshConfig.from_context(
        {
            "envoy_image": "registry.example.com/mirror/envoyproxy/envoy",
            "init_image": "registry.example.com/mirror/python:3.13-slim",
            "demo_enabled": False,
        }
    )
    (registries,) = [r for r in plan(mirrored).firewall if "registries" in r]
    assert registries.endswith(": registry.example.com")


def test_firewall_rules_admit_the_operators_to_8501_only() -> None:
    config = MeshConfig.from_context({"operator_cidrs": "10.9.0.0/24"})
    rules = [r for r in plan(config).firewall if r.startswith("operators")]
    assert rules == [
        "operators (10.9.0.0/24) -> Consul NLB in the VPC 10.40.0.0/16: TCP 8501 "
        "(UI and HTTPS API only)"
    ]
    assert not [r for r in plan(MeshConfig.from_context({})).firewall if "operators" in r]


def test_fails_when_the_configuration_is_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "onprem_connectivity=vpn")
    assert code == 1
    assert out == ""
    assert err.startswith("error: invalid context value vpn_customer_gateway_ip=''")
    assert err.count("\n") == 1


def test_fails_when_a_context_argument_has_no_value(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "onprem_connectivity")
    assert code == 1
    assert "expected key=value" in err


def test_overrides_win_over_cdk_json(tmp_path: Path) -> None:
    cdk_json = tmp_path / "cdk.json"
    cdk_json.write_text('{"context": {"onprem_cidrs": ["10.1.0.0/16"], "region": "eu-west-1"}}')
    context = context_from(["region=eu-central-1"], cdk_json)
    assert context == {"onprem_cidrs": ["10.1.0.0/16"], "region": "eu-central-1"}


def test_preflight_runs_without_credentials_or_cdk() -> None:
    # A fresh interpreter with no AWS settings: the tool reads files only and never loads CDK.
    script = (
        "import sys; from tools.preflight import main; "
        "code = main(['-c', 'onprem_connectivity=vpn', "
        f"'-c', 'vpn_customer_gateway_ip={DEVICE_IP}']); "
        "print('aws_cdk loaded' if 'aws_cdk' in sys.modules else 'no aws_cdk'); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "On-prem network path: vpn" in result.stdout
    assert result.stdout.rstrip().endswith("no aws_cdk")


def test_make_target_passes_the_same_args_as_synth() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "preflight: $(VENV)/.installed\n\t$(PY) -m tools.preflight $(ARGS)" in makefile
