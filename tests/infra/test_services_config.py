"""Services as configuration: parsing, one-line errors, references, ports. Pure (no CDK)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_stack import image_ref, service_ports
from mesh_stack.config import MeshConfig
from mesh_stack.config_errors import ConfigError
from mesh_stack.mesh_service import ENVOY_CONTAINER, INIT_CONTAINER, LISTEN_ENV
from mesh_stack.service_environment import RESERVED_ENV, looks_secret
from mesh_stack.services_config import FIELD_NAMES, RESERVED_NAMES, intentions
from mesh_stack.suggest import closest
from tests.conftest import ROOT, cdk_json_context

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders/db-AbC123"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def orders(**overrides: Any) -> dict[str, Any]:
    return {
        "image": "registry.example/shop/orders:1.4.2",
        "port": 8080,
        "app_user": "1000:1000",
        "health_check_path": "/healthz",
        **overrides,
    }


def payments(**overrides: Any) -> dict[str, Any]:
    return {
        "image": "registry.example/shop/payments:2.0.1",
        "port": 8081,
        "app_user": "1000:1000",
        "health_check_path": "/healthz",
        "allow_from": ["orders"],
        **overrides,
    }


def tcp_only(entry: dict[str, Any], reason: str = "speaks gRPC only") -> dict[str, Any]:
    """`entry` without a health path, accepting Envoy's TCP check for the reason given."""
    return {
        **{k: v for k, v in entry.items() if k != "health_check_path"},
        "tcp_check_reason": reason,
    }


def config(services: dict[str, Any] | None = None, **keys: Any) -> MeshConfig:
    context: dict[str, Any] = {"demo_enabled": False, **keys}
    if services is not None:
        context["services"] = services
    return MeshConfig.from_context(context)


def test_a_service_takes_the_documented_defaults() -> None:
    cfg = config({"orders": orders(upstreams={"payments": 9001}), "payments": payments()})
    spec = {s.name: s for s in cfg.services}["orders"]
    # a DAEMON service: stable at zero tasks before any host has joined, so a first deploy on a
    # fresh account completes (a REPLICA service with count 1 would wait for a host)
    assert (spec.network_mode, spec.cpu, spec.memory, spec.count, spec.daemon) == (
        "host",
        256,
        512,
        0,
        True,
    )
    # metrics on the host's loopback (MeshService's default); a health path, so no TCP-only
    # acknowledgement
    assert (spec.prometheus_bind_address, spec.tcp_check_reason) == (None, None)
    assert dict(spec.upstreams) == {"payments": 9001}
    assert intentions(cfg.services) == [("orders", "payments")]


def test_services_given_on_the_command_line_parse_like_cdk_json() -> None:
    services = {"orders": orders(upstreams={"payments": 9001}), "payments": payments()}
    from_json = config(services)
    from_cli = config(json.dumps(services))  # type: ignore[arg-type]
    assert from_cli.services == from_json.services
    assert from_cli.service_ports == from_json.service_ports


def test_the_demo_is_two_entries_of_the_same_mechanism() -> None:
    cfg = MeshConfig.from_context({})
    assert [s.name for s in cfg.demo_services] == ["backend", "frontend"]
    assert intentions(cfg.demo_services) == [("frontend", "backend")]
    assert cfg.service_ports["backend"].proxy == 20000
    assert cfg.service_ports["frontend"].upstreams == {"backend": 9091}
    assert MeshConfig.from_context({"demo_enabled": "false"}).demo_services == ()


def test_cdk_json_keeps_its_keys() -> None:
    MeshConfig.from_context(cdk_json_context())


# ----------------------------------------------------------------------------- bad entries

BAD_ENTRIES: list[tuple[str, dict[str, Any], str]] = [
    (
        "unknown field",
        {"orders": orders(imgae="x")},
        r"services\.orders\.imgae=.*did you mean image\?",
    ),
    ("no image", {"orders": {"port": 8080}}, r"services\.orders\.image=None: is required"),
    ("no port", {"orders": {"image": "a/b:1"}}, r"services\.orders\.port=None: is required"),
    ("untagged", {"orders": orders(image="shop/orders")}, r"image='shop/orders': names no tag"),
    ("uppercase", {"orders": orders(image="Shop/Orders:1")}, r"image=.*must be lowercase"),
    ("garbage image", {"orders": orders(image="shop orders:1")}, r"is not an image reference"),
    (
        "port type",
        {"orders": orders(port="8080")},
        r"services\.orders\.port='8080': must be a port",
    ),
    ("low port", {"orders": orders(port=80)}, r"services\.orders: port 80 is below 1024"),
    ("root", {"orders": orders(app_user="0:1000")}, r"app_user='0:1000': must not be root"),
    # the rule MeshService applies (container_user.may_be_root): runc reads "00" as uid 0
    ("numeric root", {"orders": orders(app_user="1000:00")}, r"app_user='1000:00': must not be"),
    (
        "no health path",
        {"orders": {k: v for k, v in orders().items() if k != "health_check_path"}},
        r"services\.orders\.health_check_path=None: is needed in host mode: .*TCP connect .*"
        r"\"tcp_check_reason\"",
    ),
    (
        "tcp reason beside a path",
        {"orders": orders(tcp_check_reason="legacy")},
        r"tcp_check_reason='legacy': applies only to a host-mode service without",
    ),
    (
        "empty tcp reason",
        {"orders": tcp_only(orders(), reason=" ")},
        r"tcp_check_reason=' ': must be a non-empty string",
    ),
    (
        "metrics bind address",
        {"orders": orders(prometheus_bind_address="10.0.0.7")},
        r"services\.orders\.prometheus_bind_address='10\.0\.0\.7': prometheus_bind_address "
        r"must be '127\.0\.0\.1' or '0\.0\.0\.0'",
    ),
    (
        "metrics bind without metrics",
        {"orders": orders(prometheus_port=None, prometheus_bind_address="0.0.0.0")},
        r"prometheus_bind_address='0\.0\.0\.0': prometheus_bind_address applies only with",
    ),
    (
        "metrics bind on the bridge's loopback",
        {
            "orders": orders(
                network_mode="bridge",
                insecure_published_app_port=True,
                prometheus_bind_address="127.0.0.1",
            )
        },
        r"in bridge mode is the Envoy container's own loopback",
    ),
    # main's refusal of ECS-reserved and ephemeral host ports (ports.fixed_host_port_problem,
    # through service_ports.plan), for configured ports as for MeshService's
    (
        "ephemeral app port",
        {"orders": orders(port=40000)},
        r"services\.orders: port 40000 lies in the ephemeral range 32768\.\.60999",
    ),
    (
        "reserved upstream port",
        {"orders": orders(upstreams={"payments": 2375}), "payments": payments()},
        r"services\.orders: upstreams\[payments\] 2375 is reserved by ECS",
    ),
    (
        "reserved metrics port",
        {"orders": orders(prometheus_port=51678)},
        r"services\.orders: prometheus_port 51678 is reserved by ECS",
    ),
    ("bad name", {"Orders_1": orders()}, r"services\.Orders_1='Orders_1': must be a DNS label"),
    ("self upstream", {"orders": orders(upstreams={"orders": 9001})}, r"own upstream"),
    (
        "unknown upstream",
        {"orders": orders(upstreams={"payments": 9001})},
        r"services\.orders\.upstreams\.payments='payments': is not a known service",
    ),
    (
        "upstream not allowed",
        {"orders": orders(upstreams={"payments": 9001}), "payments": payments(allow_from=[])},
        r"upstreams\.payments=.*payments does not allow orders: .*add \"orders\" to payments",
    ),
    ("wildcard caller", {"payments": payments(allow_from=["*"])}, r"wildcard would undo"),
    (
        "unknown caller",
        {"payments": payments(allow_from=["billing"])},
        r"services\.payments\.allow_from='billing': is not a known service; declare it",
    ),
    ("self caller", {"payments": payments(allow_from=["payments"])}, r"cannot list itself"),
    ("secret env name", {"orders": orders(environment={"DB_PASSWORD": "hunter2"})}, r"secrets"),
    (
        "reserved env",
        {"orders": orders(environment={"CONSUL_MESH_LISTEN_ADDR": "0.0.0.0:1"})},
        r"is set by MeshService itself",
    ),
    ("env type", {"orders": orders(environment={"A": ["x"]})}, r"plain values only"),
    (
        "partial secret ARN",
        {"orders": orders(secrets={"DB": SECRET_ARN[:-7]})},
        r"secrets\.DB=.*complete Secrets Manager secret ARN",
    ),
    (
        "stage and version",
        {"orders": orders(secrets={"DB": f"{SECRET_ARN}:pw:AWSCURRENT:0123"})},
        r"not both",
    ),
    (
        "secret object field",
        {"orders": orders(secrets={"DB": {"arn": SECRET_ARN, "key": KEY_ARN}})},
        r"takes only `arn` and `kms_key_arn`",
    ),
    (
        "kms key alias",
        {"orders": orders(secrets={"DB": {"arn": SECRET_ARN, "kms_key_arn": "alias/db"}})},
        r"kms_key_arn='alias/db': must be a KMS key ARN",
    ),
    (
        "secret also in environment",
        {"orders": orders(environment={"DB": "x"}, secrets={"DB": SECRET_ARN})},
        r"also set in environment",
    ),
    ("bridge unacknowledged", {"orders": orders(network_mode="bridge")}, r"insecure_published"),
    ("awsvpc", {"orders": orders(network_mode="awsvpc")}, r"ECS Anywhere has no awsvpc"),
    (
        "acknowledgement in host mode",
        {"orders": orders(insecure_published_app_port=True)},
        r"applies to network_mode=bridge only",
    ),
    ("daemon and count", {"orders": orders(daemon=True, count=2)}, r"count=2: a daemon runs"),
    ("cpu", {"orders": orders(cpu=1)}, r"cpu=1: must be CPU units from 2 to 262144"),
    ("cpu above the kernel's shares", {"orders": orders(cpu=262_145)}, r"cpu=262145: must be"),
    (
        "replicas without a count",
        {"orders": orders(daemon=False)},
        r"services\.orders\.daemon=False: needs \"count\": replicas",
    ),
    (
        "sidecar's container name",
        {"envoy": orders()},
        r"services\.envoy='envoy': is reserved \(the Envoy sidecar's container name\)",
    ),
    ("init container's name", {"envoy-init": orders()}, r"services\.envoy-init=.*is reserved"),
    ("consul's own service", {"consul": orders()}, r"services\.consul=.*the Consul servers' own"),
    (
        "wildcard's CDK id",
        {"orders": orders(), "wildcard": payments()},
        r"services\.wildcard='wildcard': is reserved \(the CDK ID of the '\*' intentions\)",
    ),
    (
        "health path with a query",
        {"orders": orders(health_check_path="/health?full=1")},
        r"health_check_path='/health\?full=1': must be a path without '\?' or '#'",
    ),
    (
        "health path with a fragment",
        {"orders": orders(health_check_path="/health#x")},
        r"health_check_path='/health#x': must be a path without",
    ),
    (
        "non-ASCII image tag",
        {"orders": orders(image="ghcr.io/acme/a:v\u00e91")},
        r"services\.orders\.image=",
    ),
    ("memory", {"orders": orders(memory=4)}, r"memory=4: must be MiB from 6 to"),
    (
        "expose without path",
        {"orders": tcp_only(orders(expose_port=20600))},
        r"expose_port=20600: is used only in host mode with a health_check_path",
    ),
    (
        "proxy outside inbound range",
        {"orders": orders(proxy_port=21000)},
        r"services\.orders: proxy_port 21000 must lie in 20000\.\.20999",
    ),
    (
        "two apps on one port",
        {"orders": orders(), "payments": payments(port=8080)},
        r"services\.payments: port 8080 of mesh service 'payments' collides with port of "
        r"mesh service 'orders'",
    ),
    (
        "metrics on an upstream port",
        {
            "orders": orders(upstreams={"payments": 9001}),
            "payments": payments(prometheus_port=9001),
        },
        r"prometheus_port 9001 of mesh service 'payments' collides with upstreams\[payments\]",
    ),
    ("not an object", "[1]", r"services='\[1\]': must be a JSON object"),
    ("broken JSON", "{", r"services='\{': is not a JSON object"),
    (
        "same CDK id",
        {"a-1b": orders(), "a1b": payments(allow_from=[], port=8082)},
        r"A1b",
    ),
]


@pytest.mark.parametrize(
    ("services", "message"),
    [pytest.param(s, m, id=case) for case, s, m in BAD_ENTRIES],
)
def test_fails_when_a_service_entry_is_bad(services: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config(services)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("invalid context value services")


@pytest.mark.parametrize(
    ("entry", "schedule"),
    [
        ({}, (True, 0)),
        ({"daemon": True}, (True, 0)),
        ({"count": 3}, (False, 3)),
        ({"count": 0}, (False, 0)),
        ({"daemon": False, "count": 2}, (False, 2)),
    ],
)
def test_an_entry_is_a_daemon_unless_it_asks_for_replicas(
    entry: dict[str, Any], schedule: tuple[bool, int]
) -> None:
    (spec,) = config({"orders": orders(**entry)}).services
    assert (spec.daemon, spec.count) == schedule


@pytest.mark.parametrize("name", ["envoy", "envoy-init", "consul", "wildcard"])
@pytest.mark.parametrize("key", ["external_services", "team_services"])
def test_reserved_names_are_refused_in_every_list(key: str, name: str) -> None:
    value: Any = [name] if key == "external_services" else {name: {}}
    with pytest.raises(ConfigError, match=rf"^invalid context value {key}.*is reserved") as err:
        MeshConfig.from_context({"demo_enabled": False, key: value})
    assert "\n" not in str(err.value)


def test_fails_when_host_mode_services_would_reserve_more_than_100_ports_on_a_host() -> None:
    # 31 services with health path and metrics: 3 mapped ports each, 93 + ECS's own 6 = 99
    def many(count: int) -> dict[str, Any]:
        return {f"svc-{i}": orders(port=10000 + i) for i in range(count)}

    assert len(config(many(31)).service_ports) == 31
    with pytest.raises(ConfigError) as err:
        _ = config(many(32)).service_ports
    assert str(err.value) == (
        "invalid context value services: 32 host-mode services reserve 102 host ports on a host "
        "that runs them all (ECS's six included), more than the 100 ECS allows per container "
        "instance; ECS would not place the later tasks. Put some in bridge mode, or on other "
        "hosts with placement constraints in teams' own CDK apps"
    )


def test_a_container_may_take_more_cpu_shares_than_a_task_on_ecs_may_take() -> None:
    # 10240 caps a task's cpu; the container's cpu is CPU shares, up to the kernel's 262144
    (spec,) = config({"orders": orders(cpu=16384)}).services
    assert spec.cpu == 16384


def test_the_container_names_of_a_mesh_service_are_reserved() -> None:
    assert {ENVOY_CONTAINER, INIT_CONTAINER} <= set(RESERVED_NAMES)


def test_fails_when_a_name_is_given_twice_on_the_command_line() -> None:
    # json.loads (like Node's JSON.parse) would keep only the second orders entry, unseen
    entry = json.dumps(orders())
    given = f'{{"orders": {entry}, "orders": {entry}}}'
    with pytest.raises(ConfigError) as err:
        MeshConfig.from_context({"demo_enabled": False, "services": given})
    assert str(err.value) == (
        "invalid context value services: the name 'orders' appears twice in one JSON object, "
        "where only the last would count; give it once"
    )


def test_fails_when_a_host_mode_service_names_no_user() -> None:
    entry = orders()
    del entry["app_user"]
    with pytest.raises(ConfigError, match=r"services\.orders\.app_user=None: is required in host"):
        config({"orders": entry, "payments": payments()})


@pytest.mark.parametrize(
    ("environment", "secret"),
    [
        ({"DB_PASSWORD": "hunter2-very-secret"}, "hunter2-very-secret"),
        ({"AWS_KEY": "AKIAABCDEFGHIJKLMNOP"}, "AKIAABCDEFGHIJKLMNOP"),
        ({"DATABASE_URL": "postgres://app:s3cr3t@db:5432/app"}, "s3cr3t"),
        ({"CERT": "-----BEGIN RSA PRIVATE KEY-----\nabc"}, "BEGIN RSA"),
    ],
)
def test_a_value_that_looks_secret_is_refused_and_never_echoed(
    environment: dict[str, str], secret: str
) -> None:
    with pytest.raises(ConfigError, match=r"looks like a secret .*under `secrets` instead") as err:
        config({"orders": orders(environment=environment)})
    assert secret not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("DB_PASSWORD", "x", True),
        ("SESSION_TOKEN", "x", True),
        ("STRIPE_API_KEY", "x", True),
        ("client-secret", "x", True),
        ("PASSWORD_MIN_LENGTH", "12", False),
        ("SECRET_NAME", "prod/db", False),
        ("TOKEN_AUDIENCE", "orders", False),
        ("DATABASE_URL", "postgres://db:5432/app", False),
        ("REDIS_URL", "redis://:p4ss@cache:6379", True),
        ("BROKER", "amqp://:pw@mq/vhost", True),
        ("UPSTREAM_URIS", "http://127.0.0.1:9091", False),
    ],
)
def test_what_looks_like_a_secret(name: str, value: str, secret: bool) -> None:
    assert (looks_secret(name, value) is not None) is secret


def test_the_environment_meshservice_sets_is_the_one_configuration_reserves() -> None:
    assert RESERVED_ENV == LISTEN_ENV


def test_secrets_take_the_ecs_value_from_forms() -> None:
    cfg = config(
        {
            "orders": orders(
                upstreams={},
                secrets={
                    "DB_URL": SECRET_ARN,
                    "DB_USER": f"{SECRET_ARN}:username::",
                    "DB_OLD": f"{SECRET_ARN}:password:AWSPREVIOUS:",
                    "DB_KEYED": {"arn": SECRET_ARN, "kms_key_arn": KEY_ARN},
                },
            )
        }
    )
    (spec,) = cfg.services
    refs = {r.env: r for r in spec.secrets}
    assert {r.secret_arn for r in refs.values()} == {SECRET_ARN}
    assert (refs["DB_USER"].json_key, refs["DB_USER"].version_stage) == ("username", None)
    assert (refs["DB_OLD"].json_key, refs["DB_OLD"].version_stage) == ("password", "AWSPREVIOUS")
    assert refs["DB_KEYED"].kms_key_arn == KEY_ARN
    assert refs["DB_URL"].json_key is None


# ------------------------------------------------------------------- names across the config


def test_fails_when_a_service_takes_a_demo_name() -> None:
    with pytest.raises(
        ConfigError, match=r"services\.backend='backend': is already declared by the demo"
    ):
        MeshConfig.from_context({"services": {"backend": payments(allow_from=[])}})
    # the same entry is fine once the demo is off
    assert config({"backend": payments(allow_from=[])}).services[0].name == "backend"


def test_upstreams_and_callers_may_name_external_and_team_services() -> None:
    cfg = config(
        {"orders": orders(upstreams={"billing": 9002, "legacy-erp": 9003}, allow_from=["web"])},
        external_services=["legacy-erp", "web"],
        team_services={"billing": {"allow_from": ["orders"]}},
    )
    assert intentions([*cfg.services, *cfg.team_services]) == [
        ("web", "orders"),
        ("orders", "billing"),
    ]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"external_services": ["orders"]}, r"external_services='orders': is already declared"),
        ({"external_services": "erp,erp"}, r"external_services=.*lists \['erp'\] more than once"),
        ({"external_services": ["ERP"]}, r"external_services='ERP': must be a DNS label"),
        (
            {"team_services": {"billing": {"owner": "x"}}},
            r"team_services\.billing\.owner=.*allow_from",
        ),
        (
            {"team_services": {"billing": {"allow_from": ["nobody"]}}},
            r"team_services\.billing\.allow_from='nobody': is not a known service",
        ),
        ({"team_services": {"payments": {}}}, r"team_services\.payments='payments': is already"),
    ],
)
def test_fails_when_the_other_service_lists_are_bad(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config({"orders": orders(), "payments": payments()}, **keys)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------- ports


def test_default_ports_follow_the_name_not_the_order() -> None:
    forward = config({"orders": orders(), "payments": payments()}).service_ports
    backward = config({"payments": payments(), "orders": orders()}).service_ports
    assert forward == backward
    for name in ("orders", "payments"):
        slot = service_ports.home_slot(name)
        assert forward[name].proxy == 20000 + slot
        assert forward[name].metrics == 21000 + slot
        assert forward[name].expose == forward[name].proxy + 500
    tcp = config({"orders": tcp_only(orders())}).service_ports["orders"]
    assert tcp.expose is None  # no health path: TCP check on the proxy port


def test_a_service_keeps_its_ports_when_another_is_added() -> None:
    alone = config({"payments": payments(allow_from=[])}).service_ports["payments"]
    crowd = {f"svc-{i}": payments(allow_from=[], port=10000 + i) for i in range(30)}
    with_others = config({"payments": payments(allow_from=[]), **crowd}).service_ports
    # unless a newcomer's name hashes to the same slot and sorts first
    assert not any(
        service_ports.home_slot(name) == service_ports.home_slot("payments") and name < "payments"
        for name in crowd
    )
    assert with_others["payments"] == alone


def test_automatic_ports_step_around_every_port_already_taken() -> None:
    home = service_ports.home_slot("payments")
    # orders' app listens on exactly the proxy port payments would take by default
    cfg = config(
        {
            "orders": orders(port=20000 + home, allow_from=[]),
            "payments": payments(allow_from=[]),
        }
    )
    assert cfg.service_ports["payments"].proxy == 20000 + (home + 1) % service_ports.AUTO_SLOTS


def test_explicit_ports_are_kept_and_health_listens_500_above_the_proxy() -> None:
    cfg = config(
        {
            "orders": orders(
                upstreams={}, proxy_port=20300, prometheus_port=9300, health_check_path="/ready"
            )
        }
    )
    ports = cfg.service_ports["orders"]
    assert (ports.proxy, ports.expose, ports.metrics) == (20300, 20800, 9300)


def test_a_host_mode_service_without_a_path_says_why_a_tcp_check_is_enough() -> None:
    (spec,) = config(
        {"orders": tcp_only(orders(), reason="  gRPC only; crashes stop the task ")}
    ).services
    assert (spec.health_check_path, spec.tcp_check_reason) == (
        None,
        "gRPC only; crashes stop the task",
    )
    # a bridge-mode service's TCP check dials the app itself: nothing to accept
    bridged = orders(network_mode="bridge", insecure_published_app_port=True)
    del bridged["health_check_path"]
    assert config({"orders": bridged}).services[0].tcp_check_reason is None


def test_metrics_may_be_opened_to_an_off_host_scraper_explicitly() -> None:
    (spec,) = config({"orders": orders(prometheus_bind_address="0.0.0.0")}).services
    assert spec.prometheus_bind_address == "0.0.0.0"


def test_a_null_metrics_port_turns_the_metrics_listener_off() -> None:
    cfg = config({"orders": orders(prometheus_port=None)})
    assert cfg.service_ports["orders"].metrics is None


def test_bridge_services_keep_meshservice_defaults_and_hold_no_host_port() -> None:
    bridged = orders(network_mode="bridge", insecure_published_app_port=True)
    cfg = config({"orders": bridged, "web": orders(port=8080, app_user="1000")})
    ports = cfg.service_ports["orders"]
    assert (ports.proxy, ports.metrics) == (20000, 9102)
    assert ports.host_ports() == {}


def test_user_services_avoid_the_demo_ports_and_collide_loudly_when_told_to() -> None:
    cfg = MeshConfig.from_context({"services": {"orders": orders()}})
    assert 9090 not in cfg.service_ports["orders"].host_ports().values()
    with pytest.raises(
        ConfigError,
        match=r"port 9090 of mesh service 'orders' collides with port of mesh service 'backend'",
    ):
        MeshConfig.from_context({"services": {"orders": orders(port=9090)}})


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
        min_size=1,
        max_size=40,
        unique=True,
    )
)
def test_automatic_ports_never_collide_and_leave_the_team_range_alone(names: list[str]) -> None:
    requests = [
        service_ports.PortRequest(service=n, host_mode=True, needs_expose=True, fixed=(8000 + i,))
        for i, n in enumerate(names)
    ]
    assigned = service_ports.assign(requests)
    used = [p for a in assigned.values() for p in (a.proxy, a.expose, a.metrics)]
    assert len(used) == len(set(used))
    for ports in assigned.values():
        assert 20000 <= ports.proxy < 20250  # 20250-20499 is left to teams' own apps
        assert ports.expose == ports.proxy + 500


# ---------------------------------------------------------------------- top-level keys


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("onprem_cidr", "onprem_cidrs"),
        ("service", "services"),
        ("demo-enabled", "demo_enabled"),
        ("Region", "region"),
        ("reconcile_interval", "reconcile_interval_minutes"),
        ("extrenal_services", "external_services"),
    ],
)
def test_fails_when_a_context_key_looks_like_a_typo_of_ours(key: str, meant: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^unknown context key '{key}': did you mean {meant}\?$"
    ):
        MeshConfig.from_context({key: "x"})


@pytest.mark.parametrize(
    "key",
    [
        "@aws-cdk/core:enablePartitionLiterals",
        "@aws-cdk-containers/ecs-service-extensions:enableDefaultLogDriver",
        "aws:cdk:enable-path-metadata",
        "aws-cdk:enableDiffNoFail",
        "availability-zones:account=123456789012:region=us-east-1",
        "acknowledged-issue-numbers",
        "cli-telemetry",
        "my_team_setting",
    ],
)
def test_context_keys_of_cdk_and_other_tools_pass(key: str) -> None:
    MeshConfig.from_context({key: "x"})


def test_closest_names_the_intended_key_only() -> None:
    assert closest("prefx", ["prefix", "region"]) == "prefix"
    assert closest("team", ["prefix", "region", "services"]) is None


def test_fails_when_the_prefix_is_reserved_by_parameter_store() -> None:
    with pytest.raises(ConfigError, match=r"prefix='ssm-mesh': must not start with aws or ssm"):
        MeshConfig.from_context({"prefix": "ssm-mesh"})


# ------------------------------------------------------------------------- image references


@pytest.mark.parametrize(
    ("reference", "domain", "path", "version"),
    [
        ("nginx:1.27", "", "nginx", "1.27"),
        ("library/nginx:1.27", "", "library/nginx", "1.27"),
        ("registry.example/shop/orders:1.4.2", "registry.example", "shop/orders", "1.4.2"),
        ("localhost:5000/app:dev", "localhost:5000", "app", "dev"),
        ("[fd00::1]:5000/app:1", "[fd00::1]:5000", "app", "1"),
        (f"app:1@sha256:{'a' * 64}", "", "app", f"sha256:{'a' * 64}"),
    ],
)
def test_image_references_parse_like_the_registry_grammar(
    reference: str, domain: str, path: str, version: str
) -> None:
    parsed = image_ref.parse(reference)
    assert (parsed.domain, parsed.path, parsed.version) == (domain, path, version)


@pytest.mark.parametrize(
    "reference",
    [
        "nginx",
        "nginx:",
        "a//b:1",
        "-a:1",
        "app:" + "x" * 129,
        "a/" * 130 + "b:1",
        "ghcr.io/acme/a:v\u00e91",  # Go RE2's \w (the registry's grammar) is ASCII only
        "ghcr.io/acme/a:\u0661",  # an Arabic-Indic digit
    ],
)
def test_fails_when_an_image_reference_is_malformed_or_unpinned(reference: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        image_ref.parse(reference)


def test_ecr_images_are_recognised_with_their_repository_arn() -> None:
    ecr = image_ref.ecr_repository(
        image_ref.parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop/orders:1.4.2")
    )
    assert ecr is not None
    assert ecr.arn == "arn:aws:ecr:eu-west-1:123456789012:repository/shop/orders"
    cn = image_ref.ecr_repository(
        image_ref.parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/app:1")
    )
    assert cn is not None
    assert cn.partition == "aws-cn"
    assert image_ref.ecr_repository(image_ref.parse("ghcr.io/acme/app:1")) is None


def test_the_example_of_docs_services_md_is_a_valid_configuration() -> None:
    text = (ROOT / "docs" / "services.md").read_text()
    section = text.split("## Services as configuration", 1)[1]
    example = json.loads("{" + section.split("```json\n", 1)[1].split("```", 1)[0] + "}")
    cfg = MeshConfig.from_context(example)
    assert intentions([*cfg.services, *cfg.team_services]) == [
        ("orders", "payments"),
        ("orders", "billing"),
    ]
    (orders_spec, _) = cfg.services
    assert [s.env for s in orders_spec.secrets] == ["DB_URL"]


def test_docs_services_md_documents_every_field_of_an_entry() -> None:
    text = (ROOT / "docs" / "services.md").read_text()
    table = text.split("### Fields of a `services` entry", 1)[1].split("\n### ", 1)[0]
    documented = {
        name
        for line in table.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])
    }
    assert documented == set(FIELD_NAMES)
