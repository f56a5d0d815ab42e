"""Configuration: defaults are valid, overrides parse, every rule rejects bad input clearly."""

from __future__ import annotations

import pytest

from mesh_stack.config import FIELDS, ConfigError, MeshConfig
from tests.conftest import cdk_json_context


def config(**overrides: object) -> MeshConfig:
    return MeshConfig.from_context(overrides)


def test_defaults_are_valid_and_secure() -> None:
    cfg = config()
    assert cfg.server_count == 3
    assert cfg.plaintext_listeners is False
    assert "0.0.0.0/0" not in cfg.onprem_cidrs
    assert cfg.stack_name == "consul-mesh-dev"


def test_cdk_json_context_is_valid() -> None:
    MeshConfig.from_context(cdk_json_context())


def test_command_line_strings_are_parsed() -> None:
    # `-c key=value` overrides arrive as strings
    cfg = config(
        server_count="5",
        plaintext_listeners="true",
        onprem_cidrs="10.1.0.0/16, 172.20.0.0/16",
        registrar_concurrency="20",
    )
    assert cfg.server_count == 5
    assert cfg.plaintext_listeners is True
    assert cfg.onprem_cidrs == ("10.1.0.0/16", "172.20.0.0/16")
    assert cfg.registrar_concurrency == 20


def test_json_list_on_the_command_line() -> None:
    assert config(onprem_cidrs='["10.1.0.0/16"]').onprem_cidrs == ("10.1.0.0/16",)


def test_zones_default_from_region_and_count() -> None:
    assert config(region="eu-west-1", az_count=2).zones == ("eu-west-1a", "eu-west-1b")
    assert config(availability_zones="us-east-1d,us-east-1f", server_count=3).zones == (
        "us-east-1d",
        "us-east-1f",
    )


def test_graviton_instance_types_select_arm64() -> None:
    assert config(instance_type="m7g.large").arm64
    assert config(instance_type="c7gn.xlarge").arm64
    assert not config(instance_type="m6i.large").arm64


FAILURES = [
    ("prefix", "Consul_Mesh", "must match"),
    ("prefix", "x", "must match"),
    ("environment", "Prod!", "must match"),
    ("region", "mars-1", "AWS region"),
    ("account", "12345", "12 digits"),
    ("vpc_id", "my-vpc", "vpc-"),
    ("vpc_cidr", "10.32.0.0/12", "/16 to /24"),
    ("vpc_cidr", "8.8.0.0/16", "private"),
    ("vpc_cidr", "10.40.0.1/16", "valid CIDR"),
    ("az_count", "4", "from 2 to 3"),
    ("az_count", "two", "integer"),
    ("availability_zones", "us-east-1", "AZ names"),
    ("consul_version", "latest", "release version"),
    ("consul_version", "1.9.0", "supported releases"),
    ("envoy_version", "1.20.0", "supports Envoy"),
    ("envoy_version", "v1.34", "release version"),
    ("datacenter", "DC 1", "DNS label"),
    ("datacenter", "dc_1", "DNS label"),
    ("consul_esm_version", "0.10", "release version"),
    ("server_count", "4", "3 or 5"),
    ("server_count", "1", "3 or 5"),
    ("server_count", True, "integer"),
    ("instance_type", "large", "instance type"),
    ("onprem_cidrs", "0.0.0.0/0", "whole internet"),
    ("onprem_cidrs", "10.0.0.0/33", "valid CIDR"),
    ("onprem_cidrs", "10.0.0.1/8", "valid CIDR"),
    ("onprem_cidrs", "4.0.0.0/6", "/8 or narrower"),
    ("onprem_cidrs", "fd00::/8", "IPv4"),
    ("onprem_cidrs", "[1, 2]", "list of strings"),
    ("onprem_cidrs", "[oops", "JSON list"),
    ("plaintext_listeners", "yes", "true or false"),
    ("registrar_concurrency", "1", "from 2 to 1000"),
    ("registrar_concurrency", "1001", "from 2 to 1000"),
    ("reconcile_interval_minutes", "0", "from 1 to 1440"),
    ("reconcile_max_deletions", "0", "from 1 to 10000"),
    ("drain_on_delete", "maybe", "true or false"),
    ("activation_registration_limit", "0", "from 1 to 1000"),
    ("activation_expiry_days", "31", "from 1 to 30"),
    ("demo_enabled", "1", "true or false"),
    ("services", "[1]", "must be a JSON object"),
    ("external_services", "[1, 2]", "list of strings"),
    ("team_services", "x", "not a JSON object"),
    ("prometheus_port", "80", "from 1024 to 65534"),
    ("snapshot_interval_hours", "25", "from 1 to 24"),
    ("snapshot_retention_days", "0", "from 1 to 3650"),
    ("alarm_email", "ops-at-example", "e-mail"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), FAILURES)
def test_fails_when_a_value_breaks_its_rule(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError, match=allowed) as err:
        config(**{key: value})
    message = str(err.value)
    assert message.startswith(f"invalid context value {key}=")
    assert "\n" not in message


def test_every_key_has_a_failure_case() -> None:
    assert set(FIELDS) - {key for key, _, _ in FAILURES} == set()


def test_fails_when_five_servers_get_two_zones() -> None:
    with pytest.raises(ConfigError, match="at least 3 availability zones"):
        config(server_count=5, az_count=2)


def test_fails_when_existing_vpc_has_no_account() -> None:
    with pytest.raises(ConfigError, match=r"vpc_id=.*needs `account`"):
        config(vpc_id="vpc-0abc1234")


def test_fails_when_zones_belong_to_another_region() -> None:
    with pytest.raises(ConfigError, match=r"availability_zones=.*region us-east-1"):
        config(availability_zones="eu-west-1a,eu-west-1b")


def test_fails_when_zones_repeat() -> None:
    with pytest.raises(ConfigError, match="duplicates"):
        config(availability_zones="us-east-1a,us-east-1a")


def test_fails_when_envoy_is_newer_than_consul_supports() -> None:
    with pytest.raises(ConfigError, match=r"envoy_version='1.37.2'.*1.31.x to 1.34.x"):
        config(consul_version="1.21.4", envoy_version="1.37.2")


def test_supported_pairs_are_accepted() -> None:
    assert config(consul_version="2.0.1", envoy_version="1.37.2").envoy_version == "1.37.2"


@pytest.mark.parametrize(
    ("port", "taken"),
    [
        ("20000", "20000, taken by Envoy's public and health listeners"),
        ("19999", "20000, taken by Envoy's public and health listeners"),
        ("9091", "9091, taken by the demo frontend's upstream listener"),
        ("9079", "9080, taken by the demo frontend's app"),
    ],
)
def test_fails_when_a_demo_metrics_port_collides_with_a_host_port(port: str, taken: str) -> None:
    # The demo runs in host mode: its metrics listeners (prometheus_port and the next one)
    # share the host's ports with its apps and Envoy listeners.
    with pytest.raises(ConfigError, match=rf"prometheus_port={int(port)}.*would use {taken}"):
        config(prometheus_port=port)


def test_demo_port_is_free_when_the_demo_is_off() -> None:
    assert config(prometheus_port="9091", demo_enabled="false").prometheus_port == 9091
