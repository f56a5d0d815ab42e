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
    ("onprem_connectivity", "direct_connect", "one of none, vpn, transit_gateway"),
    ("onprem_connectivity", "VPN", "one of none, vpn, transit_gateway"),
    ("vpn_customer_gateway_ip", "vpn.example.com", "public IPv4"),
    ("vpn_customer_gateway_ip", "10.1.2.3", "private and reserved addresses are refused"),
    ("vpn_customer_gateway_ip", "100.64.0.1", "private and reserved addresses are refused"),
    ("vpn_customer_gateway_ip", "224.0.0.5", "private and reserved addresses are refused"),
    ("vpn_customer_gateway_ip", "2600:1f18::1", "public IPv4"),
    ("vpn_bgp_asn", "0", "from 1 to 4294967294"),
    ("vpn_bgp_asn", "4294967295", "from 1 to 4294967294"),
    ("vpn_bgp_asn", "AS65010", "integer"),
    ("vpn_bgp_asn", "7224", "reserved by AWS in every region"),
    ("transit_gateway_id", "tgw-123", "tgw-0abc1234"),
    ("transit_gateway_id", "tgw-0123456789abcdef", "tgw-0abc1234"),
    ("transit_gateway_id", "tgw-0123456789ABCDEF0", "tgw-0abc1234"),
    ("plaintext_listeners", "yes", "true or false"),
    ("registrar_concurrency", "1", "from 2 to 1000"),
    ("registrar_concurrency", "1001", "from 2 to 1000"),
    ("reserve_concurrency", "yes", "true or false"),
    ("lambda_unreserved_concurrency", "0", "from 1 to 10000000"),
    ("reconcile_interval_minutes", "0", "from 1 to 1440"),
    ("reconcile_max_deletions", "0", "from 1 to 10000"),
    ("host_disconnect_grace_minutes", "0", "from 1 to 1440"),
    ("host_disconnect_grace_minutes", "1441", "from 1 to 1440"),
    ("drain_on_delete", "maybe", "true or false"),
    ("activation_registration_limit", "0", "from 1 to 1000"),
    ("activation_expiry_days", "31", "from 1 to 30"),
    ("demo_enabled", "1", "true or false"),
    ("operator_cidrs", "0.0.0.0/0", "whole internet"),
    ("operator_cidrs", "10.0.0.0/7", "/8 or narrower"),
    ("operator_cidrs", "10.1.2.3/16", "not a valid CIDR"),
    ("operator_cidrs", "2001:db8::/32", "IPv4"),
    ("envoy_image", "envoyproxy/envoy:v1.34.14", "without a tag"),
    ("envoy_image", "EnvoyProxy/Envoy", "without a tag"),
    ("init_image", "python", "with a tag or @sha256 digest"),
    ("init_image", "python@sha256:abc", "with a tag or @sha256 digest"),
    (
        "registry_credentials_secret_arn",
        "arn:aws:secretsmanager:us-east-1:111111111111:secret:hub",
        "complete Secrets Manager secret ARN",
    ),
    ("registry_credentials_secret_arn", "dockerhub-credentials", "complete Secrets Manager"),
    ("registry_credentials_kms_key_arn", "alias/registry", "KMS key ARN"),
    ("services", "[1]", "must be a JSON object"),
    ("external_services", "[1, 2]", "list of strings"),
    ("team_services", "x", "not a JSON object"),
    ("prometheus_port", "80", "from 1024 to 65534"),
    ("snapshot_interval_hours", "25", "from 1 to 24"),
    ("snapshot_retention_days", "0", "from 1 to 3650"),
    ("alarm_email", "ops-at-example", "e-mail"),
    ("server_ami", "ami-123", "AMI ID"),
    ("consul_objects_generation", "-1", "from 0 to 1000000"),
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


def test_nothing_is_reserved_by_default() -> None:
    assert config().reserve_concurrency is False


def test_a_reservation_within_the_unreserved_concurrency_is_accepted() -> None:
    # 897 + 2 + 1 = 900 = a fresh account's 1000 unreserved minus the 100 Lambda keeps
    chosen = config(reserve_concurrency="true", registrar_concurrency="897")
    assert chosen.reserve_concurrency is True
    assert chosen.lambda_unreserved_concurrency == 1000


@pytest.mark.parametrize(
    ("options", "reserves", "allowed"),
    [
        ({"registrar_concurrency": "898"}, 901, 900),
        ({"registrar_concurrency": "5", "lambda_unreserved_concurrency": "50"}, 8, 0),
        # a 1000 quota of which other functions already reserve 880
        ({"registrar_concurrency": "20", "lambda_unreserved_concurrency": "120"}, 23, 20),
    ],
)
def test_fails_when_the_reservation_exceeds_what_the_account_can_reserve(
    options: dict[str, str], reserves: int, allowed: int
) -> None:
    with pytest.raises(ConfigError) as err:
        config(reserve_concurrency="true", **options)
    message = str(err.value)
    assert message.startswith("invalid context value registrar_concurrency=")
    assert f"reserves {reserves}" in message
    assert f"at most {allowed}" in message
    # the limit is the UNRESERVED concurrency: other functions' reservations reduce it
    assert "unreserved concurrency" in message
    assert "minus what other functions already reserve" in message
    assert "UnreservedConcurrentExecutions" in message
    assert "100 Lambda keeps unreserved" in message


def test_fails_when_the_unreserved_concurrency_is_set_but_nothing_is_reserved() -> None:
    with pytest.raises(ConfigError, match=r"lambda_unreserved_concurrency='2000'.*only used with"):
        config(lambda_unreserved_concurrency="2000")


@pytest.mark.parametrize(
    ("port", "why"),
    [
        ("2375", "2375 is reserved by ECS on every container instance"),
        ("2374", "2375 is reserved by ECS on every container instance"),  # frontend's is +1
        ("40000", "40000 lies in the ephemeral range 32768..60999"),
        ("32767", "32768 lies in the ephemeral range 32768..60999"),
    ],
)
def test_fails_when_a_demo_metrics_port_is_reserved_or_ephemeral(port: str, why: str) -> None:
    # ECS never places a task that asks for a reserved host port, and the ephemeral range is
    # what ECS and the kernel hand out to others; with or without the demo, the key is refused
    for demo in ("true", "false"):
        with pytest.raises(ConfigError, match=rf"prometheus_port={int(port)}: .*{why}") as err:
            config(prometheus_port=port, demo_enabled=demo)
        assert "\n" not in str(err.value)


def test_demo_port_is_free_when_the_demo_is_off() -> None:
    assert config(prometheus_port="9091", demo_enabled="false").prometheus_port == 9091


# --- on-prem network path ------------------------------------------------------------------

PUBLIC_IP = "44.192.10.20"
TGW = "tgw-0123456789abcdef0"


def test_default_path_is_none_and_needs_no_input() -> None:
    cfg = config()
    assert cfg.onprem_connectivity == "none"
    assert (cfg.vpn_customer_gateway_ip, cfg.vpn_bgp_asn, cfg.transit_gateway_id) == ("", None, "")


def test_vpn_and_transit_gateway_paths_parse_command_line_strings() -> None:
    vpn = config(onprem_connectivity="vpn", vpn_customer_gateway_ip=PUBLIC_IP, vpn_bgp_asn="65010")
    assert (vpn.vpn_customer_gateway_ip, vpn.vpn_bgp_asn) == (PUBLIC_IP, 65010)
    four_byte = config(
        onprem_connectivity="vpn", vpn_customer_gateway_ip=PUBLIC_IP, vpn_bgp_asn="4200000000"
    )
    assert four_byte.vpn_bgp_asn == 4_200_000_000
    static = config(onprem_connectivity="vpn", vpn_customer_gateway_ip=PUBLIC_IP, vpn_bgp_asn="")
    assert static.vpn_bgp_asn is None
    tgw = config(onprem_connectivity="transit_gateway", transit_gateway_id="tgw-0abc1234")
    assert tgw.transit_gateway_id == "tgw-0abc1234"


def test_fails_when_vpn_has_no_customer_gateway_ip() -> None:
    with pytest.raises(ConfigError, match=r"vpn_customer_gateway_ip='': is required with"):
        config(onprem_connectivity="vpn")


def test_fails_when_transit_gateway_has_no_id() -> None:
    with pytest.raises(ConfigError, match=r"transit_gateway_id='': is required with"):
        config(onprem_connectivity="transit_gateway")


@pytest.mark.parametrize("mode", ["vpn", "transit_gateway"])
def test_fails_when_an_existing_vpc_asks_for_a_path(mode: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"onprem_connectivity='{mode}': must be none with vpc_id vpc-0abc1234"
    ) as err:
        config(
            vpc_id="vpc-0abc1234",
            account="123456789012",
            onprem_connectivity=mode,
            vpn_customer_gateway_ip=PUBLIC_IP if mode == "vpn" else "",
            transit_gateway_id=TGW if mode == "transit_gateway" else "",
        )
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("mode", "key", "value", "owner"),
    [
        ("none", "vpn_customer_gateway_ip", PUBLIC_IP, "vpn"),
        ("none", "vpn_bgp_asn", "65010", "vpn"),
        ("none", "transit_gateway_id", TGW, "transit_gateway"),
        ("transit_gateway", "vpn_bgp_asn", "65010", "vpn"),
        ("vpn", "transit_gateway_id", TGW, "transit_gateway"),
    ],
)
def test_fails_when_a_path_key_is_set_for_another_path(
    mode: str, key: str, value: str, owner: str
) -> None:
    # No key a user set is silently ignored.
    context = {"onprem_connectivity": mode, key: value}
    if mode == "vpn":
        context.setdefault("vpn_customer_gateway_ip", PUBLIC_IP)
    if mode == "transit_gateway":
        context.setdefault("transit_gateway_id", TGW)
    with pytest.raises(
        ConfigError, match=rf"{key}=.*is used only with onprem_connectivity={owner}"
    ):
        config(**context)


def test_fails_when_bgp_asn_is_the_amazon_side_asn() -> None:
    with pytest.raises(ConfigError, match=r"vpn_bgp_asn=64512: must differ .* Amazon side ASN"):
        config(onprem_connectivity="vpn", vpn_customer_gateway_ip=PUBLIC_IP, vpn_bgp_asn="64512")


def test_fails_when_bgp_asn_is_reserved_in_the_region() -> None:
    vpn = {
        "onprem_connectivity": "vpn",
        "vpn_customer_gateway_ip": PUBLIC_IP,
        "vpn_bgp_asn": "9059",
    }
    with pytest.raises(ConfigError, match=r"vpn_bgp_asn=9059: is reserved by AWS in eu-west-1"):
        config(region="eu-west-1", **vpn)
    assert config(region="us-east-1", **vpn).vpn_bgp_asn == 9059


@pytest.mark.parametrize("mode", ["vpn", "transit_gateway"])
def test_fails_when_onprem_overlaps_the_vpc(mode: str) -> None:
    with pytest.raises(ConfigError, match=r"onprem_cidrs='10.40.128.0/20': overlaps vpc_cidr"):
        config(
            onprem_connectivity=mode,
            vpn_customer_gateway_ip=PUBLIC_IP if mode == "vpn" else "",
            transit_gateway_id=TGW if mode == "transit_gateway" else "",
            onprem_cidrs="192.168.0.0/16,10.40.128.0/20",
        )


SECRET = "arn:aws:secretsmanager:us-east-1:111111111111:secret:registry/hub-AbC123"
KEY = "arn:aws:kms:us-east-1:111111111111:key/0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"


def test_operator_cidrs_default_to_none_and_parse_like_onprem_cidrs() -> None:
    assert config().operator_cidrs == ()
    assert config(operator_cidrs="10.9.0.0/24, 10.40.3.0/28").operator_cidrs == (
        "10.9.0.0/24",
        "10.40.3.0/28",
    )


def test_demo_defaults_to_on_only_in_dev() -> None:
    # GIVEN no demo_enabled set WHEN the environment is dev THEN the demo deploys; elsewhere
    # it is an opt-in, and an explicit value wins in every environment
    assert config().demo_enabled is True
    assert config(environment="prod").demo_enabled is False
    assert config(environment="staging").demo_enabled is False
    assert config(environment="prod", demo_enabled="true").demo_enabled is True
    assert config(environment="dev", demo_enabled=False).demo_enabled is False


def test_cdk_json_leaves_the_demo_and_onprem_cidrs_to_the_operator() -> None:
    # A value in cdk.json would turn the demo on in prod and hide the deploy gate's check.
    assert "demo_enabled" not in cdk_json_context()
    assert "onprem_cidrs" not in cdk_json_context()


def test_image_defaults_are_todays_images() -> None:
    cfg = config()
    assert cfg.envoy_image == "envoyproxy/envoy"
    assert cfg.init_image == "public.ecr.aws/docker/library/python:3.13-slim"
    assert cfg.registry_credentials_secret_arn == ""
    assert cfg.images_with_credentials == ()


def test_image_references_of_registries_and_mirrors_parse() -> None:
    cfg = config(
        envoy_image="registry.example.com:5000/mirror/envoyproxy/envoy",
        init_image="registry.example.com:5000/library/python@sha256:" + "a" * 64,
        registry_credentials_secret_arn=SECRET,
        registry_credentials_kms_key_arn=KEY,
    )
    assert cfg.images_with_credentials == (
        "registry.example.com:5000/mirror/envoyproxy/envoy",
        "registry.example.com:5000/library/python@sha256:" + "a" * 64,
    )


def test_credentials_skip_ecr_public_and_ecr() -> None:
    # Docker Hub (the default Envoy) takes them: an authenticated account's pull limit
    assert config(registry_credentials_secret_arn=SECRET).images_with_credentials == (
        "envoyproxy/envoy",
    )
    ecr = "111111111111.dkr.ecr.us-east-1.amazonaws.com/envoyproxy/envoy"
    assert config(envoy_image=ecr).images_with_credentials == ()


def test_fails_when_credentials_would_be_used_by_no_image() -> None:
    ecr = "111111111111.dkr.ecr.us-east-1.amazonaws.com/envoyproxy/envoy"
    with pytest.raises(ConfigError, match=r"registry_credentials_secret_arn=.*no image would use"):
        config(envoy_image=ecr, registry_credentials_secret_arn=SECRET)


def test_a_multi_region_key_may_encrypt_the_registry_credentials() -> None:
    # Multi-Region key IDs are `mrk-` and 32 hex digits (KMS API reference, ReplicateKey)
    mrk = "arn:aws:kms:eu-west-1:111111111111:key/mrk-1234abcd12ab34cd56ef1234567890ab"
    cfg = config(registry_credentials_secret_arn=SECRET, registry_credentials_kms_key_arn=mrk)
    assert cfg.registry_credentials_kms_key_arn == mrk


def test_fails_when_one_login_would_be_sent_to_two_registries() -> None:
    # GIVEN Envoy from one private registry and the init image from Docker Hub: every
    # container's repositoryCredentials name the one secret, so Docker Hub would get the
    # other registry's login and refuse a pull it would have served anonymously
    with pytest.raises(
        ConfigError,
        match=r"registry_credentials_secret_arn=.*two registries, docker\.io and "
        r"registry\.example\.com",
    ):
        config(
            envoy_image="registry.example.com/mirror/envoyproxy/envoy",
            init_image="python:3.13-slim",
            registry_credentials_secret_arn=SECRET,
        )


def test_docker_hub_under_any_of_its_names_is_one_registry() -> None:
    cfg = config(
        envoy_image="index.docker.io/envoyproxy/envoy",
        init_image="Registry-1.Docker.io/library/python:3.13-slim",
        registry_credentials_secret_arn=SECRET,
    )
    assert len(cfg.images_with_credentials) == 2


def test_fails_when_a_credentials_key_comes_without_the_secret() -> None:
    with pytest.raises(
        ConfigError, match=r"registry_credentials_kms_key_arn=.*only with registry_credentials"
    ):
        config(registry_credentials_kms_key_arn=KEY)
