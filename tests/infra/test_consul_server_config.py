"""The rendered Consul server configuration: every hardening key, the opt-in, no secrets."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from mesh_stack import consul_server_config as csc


def render(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "datacenter": "dc1",
        "server_count": 3,
        "retry_join_tag_key": "consul-mesh:fleet",
        "retry_join_tag_value": "consul-mesh-dev",
    }
    kwargs.update(overrides)
    # Round-trip through JSON: what lands in /etc/consul.d/consul.json is what we check.
    parsed: dict[str, Any] = json.loads(json.dumps(csc.render_server_config(**kwargs)))
    return parsed


@pytest.mark.parametrize(("count", "quorum"), [(3, 2), (5, 3)])
def test_server_mode_bootstrap_and_autopilot_follow_the_server_count(
    count: int, quorum: int
) -> None:
    # GIVEN a fleet of `count` servers WHEN the configuration is rendered
    config = render(server_count=count)
    # THEN every server waits for all voters and autopilot never prunes below a majority
    assert config["server"] is True
    assert config["bootstrap_expect"] == count
    assert config["autopilot"]["min_quorum"] == quorum
    assert config["autopilot"]["cleanup_dead_servers"] is True
    assert config["autopilot"]["last_contact_threshold"] == "200ms"
    assert config["autopilot"]["server_stabilization_time"] == "10s"
    assert config["performance"] == {"raft_multiplier": 1}


def test_cloud_auto_join_uses_the_fleet_tag() -> None:
    config = render(retry_join_tag_key="fleet", retry_join_tag_value="mesh-prod")
    assert config["retry_join"] == [
        "provider=aws tag_key=fleet tag_value=mesh-prod addr_type=private_v4"
    ]


def test_tls_verifies_servers_mutually_and_clients_by_acl_token() -> None:
    tls = render()["tls"]
    defaults = tls["defaults"]
    assert defaults["verify_incoming"] is True
    assert defaults["verify_outgoing"] is True
    assert defaults["ca_file"] == csc.CA_FILE
    assert defaults["cert_file"] == csc.CERT_FILE
    assert defaults["key_file"] == csc.KEY_FILE
    assert defaults["tls_min_version"] == "TLSv1_2"
    assert tls["internal_rpc"] == {"verify_incoming": True, "verify_server_hostname": True}
    # Envoy and the Lambdas present no client certificate: their ACL token authenticates them.
    assert tls["https"]["verify_incoming"] is False
    assert tls["grpc"]["verify_incoming"] is False


def test_only_tls_listeners_are_open_by_default() -> None:
    config = render()
    assert config["ports"] == {
        "https": 8501,
        "grpc_tls": 8503,
        "http": -1,
        "grpc": -1,
        "dns": -1,
        "serf_wan": -1,
    }
    assert set(config["addresses"]) == {"https", "grpc_tls"}


def test_plaintext_opt_in_adds_http_8500_and_grpc_8502_only() -> None:
    secure, plain = render(), render(plaintext_listeners=True)
    assert plain["ports"] == {
        "https": 8501,
        "grpc_tls": 8503,
        "http": 8500,
        "grpc": 8502,
        "dns": -1,
        "serf_wan": -1,
    }
    assert set(plain["addresses"]) == {"https", "grpc_tls", "http", "grpc"}
    # Nothing else changes: TLS and ACLs stay as strict as without the opt-in.
    for key in set(secure) - {"ports", "addresses"}:
        assert plain[key] == secure[key], key


@pytest.mark.parametrize("plaintext", [False, True])
def test_servers_join_no_wan_gossip_pool(plaintext: bool) -> None:
    # One datacenter, and 8302 is open neither as ingress nor as egress between the servers.
    # With the WAN pool on, each server flood-joins its LAN peers into it (agent/consul/flood.go)
    # and logs failed probes forever. `ports.serf_wan = -1` disables it (agent configuration
    # reference, `ports`: "Set to -1 to disable"; agent/config/builder.go binds the WAN serf only
    # when the port is >= 0, agent/agent.go then leaves SerfWANConfig nil).
    assert render(plaintext_listeners=plaintext)["ports"]["serf_wan"] == -1


def test_gossip_encryption_is_enforced_both_ways_without_the_key_in_the_file() -> None:
    config = render()
    assert config["encrypt_verify_incoming"] is True
    assert config["encrypt_verify_outgoing"] is True
    assert "encrypt" not in config


def test_acls_deny_by_default_and_no_token_is_rendered() -> None:
    acl = render()["acl"]
    assert acl["enabled"] is True
    assert acl["default_policy"] == "deny"
    assert acl["enable_token_persistence"] is True
    assert "tokens" not in acl


def test_no_script_checks_no_remote_exec_and_graceful_leave() -> None:
    config = render()
    assert config["enable_script_checks"] is False
    assert config["enable_local_script_checks"] is False
    assert config["disable_remote_exec"] is True
    assert config["leave_on_terminate"] is True
    assert config["rejoin_after_leave"] is True


def test_connect_ui_and_prometheus_telemetry_are_on() -> None:
    config = render()
    assert config["connect"] == {"enabled": True}
    assert config["ui_config"] == {"enabled": True}
    assert config["telemetry"]["prometheus_retention_time"] == "60s"
    assert config["telemetry"]["disable_hostname"] is True
    assert config["datacenter"] == "dc1"
    assert config["data_dir"] == csc.DATA_DIR
    assert config["log_level"] == "INFO"


SECRET_LOOKING = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I),
    re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])"),  # 32 bytes, base64
]


@pytest.mark.parametrize("plaintext", [False, True])
def test_no_secret_looking_value_is_rendered(plaintext: bool) -> None:
    text = json.dumps(
        csc.render_server_config(
            datacenter="dc1",
            server_count=5,
            retry_join_tag_key="k",
            retry_join_tag_value="v",
            plaintext_listeners=plaintext,
        )
    )
    text += csc.render_esm_config(datacenter="dc1")
    for pattern in SECRET_LOOKING:
        assert not pattern.search(text), pattern.pattern


def test_esm_config_talks_https_to_the_local_server_and_watches_external_nodes() -> None:
    hcl = csc.render_esm_config(datacenter="prod-eu")
    assert 'http_addr = "https://127.0.0.1:8501"' in hcl
    assert f'ca_file = "{csc.ESM_CA_FILE}"' in hcl
    assert 'datacenter = "prod-eu"' in hcl
    assert 'external_node_meta { "external-node" = "true" }' in hcl
    assert "token" not in hcl


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_fails_when_server_count_is_not_3_or_5(count: int) -> None:
    with pytest.raises(ValueError, match=f"server_count must be 3 or 5, got {count}"):
        render(server_count=count)


@pytest.mark.parametrize("dc", ["DC1", "dc_1", "-dc", "dc.one", "", "a" * 64])
def test_fails_when_datacenter_is_not_a_dns_label(dc: str) -> None:
    with pytest.raises(ValueError, match="datacenter must be a DNS label"):
        render(datacenter=dc)


@pytest.mark.parametrize("value", ["has space", "a=b", 'quo"te', ""])
def test_fails_when_the_join_tag_would_break_go_discover(value: str) -> None:
    with pytest.raises(ValueError, match="retry_join_tag_value must be"):
        render(retry_join_tag_value=value)


def test_fails_when_log_level_is_unknown() -> None:
    with pytest.raises(ValueError, match="log_level must be one of"):
        render(log_level="verbose")


def test_esm_may_write_only_the_registrars_nodes() -> None:
    rules = csc.esm_policy("ecs-task-")
    assert 'node_prefix "ecs-task-" { policy = "write" }' in rules
    assert 'node_prefix "" { policy = "read" }' in rules
    assert 'node_prefix "" { policy = "write" }' not in rules
    assert "acl" not in rules.replace("ecs-task", "")


def test_server_agent_token_writes_only_server_nodes() -> None:
    rules = csc.server_agent_policy()
    assert 'node_prefix "consul-server-" { policy = "write" }' in rules
    assert "write" not in rules.replace('node_prefix "consul-server-" { policy = "write" }', "")


def test_fails_when_the_external_node_prefix_could_break_the_policy() -> None:
    with pytest.raises(ValueError, match="external_node_prefix must be"):
        csc.esm_policy('x" { policy = "write" } node_prefix "')
