"""The sidecar bootstrap: strict against Envoy's v3 protos, and the IDs the registrar writes.

Pure tests (no CDK). Every bootstrap is parsed by `json_format.Parse` into
`envoy.config.bootstrap.v3.Bootstrap`, which rejects unknown fields and wrong shapes, the way
Envoy itself would refuse to start.
"""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import identity  # the registrar's own module (lambda/registrar is on pytest's path)
import pytest

# Importing these registers the message types that typed_config @type URLs name, so the Any
# fields resolve (and are checked) instead of failing as unknown types.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import any_pb2, json_format, message, symbol_database

from mesh_stack import envoy, init_program

ROOT = Path(__file__).resolve().parents[2]
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/mesh/0123456789abcdef0123456789abcdef"
CLUSTER_ARN = "arn:aws:ecs:eu-west-1:123456789012:cluster/mesh"
TOKEN = "5a6c3b1e-7d2f-4c8a-9e0b-1f2d3c4b5a69"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
NLB = "consul-nlb-0123456789.elb.eu-west-1.amazonaws.com"

# Bridge: Envoy has its own network namespace, defaults are fine. Host: the task shares the
# host's ports, so a second mesh service on that host needs its own metrics port. The admin
# API is a unix socket in the task's own volume in both modes.
MODES = {
    "bridge": {"prometheus_bind": "0.0.0.0:9102"},
    "host": {"prometheus_bind": "0.0.0.0:9202"},
}
ADMIN_SOCKET = "/consul-mesh-admin/admin.sock"
TRANSPORTS = {
    "tls": {"ca_pem": CA_PEM, "tls_server_name": "server.dc1.consul"},
    "plaintext": {"plaintext": True},
}


def render(mode: str = "bridge", transport: str = "tls", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "proxy_id": identity.proxy_id(identity.service_id("backend", TASK_ARN)),
        "service": "backend",
        "node_name": identity.node_name(TASK_ARN),
        "token": TOKEN,
        "xds_host": NLB,
        **MODES[mode],
        **TRANSPORTS[transport],
    }
    args.update(overrides)
    return envoy.render_bootstrap(**args)


def strict_parse(bootstrap: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    """What Envoy reads: the JSON text, parsed without tolerance for unknown fields."""
    return json_format.Parse(json.dumps(bootstrap), bootstrap_pb2.Bootstrap())


def xds(bootstrap: dict[str, Any]) -> dict[str, Any]:
    clusters = bootstrap["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == envoy.XDS_CLUSTER)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_bootstrap_parses_strictly_into_envoy_v3(mode: str, transport: str) -> None:
    # GIVEN a sidecar in either network mode, over TLS or the plaintext opt-in
    # WHEN its bootstrap is rendered and parsed as Envoy would
    message = strict_parse(render(mode, transport))
    # THEN it is a complete delta-ADS bootstrap
    ads = message.dynamic_resources.ads_config
    assert ads.api_type == ads.DELTA_GRPC
    assert message.node.id == "backend-0123456789abcdef0123456789abcdef-sidecar-proxy"
    assert message.admin.address.pipe.path == ADMIN_SOCKET


def _set_fields(msg: message.Message, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every field set anywhere in `msg`, typed_config (Any) payloads unpacked."""
    for field, value in msg.ListFields():
        here = f"{path}.{field.name}" if path else field.name
        yield here, field
        if field.message_type is None:
            continue
        items = value if field.is_repeated else [value]
        if field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, message.Message)]
        for item in items:
            if isinstance(item, any_pb2.Any):
                name = item.TypeName()
                inner = symbol_database.Default().GetSymbol(name)()
                assert item.Unpack(inner), name
                yield from _set_fields(inner, f"{here}<{name}>")
            elif isinstance(item, message.Message):
                yield from _set_fields(item, here)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_bootstrap_sets_no_field_the_pinned_envoy_deprecates(transport: str) -> None:
    # GIVEN the bootstrap parsed as Envoy reads it (typed_config payloads included)
    # THEN no field it sets is marked deprecated in the v3 protos
    deprecated = [
        path
        for path, field in _set_fields(strict_parse(render(transport=transport)))
        if field.GetOptions().deprecated
    ]
    assert deprecated == []


def test_bootstrap_waits_for_its_listeners_however_late_they_come() -> None:
    # The sidecar is registered only once ECS reports the task RUNNING: Envoy must keep
    # waiting for LDS/CDS instead of starting without listeners after the default 15 s.
    dynamic = strict_parse(render()).dynamic_resources
    for source in (dynamic.lds_config, dynamic.cds_config):
        assert source.HasField("initial_fetch_timeout")
        assert source.initial_fetch_timeout.ToTimedelta().total_seconds() == 0


def test_strict_parse_rejects_the_seed_documents_shape() -> None:
    # GIVEN a bootstrap with grpc_services as an object (the seed document's shape)
    bootstrap = render()
    ads = bootstrap["dynamic_resources"]["ads_config"]
    ads["grpc_services"] = ads["grpc_services"][0]
    ads["bogus_field"] = True
    # WHEN / THEN the validator refuses it, so the test above can fail
    with pytest.raises(json_format.ParseError):
        strict_parse(bootstrap)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_ads_is_delta_grpc_with_v3_resource_and_transport_apis(transport: str) -> None:
    dynamic = render(transport=transport)["dynamic_resources"]
    assert dynamic["ads_config"]["api_type"] == "DELTA_GRPC"
    assert dynamic["ads_config"]["transport_api_version"] == "V3"
    for source in ("lds_config", "cds_config"):
        assert dynamic[source]["ads"] == {}
        assert dynamic[source]["resource_api_version"] == "V3"
    services = dynamic["ads_config"]["grpc_services"]
    assert [s["envoy_grpc"]["cluster_name"] for s in services] == [envoy.XDS_CLUSTER]


def test_node_identifies_the_proxy_registration_and_its_catalog_node() -> None:
    node = render()["node"]
    assert node == {
        "id": identity.proxy_id(identity.service_id("backend", TASK_ARN)),
        "cluster": "backend",
        "metadata": {
            "node_name": "ecs-task-0123456789abcdef0123456789abcdef",
            "namespace": "default",
            "partition": "default",
        },
    }


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_xds_cluster_speaks_http2_to_the_consul_load_balancer(transport: str) -> None:
    cluster = xds(render(transport=transport))
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    expected_port = 8503 if transport == "tls" else 8502
    assert endpoint["address"]["socket_address"] == {"address": NLB, "port_value": expected_port}


def test_xds_cluster_keeps_every_address_of_the_load_balancer_through_the_dns_extension() -> None:
    # GIVEN the xDS cluster as Envoy parses it
    cluster = next(
        c for c in strict_parse(render()).static_resources.clusters if c.name == envoy.XDS_CLUSTER
    )
    # THEN it is a DNS cluster extension (not the deprecated Cluster-level DNS fields) ...
    assert cluster.WhichOneof("cluster_discovery_type") == "cluster_type"
    assert cluster.cluster_type.name == "envoy.cluster.dns"
    dns = dns_cluster_pb2.DnsCluster()
    assert cluster.cluster_type.typed_config.Unpack(dns)
    # ... with strict semantics: one host per address of the NLB name (one per AZ), IPv4,
    # re-resolved when the records' TTL runs out
    assert dns.all_addresses_in_single_endpoint is False
    assert dns.respect_dns_ttl is True
    assert dns.dns_lookup_family == dns_pb2.DnsLookupFamily.V4_ONLY


def test_tls_trusts_only_the_consul_ca_and_checks_the_server_name() -> None:
    message = strict_parse(render(transport="tls"))
    cluster = next(c for c in message.static_resources.clusters if c.name == envoy.XDS_CLUSTER)
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    assert context.sni == "server.dc1.consul"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.inline_string == CA_PEM
    assert [m.matcher.exact for m in validation.match_typed_subject_alt_names] == [
        "server.dc1.consul"
    ]
    assert list(context.common_tls_context.alpn_protocols) == ["h2"]


def test_tls_server_name_defaults_to_the_load_balancer_name() -> None:
    cluster = xds(render(transport="tls", tls_server_name=None))
    assert cluster["transport_socket"]["typed_config"]["sni"] == NLB


def test_plaintext_only_when_opted_in() -> None:
    assert "transport_socket" in xds(render(transport="tls"))
    assert "transport_socket" not in xds(render(transport="plaintext"))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_admin_listens_only_on_a_unix_socket_private_to_envoy(mode: str) -> None:
    # GIVEN a sidecar in either mode (in host mode 127.0.0.1 would be the host's loopback)
    message = strict_parse(render(mode))
    # THEN the admin API, which serves /config_dump with the token, is a unix socket that
    # Envoy creates with mode 0600 ...
    address = message.admin.address
    assert address.WhichOneof("address") == "pipe"
    assert (address.pipe.path, address.pipe.mode) == (ADMIN_SOCKET, 0o600)
    # ... and the only TCP listener of the bootstrap is the metrics listener
    bound = [
        (listener.address.socket_address.address, listener.address.socket_address.port_value)
        for listener in message.static_resources.listeners
    ]
    assert bound == [tuple(envoy.parse_bind(MODES[mode]["prometheus_bind"]))]


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_token_appears_only_in_the_xds_initial_metadata(transport: str) -> None:
    bootstrap = render(transport=transport)
    assert json.dumps(bootstrap).count(TOKEN) == 1
    service = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert service["initial_metadata"] == [{"key": "x-consul-token", "value": TOKEN}]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_prometheus_listener_forwards_only_the_stats_path(mode: str) -> None:
    bootstrap = render(mode)
    message = strict_parse(bootstrap)
    (listener,) = message.static_resources.listeners
    bound = listener.address.socket_address
    assert f"{bound.address}:{bound.port_value}" == MODES[mode]["prometheus_bind"]
    (hcm_filter,) = listener.filter_chains[0].filters
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert hcm_filter.typed_config.Unpack(hcm)
    routes = [r for vh in hcm.route_config.virtual_hosts for r in vh.routes]
    forwarded = [r for r in routes if r.HasField("route")]
    assert [(r.match.path, r.route.cluster) for r in forwarded] == [
        ("/stats/prometheus", "self_admin")
    ]
    # everything else is answered 404 by Envoy itself
    rest = [r for r in routes if not r.HasField("route")]
    assert [(r.match.prefix, r.direct_response.status) for r in rest] == [("/", 404)]
    # AND it reaches the admin API over its unix socket, with a STATIC cluster
    self_admin = next(c for c in message.static_resources.clusters if c.name == "self_admin")
    assert self_admin.type == self_admin.STATIC
    address = self_admin.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.WhichOneof("address") == "pipe"
    assert address.pipe.path == ADMIN_SOCKET


def test_prometheus_listener_can_be_disabled() -> None:
    message = strict_parse(render(prometheus_bind=None))
    assert list(message.static_resources.listeners) == []
    assert [c.name for c in message.static_resources.clusters] == [envoy.XDS_CLUSTER]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"admin_socket": "admin.sock"}, r"admin_socket must be an absolute file path"),
        ({"admin_socket": "@envoy-admin"}, r"never an abstract '@' one\), got '@envoy-admin'"),
        ({"admin_socket": "/" + "a" * 107}, r"admin_socket must be .* at most 107 bytes"),
        ({"xds_port": 70000}, r"xds_port must be an integer port in 1\.\.65535, got 70000"),
        ({"proxy_id": ""}, r"proxy_id must be .* got ''"),
        ({"node_name": "has space"}, r"node_name must be .* got 'has space'"),
        ({"xds_host": "not a host"}, r"xds_host must be a DNS name or IP address"),
        ({"prometheus_bind": "metrics:9102"}, r"IP address literal .* 'metrics:9102'"),
        ({"prometheus_bind": "0.0.0.0"}, r"prometheus_bind must be '<ip>:<port>'"),
        ({"ca_pem": None}, r"ca_pem must be the Consul CA certificate in PEM form"),
        ({"ca_pem": "garbage"}, r"ca_pem .* got 7 characters without a certificate"),
        ({"tls_server_name": "bad name"}, r"tls_server_name must be a DNS name"),
    ],
)
def test_fails_when_an_input_is_invalid(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(**overrides)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak"])
def test_fails_when_the_token_is_malformed_without_echoing_it(token: str) -> None:
    with pytest.raises(ValueError, match="token must be") as caught:
        render(token=token)
    if token:
        assert token not in str(caught.value)


# --- the init container, run as the container runs it ------------------------------------


class _Metadata(http.server.BaseHTTPRequestHandler):
    """ECS task metadata endpoint v4: `<base>/task` describes the calling task."""

    task: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        if self.path != "/v4/init-test/task":
            self.send_error(404)
            return
        body = json.dumps(self.task).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def metadata_endpoint() -> Iterator[str]:
    _Metadata.task = {"TaskARN": TASK_ARN, "Cluster": CLUSTER_ARN, "Family": "backend"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v4/init-test"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def program() -> str:
    return init_program.combined_source()


def run_init(program: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python3 -c <program>` in a clean environment, exactly the container's command."""
    return subprocess.run(
        [sys.executable, "-c", program],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def admin_dir() -> Iterator[Path]:
    """The admin socket's task volume; short, because a socket path has at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="adm", dir="/tmp") as path:
        yield Path(path)


def init_env(endpoint: str, out: Path, admin: Path, **extra: str) -> dict[str, str]:
    return {
        "ECS_CONTAINER_METADATA_URI_V4": endpoint,
        "CONSUL_MESH_SERVICE": "backend",
        "CONSUL_GRPC_HOST": NLB,
        "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
        "CONSUL_HTTP_TOKEN": TOKEN,
        "CONSUL_CACERT_PEM": CA_PEM,
        "ENVOY_BOOTSTRAP_PATH": str(out),
        "ENVOY_ADMIN_SOCKET": str(admin / "admin.sock"),
        **extra,
    }


def test_program_carries_the_registrars_identity_module_itself(program: str) -> None:
    # The init container runs the registrar's own file, not a re-implementation of it.
    identity_source = (ROOT / "lambda" / "registrar" / "identity.py").read_text()
    assert repr(init_program.compact(identity_source)) in program
    size = len(json.dumps(init_program.command()).encode())
    assert size <= init_program.MAX_PROGRAM_BYTES + 1024


def test_init_container_writes_the_ids_the_registrar_registers(
    metadata_endpoint: str, program: str, tmp_path: Path, admin_dir: Path
) -> None:
    # GIVEN a simulated task whose metadata endpoint reports its task ARN
    out = tmp_path / "envoy-bootstrap.json"
    admin_dir.chmod(0o755)  # as a fresh task volume comes
    # WHEN the init container's command runs
    result = run_init(program, init_env(metadata_endpoint, out, admin_dir))
    # THEN it writes a strict Envoy bootstrap, readable by its owner only
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bootstrap = json.loads(out.read_text())
    strict_parse(bootstrap)
    # AND the admin socket's directory is Envoy's alone: nobody else can reach the socket,
    # even before Envoy's chmod to 0600 after bind
    assert bootstrap["admin"]["address"]["pipe"]["path"] == str(admin_dir / "admin.sock")
    assert stat.S_IMODE(admin_dir.stat().st_mode) == 0o700
    # AND its node identity is exactly what the registrar writes for this task
    assert bootstrap["node"]["id"] == identity.proxy_id(identity.service_id("backend", TASK_ARN))
    assert bootstrap["node"]["metadata"]["node_name"] == identity.node_name(TASK_ARN)
    # AND the log line names the IDs but never the token
    log = json.loads(result.stdout)
    assert log["node-id"] == bootstrap["node"]["id"]
    assert TOKEN not in result.stdout + result.stderr


def test_init_container_appends_the_primary_port_for_multi_port_tasks(
    metadata_endpoint: str, program: str, tmp_path: Path, admin_dir: Path
) -> None:
    out = tmp_path / "envoy-bootstrap.json"
    env = init_env(metadata_endpoint, out, admin_dir, CONSUL_MESH_PRIMARY_PORT="8080")
    result = run_init(program, env)
    assert result.returncode == 0, result.stderr
    node = json.loads(out.read_text())["node"]
    assert node["id"] == identity.proxy_id(identity.service_id("backend", TASK_ARN, 8080))


def test_init_container_with_plaintext_opt_in_needs_no_ca(
    metadata_endpoint: str, program: str, tmp_path: Path, admin_dir: Path
) -> None:
    out = tmp_path / "envoy-bootstrap.json"
    env = init_env(
        metadata_endpoint, out, admin_dir, CONSUL_GRPC_PLAINTEXT="true", CONSUL_CACERT_PEM=""
    )
    result = run_init(program, env)
    assert result.returncode == 0, result.stderr
    cluster = xds(json.loads(out.read_text()))
    assert "transport_socket" not in cluster
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 8502


@pytest.mark.parametrize(
    "case",
    [
        ({"CONSUL_HTTP_TOKEN": ""}, "CONSUL_HTTP_TOKEN is missing"),
        ({"CONSUL_CACERT_PEM": ""}, "CONSUL_CACERT_PEM is missing"),
        ({"CONSUL_CACERT_PEM": "not a pem"}, "ca_pem must be the Consul CA certificate"),
        ({"CONSUL_MESH_SERVICE": "Backend_1"}, "CONSUL_MESH_SERVICE must be a DNS label"),
        ({"ENVOY_PROMETHEUS_BIND": "0.0.0.0:http"}, "must end in a port number"),
        ({"ECS_CONTAINER_METADATA_URI_V4": ""}, "must run as an ECS container"),
        ({"ENVOY_ADMIN_PORT": "19000"}, "ENVOY_ADMIN_PORT is no longer used"),
        ({"ENVOY_ADMIN_SOCKET": "admin.sock"}, "admin_socket must be an absolute file path"),
        ({"ENVOY_ADMIN_SOCKET": "/no-such-volume/admin.sock"}, "is the admin volume mounted?"),
    ],
)
def test_init_container_fails_clearly_and_writes_nothing(
    metadata_endpoint: str,
    program: str,
    tmp_path: Path,
    admin_dir: Path,
    case: tuple[dict[str, str], str],
) -> None:
    change, complaint = case
    out = tmp_path / "envoy-bootstrap.json"
    result = run_init(program, {**init_env(metadata_endpoint, out, admin_dir), **change})
    assert result.returncode == 1
    assert complaint in json.loads(result.stderr)["msg"]
    assert TOKEN not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_container_refuses_the_socket_in_the_read_only_bootstrap_volume(
    metadata_endpoint: str, program: str, tmp_path: Path
) -> None:
    out = tmp_path / "envoy-bootstrap.json"
    env = init_env(metadata_endpoint, out, tmp_path)
    result = run_init(program, env)
    assert result.returncode == 1
    assert "must not share the bootstrap's directory" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_container_fails_when_the_volume_is_missing(
    metadata_endpoint: str, program: str, tmp_path: Path, admin_dir: Path
) -> None:
    out = tmp_path / "not-mounted" / "envoy-bootstrap.json"
    result = run_init(program, init_env(metadata_endpoint, out, admin_dir))
    assert result.returncode == 1
    assert "is the volume mounted?" in result.stderr
