"""Envoy v3 bootstrap for an agentless sidecar that takes its xDS straight from Consul servers.

Pure functions over the standard library: the Envoy init container of every mesh task runs this
file (combined with `lambda/registrar/identity.py` and `assets/envoy_init.py`, see
`mesh_stack/init_program.py`) in a plain Python image, and tests call it directly. Nothing here
imports another project module, so the three files can be executed as one program.

Facts it is built on (DESIGN.md "Agentless Envoy"; consul-dataplane
`internal/bootstrap/bootstrap_tpl.go`; Envoy v3 protos):
- Consul servers answer only the delta xDS protocol: `DELTA_GRPC`, V3 resource/transport APIs.
- `node.id` selects the proxy registration, `node.metadata.node_name` the catalog node it is on.
- The ACL token travels as gRPC metadata `x-consul-token`; it is the only secret in the output.
- The admin API serves `/config_dump` (this bootstrap, token included) and `/quitquitquit`, so
  it listens on a unix socket (mode 0600) and never on a TCP port: in host mode 127.0.0.1 is the
  host's loopback, open to every local process. Envoy binds a `pipe` address for admin like any
  listen socket and chmods it to `mode` right after bind (envoyproxy/envoy
  `source/server/admin/admin.cc` startHttpListener -> `TcpListenSocket`;
  `source/common/network/socket_impl.cc` SocketImpl::bind); a STATIC cluster may point at a
  pipe (consul-dataplane's own bootstrap does so for its agent socket).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

XDS_CLUSTER = "consul_server"
SELF_ADMIN_CLUSTER = "self_admin"
PROMETHEUS_LISTENER = "envoy_prometheus_metrics_listener"
PROMETHEUS_PATH = "/stats/prometheus"

DEFAULT_ADMIN_SOCKET = "/consul-mesh-admin/admin.sock"
ADMIN_SOCKET_MODE = 0o600
DEFAULT_PROMETHEUS_BIND = "0.0.0.0:9102"
DEFAULT_TLS_PORT = 8503  # Consul >= 1.14 serves gRPC-TLS here by default
DEFAULT_PLAINTEXT_PORT = 8502  # off on the servers unless explicitly configured

_TYPE = "type.googleapis.com/"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_DNS_CLUSTER = "envoy.extensions.clusters.dns.v3.DnsCluster"
# The name the DNS cluster factory registers (envoyproxy/envoy
# `source/extensions/clusters/dns/dns_cluster.h`, DnsClusterFactory).
DNS_CLUSTER_FACTORY = "envoy.cluster.dns"
# Linux `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL (unix(7)).
_MAX_SOCKET_PATH = 107

# Hostnames (RFC 1123 labels) and Consul IDs/names we put into the bootstrap. IDs may hold
# anything the registrar derives from service names and task IDs; quoting is never needed.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
# gRPC metadata values must be printable ASCII; Consul tokens are UUIDs.
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")
_PEM_CERT = "-----BEGIN CERTIFICATE-----"


def _check_port(name: str, port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{name} must be an integer port in 1..65535, got {port!r}")
    return port


def _check_ident(name: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ValueError(
            f"{name} must be 1-256 characters of letters, digits, '.', '_' or '-' starting "
            f"with a letter or digit, got {value!r}"
        )
    return value


def _check_host(name: str, host: object) -> str:
    if not isinstance(host, str) or not host:
        raise ValueError(f"{name} must be a DNS name or IP address, got {host!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{name} must be a DNS name or IP address, got {host!r}") from None
    return host


def parse_bind(value: str, name: str = "prometheus_bind") -> tuple[str, int]:
    """`"0.0.0.0:9102"` or `"[::]:9102"` -> (ip, port). Envoy listeners bind IP literals only."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"{name} must be '<ip>:<port>' (e.g. '0.0.0.0:9102'), got {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{name} must bind an IP address literal such as 0.0.0.0, got {value!r}"
        ) from None
    if not port_text.isdigit():
        raise ValueError(f"{name} must end in a port number, got {value!r}")
    return host, _check_port(f"{name} port", int(port_text))


def check_socket_path(name: str, path: object) -> str:
    """An absolute filesystem path for a unix socket; abstract (`@`) sockets are refused.

    An abstract socket has no file, so no mode protects it, and it belongs to the network
    namespace: in host mode every process on the host could connect to it.
    """
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path.endswith("/")
        or any(c.isspace() or c == "\0" for c in path)
        or len(path.encode("utf-8")) > _MAX_SOCKET_PATH
    ):
        raise ValueError(
            f"{name} must be an absolute file path of at most {_MAX_SOCKET_PATH} bytes without "
            f"spaces (a unix socket, never an abstract '@' one), got {path!r}"
        )
    return path


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _single_endpoint(cluster: str, address: dict[str, Any]) -> dict[str, Any]:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


def _upstream_tls(ca_pem: str, server_name: str) -> dict[str, Any]:
    """TLS to the Consul servers, verified against the Consul CA and the expected server name.

    `sni` alone does not make Envoy check the certificate's name, so the SAN is matched
    explicitly. ALPN `h2` is set because gRPC servers (grpc-go >= 1.67) refuse TLS without it.
    """
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPE + _TLS_CONTEXT,
            "sni": server_name,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"inline_string": ca_pem},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": server_name}}
                    ],
                },
            },
        },
    }


def xds_cluster(
    *,
    host: str,
    port: int,
    ca_pem: str | None,
    tls_server_name: str | None,
    plaintext: bool,
) -> dict[str, Any]:
    """The static cluster Envoy streams ADS from: the Consul servers behind their load balancer.

    Strict DNS keeps every address the load balancer name resolves to (one per AZ), so a
    reconnect after losing one AZ lands on another. It is configured through the DNS cluster
    extension: Envoy 1.34 deprecates the Cluster-level `respect_dns_ttl`/`dns_refresh_rate`
    and ignores `dns_lookup_family` there once `cluster_type` is a DnsCluster
    (envoyproxy/data-plane-api `envoy/config/cluster/v3/cluster.proto` at the 1.34.0 cut,
    2025-04-14); `all_addresses_in_single_endpoint: false` selects strict DNS
    (`envoy/extensions/clusters/dns/v3/dns_cluster.proto`, added in 1.33). HTTP/2 keepalive
    pings every 30 s keep the idle stream alive through the NLB (350 s idle timeout) and detect
    a dead peer; Consul's gRPC server permits pings down to 15 s.
    """
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "cluster_type": {
            "name": DNS_CLUSTER_FACTORY,
            "typed_config": {
                "@type": _TYPE + _DNS_CLUSTER,
                "dns_lookup_family": "V4_ONLY",
                "respect_dns_ttl": True,
                "all_addresses_in_single_endpoint": False,
            },
        },
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": _TYPE + _HTTP_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
        "load_assignment": _single_endpoint(XDS_CLUSTER, _socket(host, port)),
    }
    if not plaintext:
        if ca_pem is None or _PEM_CERT not in ca_pem:
            raise ValueError(
                "ca_pem must be the Consul CA certificate in PEM form (it contains "
                f"'{_PEM_CERT}') unless plaintext is opted in, got {_describe(ca_pem)}"
            )
        name = _check_host("tls_server_name", tls_server_name or host)
        cluster["transport_socket"] = _upstream_tls(ca_pem, name)
    return cluster


def _describe(value: str | None) -> str:
    return "nothing" if not value else f"{len(value)} characters without a certificate"


def prometheus_resources(bind: str, admin_socket: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(listener, cluster) that publish `/stats/prometheus` and nothing else of the admin API.

    The admin interface itself stays on its unix socket (it can dump the token, drain
    listeners and quit Envoy); this listener forwards exactly one path to it over that socket
    and answers 404 to every other request.
    """
    address, port = parse_bind(bind)
    listener = {
        "name": PROMETHEUS_LISTENER,
        "address": _socket(address, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _TYPE + _HCM,
                            "stat_prefix": "envoy_prometheus_metrics",
                            "codec_type": "HTTP1",
                            "route_config": {
                                "name": "self_admin_route",
                                "virtual_hosts": [
                                    {
                                        "name": SELF_ADMIN_CLUSTER,
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"path": PROMETHEUS_PATH},
                                                "route": {"cluster": SELF_ADMIN_CLUSTER},
                                            },
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {"status": 404},
                                            },
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _TYPE + _ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    cluster = {
        "name": SELF_ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": _single_endpoint(SELF_ADMIN_CLUSTER, {"pipe": {"path": admin_socket}}),
    }
    return listener, cluster


def render_bootstrap(
    *,
    proxy_id: str,
    service: str,
    node_name: str,
    token: str,
    xds_host: str,
    xds_port: int | None = None,
    ca_pem: str | None = None,
    tls_server_name: str | None = None,
    plaintext: bool = False,
    admin_socket: str = DEFAULT_ADMIN_SOCKET,
    prometheus_bind: str | None = DEFAULT_PROMETHEUS_BIND,
) -> dict[str, Any]:
    """The Envoy bootstrap (a JSON-ready dict) for one sidecar.

    proxy_id: the connect-proxy service ID registered for this task (`identity.proxy_id`).
    service: the destination service name; Envoy's `node.cluster` and stats label.
    node_name: the catalog node the registrar registers this task on (`identity.node_name`).
    token: Consul ACL token with `service:write` on `service`; sent as `x-consul-token`.
    xds_host / xds_port: the Consul servers' load balancer; port defaults to 8503 (gRPC-TLS),
        or 8502 when `plaintext` is opted in.
    ca_pem / tls_server_name: the Consul CA that signs the server certificates and the DNS name
        those certificates carry (default: `xds_host`); both ignored with `plaintext`.
    admin_socket: unix socket of the Envoy admin API (created mode 0600); its directory must be
        writable by Envoy and closed to everyone else.
    prometheus_bind: `<ip>:<port>` serving `/stats/prometheus` only; None disables it.
    """
    _check_ident("proxy_id", proxy_id)
    _check_ident("service", service)
    _check_ident("node_name", node_name)
    if not isinstance(token, str) or not _TOKEN.match(token):
        # Never echo the token: say only what is wrong with it.
        length = len(token) if isinstance(token, str) else type(token).__name__
        raise ValueError(
            "token must be 1-512 printable ASCII characters without spaces "
            f"(value withheld, length {length})"
        )
    _check_host("xds_host", xds_host)
    if xds_port is None:
        xds_port = DEFAULT_PLAINTEXT_PORT if plaintext else DEFAULT_TLS_PORT
    _check_port("xds_port", xds_port)
    check_socket_path("admin_socket", admin_socket)

    clusters = [
        xds_cluster(
            host=xds_host,
            port=xds_port,
            ca_pem=ca_pem,
            tls_server_name=tls_server_name,
            plaintext=plaintext,
        )
    ]
    static: dict[str, Any] = {"clusters": clusters}
    if prometheus_bind is not None:
        listener, admin_cluster = prometheus_resources(prometheus_bind, admin_socket)
        clusters.append(admin_cluster)
        static["listeners"] = [listener]

    return {
        "node": {
            "id": proxy_id,
            "cluster": service,
            "metadata": {"node_name": node_name, "namespace": "default", "partition": "default"},
        },
        "admin": {"address": {"pipe": {"path": admin_socket, "mode": ADMIN_SOCKET_MODE}}},
        "static_resources": static,
        "dynamic_resources": {
            # Wait for the listeners and clusters however long it takes (consul-dataplane
            # `bootstrap_tpl.go` does the same): the registrar writes the sidecar only once
            # ECS reports the task RUNNING, so the first xDS answer can come late.
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {"cluster_name": XDS_CLUSTER},
                        "initial_metadata": [{"key": "x-consul-token", "value": token}],
                    }
                ],
            },
        },
    }
