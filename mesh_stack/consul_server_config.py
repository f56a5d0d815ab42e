"""The Consul server agent configuration, rendered as a JSON-serialisable dict.

Pure and standard-library only: `ConsulFleet` writes the result into the instance user data as
`/etc/consul.d/consul.json`, and tests parse it back to check every hardening key. Consul reads
every `*.json` / `*.hcl` file of its `-config-dir` and merges them, so what is secret never
appears here: the boot script (`assets/consul_bootstrap.sh`) fetches the gossip key and the
initial management token from Secrets Manager at boot and writes them into their own
`0640 root:consul` fragments (`GOSSIP_FILE`, `ACL_TOKENS_FILE`).

Key names were checked against hashicorp/consul
`website/content/docs/reference/agent/configuration-file/{general,tls,acl,encryption,join,
bootstrap,telemetry,raft}.mdx` and the `Config` struct in `agent/config/config.go` (Consul
rejects unknown keys in a config file, so a misspelt key fails the agent at start).
"""

from __future__ import annotations

import re
from typing import Any

# Where the boot script puts things on the instance; shared with the scripts in assets/.
CONFIG_DIR = "/etc/consul.d"
CONFIG_FILE = f"{CONFIG_DIR}/consul.json"
# Secret fragments written at boot (never rendered here).
GOSSIP_FILE = f"{CONFIG_DIR}/50-gossip.json"
ACL_TOKENS_FILE = f"{CONFIG_DIR}/50-acl-tokens.json"
TLS_DIR = f"{CONFIG_DIR}/tls"
CA_FILE = f"{TLS_DIR}/consul-agent-ca.pem"
CERT_FILE = f"{TLS_DIR}/server.pem"
KEY_FILE = f"{TLS_DIR}/server-key.pem"
DATA_DIR = "/opt/consul/data"
# consul-esm runs as its own user, outside the consul group: its files live in its own directory
# (root:consul-esm 0750), including a copy of the CA certificate, never in CONFIG_DIR.
ESM_DIR = "/etc/consul-esm.d"
ESM_CA_FILE = f"{ESM_DIR}/consul-agent-ca.pem"

HTTPS_PORT = 8501
GRPC_TLS_PORT = 8503
HTTP_PORT = 8500
GRPC_PORT = 8502
SERVER_RPC_PORT = 8300
SERF_LAN_PORT = 8301

# The NLB reaches the servers on their private address; security groups restrict the sources.
_ALL_INTERFACES = "0.0.0.0"  # noqa: S104

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")

# RFC 1035 label: Consul's docs warn that other datacenter names break X.509 certificate
# generation (`server.<dc>.consul` must be a valid DNS name), so underscores are refused.
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# go-discover splits `key=value` pairs on spaces: neither may contain a space, `=` or quote.
_DISCOVER_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,128}$")


def quorum(server_count: int) -> int:
    """Raft quorum of `server_count` voters: a strict majority."""
    return server_count // 2 + 1


def render_server_config(
    *,
    datacenter: str,
    server_count: int,
    retry_join_tag_key: str,
    retry_join_tag_value: str,
    plaintext_listeners: bool = False,
    log_level: str = "INFO",
) -> dict[str, Any]:
    """Configuration of one Consul server, identical on every server of the fleet.

    datacenter: Consul datacenter; a DNS label because server certificates carry
        `server.<datacenter>.consul`.
    server_count: Raft voters, 3 or 5; `bootstrap_expect` waits for all of them before the
        first election, and autopilot's `min_quorum` stops dead-server cleanup at a majority.
    retry_join_tag_key / retry_join_tag_value: EC2 tag that marks the fleet's instances; cloud
        auto-join (`provider=aws`, go-discover) lists them with `ec2:DescribeInstances`.
    plaintext_listeners: also listen on HTTP 8500 and gRPC 8502. Off by default: everything a
        client needs is on HTTPS 8501 and gRPC-TLS 8503.
    log_level: agent log level.

    TLS choice, per interface (`tls.mdx`): `tls.defaults` verifies both directions, and
    `internal_rpc` (servers talking to servers on 8300) keeps `verify_incoming` and adds
    `verify_server_hostname`, so only a holder of a `server.<dc>.consul` certificate signed by
    the fleet's CA can join or act as a server. HTTPS and gRPC-TLS set `verify_incoming=false`:
    their clients (Envoy over xDS, the registrar and consul-objects Lambdas, consul-esm, the
    operator's CLI) present no client certificate and are authenticated by their ACL token
    instead, with ACLs in `default_policy=deny`. The channel is still TLS-only (the plaintext
    ports are -1) and the clients verify the server against the CA.
    """
    _check(datacenter, server_count, retry_join_tag_key, retry_join_tag_value, log_level)
    ports: dict[str, int] = {
        "https": HTTPS_PORT,
        "grpc_tls": GRPC_TLS_PORT,
        "http": HTTP_PORT if plaintext_listeners else -1,
        "grpc": GRPC_PORT if plaintext_listeners else -1,
        # The servers answer no DNS: nothing in the mesh resolves through Consul DNS.
        "dns": -1,
        "serf_wan": -1,  # one DC: no WAN gossip, 8302 is never open (config docs: -1 disables)
    }
    # client_addr stays 127.0.0.1 (the default); only the API listeners the NLB forwards to
    # bind every interface. Security groups decide who reaches them.
    addresses: dict[str, str] = {"https": _ALL_INTERFACES, "grpc_tls": _ALL_INTERFACES}
    if plaintext_listeners:
        addresses.update({"http": _ALL_INTERFACES, "grpc": _ALL_INTERFACES})
    return {
        "server": True,
        "bootstrap_expect": server_count,
        "datacenter": datacenter,
        "primary_datacenter": datacenter,
        "data_dir": DATA_DIR,
        "log_level": log_level,
        "log_json": True,
        "retry_join": [
            f"provider=aws tag_key={retry_join_tag_key} tag_value={retry_join_tag_value} "
            "addr_type=private_v4"
        ],
        # Leave gracefully on SIGTERM (systemd stop, instance termination during a rolling
        # update): the leader removes the server from the peer set at once instead of waiting
        # for failure detection. A restarted server rejoins with its data (rejoin_after_leave).
        "leave_on_terminate": True,
        "rejoin_after_leave": True,
        "disable_update_check": True,
        "performance": {"raft_multiplier": 1},
        # Read by the leader only when the cluster bootstraps (bootstrap.mdx); later changes go
        # through `consul operator autopilot set-config`.
        "autopilot": {
            "cleanup_dead_servers": True,
            "min_quorum": quorum(server_count),
            "last_contact_threshold": "200ms",
            "max_trailing_logs": 250,
            "server_stabilization_time": "10s",
        },
        "addresses": addresses,
        "ports": ports,
        "tls": {
            "defaults": {
                "ca_file": CA_FILE,
                "cert_file": CERT_FILE,
                "key_file": KEY_FILE,
                "verify_incoming": True,
                "verify_outgoing": True,
                "tls_min_version": "TLSv1_2",
            },
            "internal_rpc": {"verify_incoming": True, "verify_server_hostname": True},
            "https": {"verify_incoming": False},
            "grpc": {"verify_incoming": False, "use_auto_cert": False},
        },
        # The key itself is in GOSSIP_FILE ("encrypt"), written at boot.
        "encrypt_verify_incoming": True,
        "encrypt_verify_outgoing": True,
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            "down_policy": "extend-cache",
            # Keeps the agent token set through `/v1/agent/token/agent` across restarts.
            "enable_token_persistence": True,
        },
        "connect": {"enabled": True},
        "ui_config": {"enabled": True},
        "telemetry": {"prometheus_retention_time": "60s", "disable_hostname": True},
        "enable_script_checks": False,
        "enable_local_script_checks": False,
        "disable_remote_exec": True,
        # consul-esm runs HTTP/TCP checks for the catalog-only registrations itself; the agent
        # keeps central service config on (its default) so proxy-defaults reach sidecars.
        "enable_central_service_config": True,
        # Every HTTPS client reaches a server through the NLB, whose private addresses (one per
        # AZ) are the source of all connections (client IP preservation is off): allow more
        # than the default 200 per source address.
        "limits": {"http_max_conns_per_client": 1000},
    }


def render_esm_config(*, datacenter: str, log_level: str = "INFO") -> str:
    """consul-esm configuration (HCL), without its token (written at boot to its own file).

    consul-esm talks to the local server agent over HTTPS on 127.0.0.1 (the server certificate
    carries 127.0.0.1) and health checks every catalog node with `external-node=true`, which is
    what the registrar writes (docs/architecture.md). Its ACL policy is created at boot by
    `assets/consul_server/consul_admin.py acl-bootstrap`.
    """
    _check(datacenter, 3, "k", "v", log_level)
    return "\n".join(
        [
            f'log_level = "{log_level}"',
            "log_json = true",
            f'datacenter = "{datacenter}"',
            'consul_service = "consul-esm"',
            'consul_kv_path = "consul-esm/"',
            f'http_addr = "https://127.0.0.1:{HTTPS_PORT}"',
            f'ca_file = "{ESM_CA_FILE}"',
            'tls_server_name = "localhost"',
            'external_node_meta { "external-node" = "true" }',
            "",
        ]
    )


def _check(
    datacenter: str, server_count: int, tag_key: str, tag_value: str, log_level: str
) -> None:
    if not _DNS_LABEL.match(datacenter):
        raise ValueError(
            f"datacenter must be a DNS label (lowercase letters, digits, inner dashes; "
            f"at most 63), got {datacenter!r}"
        )
    if server_count not in (3, 5):
        raise ValueError(f"server_count must be 3 or 5, got {server_count}")
    for name, value in (("retry_join_tag_key", tag_key), ("retry_join_tag_value", tag_value)):
        if not _DISCOVER_VALUE.match(value):
            raise ValueError(
                f"{name} must be 1-128 characters of letters, digits and _.:/@+- "
                f"(go-discover splits on spaces), got {value!r}"
            )
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")


def server_agent_policy() -> str:
    """ACL rules of the servers' own agent token (`acl.tokens.agent`).

    A server registers its own node (named `consul-server-<instance id>` at boot) and reads
    services; nothing else. Source: Consul docs, "Create an agent token".
    """
    return "\n".join(
        [
            'node_prefix "consul-server-" { policy = "write" }',
            'service_prefix "" { policy = "read" }',
            "",
        ]
    )


def esm_policy(external_node_prefix: str) -> str:
    """ACL rules of consul-esm, narrowed from hashicorp/consul-esm's README.

    ESM runs on the servers (agent and session on `consul-server-*` nodes), keeps its state under
    `consul-esm/`, registers itself as `consul-esm`, and writes node-level check status only on
    the registrar's synthetic nodes (`external_node_prefix`, `identity.NODE_PREFIX`).

    Service write on every name is required, not generous: ESM writes each result as a txn
    Check `cas`, and Consul authorizes a service-level check op with `service:write` on the
    check's ServiceName (`agent/consul/txn_endpoint.go` `vetCheckTxnOp`), not with node:write.
    The registrar registers whatever service a task definition names (and `-sidecar-proxy`
    suffixes cannot be prefix-matched), so no narrower rule covers the checks ESM must update.
    """
    if not _DISCOVER_VALUE.match(external_node_prefix) or '"' in external_node_prefix:
        raise ValueError(
            f"external_node_prefix must be a node name prefix, got {external_node_prefix!r}"
        )
    return "\n".join(
        [
            'agent_prefix "consul-server-" { policy = "read" }',
            'session_prefix "consul-server-" { policy = "write" }',
            'key_prefix "consul-esm/" { policy = "write" }',
            'service_prefix "" { policy = "write" }',
            'node_prefix "" { policy = "read" }',
            f'node_prefix "{external_node_prefix}" {{ policy = "write" }}',
            "",
        ]
    )
