"""Pure decisions: which events matter, what lands in Consul, what to write against a record."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from decide import (
    Deregister,
    Register,
    Skip,
    VerifyAbsent,
    VerifySidecar,
    decide,
    desired_registration,
    mesh_target,
    triage,
)
from model import (
    ContainerDefinition,
    Host,
    InvalidTaskDefinition,
    MalformedEvent,
    PortMapping,
    Registration,
    StateRecord,
    TaskDefinition,
    TaskEvent,
    parse_event,
)
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    INSTANCE_ARN,
    OTHER_CLUSTER_ARN,
    task_definition,
    task_event,
)

HOST = Host(address=HOST_IP, instance_id="mi-0a1b2c3d4e5f60718", source="ssm")


def _event(template: str = "task_running_bridge.json", **kw: object) -> TaskEvent:
    return parse_event(json.dumps(task_event(template, **kw)))  # type: ignore[arg-type]


def _registration(
    template: str = "task_running_bridge.json", family: str = "web", host: Host = HOST
) -> Registration:
    event = _event(template)
    td = task_definition(family)
    app = mesh_target(td)
    assert isinstance(app, ContainerDefinition)
    return desired_registration(event, td, app, host)


# --------------------------------------------------------------------------------------------
# triage


@pytest.mark.parametrize(
    ("desired", "last", "phase"),
    [
        ("RUNNING", "RUNNING", "run"),
        ("STOPPED", "RUNNING", "stop"),
        ("STOPPED", "STOPPING", "stop"),
        ("STOPPED", "DEPROVISIONING", "stop"),
        ("STOPPED", "STOPPED", "stop"),
        ("RUNNING", "STOPPED", "stop"),
    ],
)
def test_triage_runs_and_stops_by_status(desired: str, last: str, phase: str) -> None:
    assert triage(_event(desired_status=desired, last_status=last), CLUSTER_ARN) == phase


@pytest.mark.parametrize("last", ["PROVISIONING", "PENDING", "ACTIVATING"])
def test_triage_ignores_tasks_not_running_yet(last: str) -> None:
    result = triage(_event(last_status=last), CLUSTER_ARN)
    assert isinstance(result, Skip)
    assert result.kind == "ignored"
    assert last in result.reason


def test_triage_ignores_other_clusters_and_launch_types() -> None:
    other = triage(_event(cluster_arn=OTHER_CLUSTER_ARN), CLUSTER_ARN)
    ec2 = triage(_event(launch_type="EC2"), CLUSTER_ARN)

    assert isinstance(other, Skip)
    assert "cluster/other" in other.reason
    assert isinstance(ec2, Skip)
    assert "launchType EC2 is not EXTERNAL" in ec2.reason


def test_mesh_target_skips_opted_out_and_unsupported_tasks() -> None:
    plain = mesh_target(task_definition("plain"))
    vpc = mesh_target(task_definition("vpc"))
    web = task_definition("web")
    twice = TaskDefinition(
        web.arn,
        "bridge",
        tuple(replace(c, labels={"consul-mesh.enabled": "true"}) for c in web.containers),
    )

    assert isinstance(plain, Skip)
    assert plain.kind == "ignored"
    assert isinstance(vpc, Skip)
    assert (vpc.kind, "network mode 'awsvpc' is not supported" in vpc.reason) == ("invalid", True)
    several = mesh_target(twice)
    assert isinstance(several, Skip)
    assert "several containers" in several.reason
    target = mesh_target(web)
    assert isinstance(target, ContainerDefinition)
    assert target.name == "web"


# --------------------------------------------------------------------------------------------
# desired registration (DESIGN.md section 3)


def test_bridge_task_registers_one_service_and_its_sidecar_on_host_ports() -> None:
    # GIVEN a RUNNING bridge task: web 8080 -> host 32768, envoy 20000 -> host 32769
    reg = _registration()
    task_id = "0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b"

    # THEN one synthetic node per task, with ESM's node meta
    assert reg.node == f"ecs-task-{task_id}"
    assert reg.address == HOST_IP
    assert reg.node_meta == {
        "external-node": "true",
        "external-probe": "false",
        "source": "ecs-anywhere-registrar",
        "cluster-arn": CLUSTER_ARN,
    }
    # AND one service instance at the host's address and host port
    (svc,) = reg.services
    assert (svc.id, svc.name, svc.port, svc.tags) == (
        f"web-{task_id}",
        "web",
        32768,
        ("v1", "blue"),
    )
    assert svc.meta == {
        "task-arn": f"arn:aws:ecs:us-east-1:123456789012:task/mesh/{task_id}",
        "task-id": task_id,
        "cluster-arn": CLUSTER_ARN,
        "container-instance-arn": INSTANCE_ARN,
        "source": "ecs-anywhere-registrar",
    }
    # AND its check is the HTTP path of the label, run by consul-esm against host:port
    assert (svc.check.http, svc.check.tcp) == (f"http://{HOST_IP}:32768/healthz", None)
    # AND the sidecar points at it, listens on Envoy's host port, binds inside its container
    sc = reg.sidecar
    assert (sc.id, sc.name, sc.port) == (f"web-{task_id}-sidecar-proxy", "web-sidecar-proxy", 32769)
    assert (sc.destination_name, sc.destination_id) == ("web", svc.id)
    assert (sc.local_service_address, sc.local_service_port) == (HOST_IP, 32768)
    assert sc.bind_port == 20000
    assert sc.meta == svc.meta
    assert [
        (u.destination_name, u.local_bind_port, u.local_bind_address) for u in sc.upstreams
    ] == [
        ("backend", 9001, "0.0.0.0"),
        ("db", 9002, "0.0.0.0"),
    ]
    assert [c.tcp or c.http for c in sc.checks] == [
        f"{HOST_IP}:32769",
        f"http://{HOST_IP}:32768/healthz",
    ]


def test_host_task_with_two_ports_gets_port_suffixes_and_loopback_upstreams() -> None:
    reg = _registration("task_running_host.json", "api")
    task_id = "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"

    assert [(s.id, s.port) for s in reg.services] == [
        (f"api-{task_id}-9090", 9090),
        (f"api-{task_id}-9091", 9091),
    ]
    sc = reg.sidecar
    assert sc.id == f"api-{task_id}-9090-sidecar-proxy"
    assert (sc.port, sc.bind_port) == (21000, 21000)
    assert (sc.local_service_address, sc.local_service_port) == ("127.0.0.1", 9090)
    assert [(u.destination_name, u.local_bind_address) for u in sc.upstreams] == [
        ("web", "127.0.0.1")
    ]


def test_host_task_without_health_path_is_checked_at_envoys_public_listener() -> None:
    # GIVEN a host-mode task (its app listens on 127.0.0.1 only) with no health path
    reg = _registration("task_running_host.json", "api")
    # THEN consul-esm, which checks from the Consul servers, never dials the app's own port:
    # every check is a TCP connect to Envoy's public listener on the host
    checks = [s.check for s in reg.services] + list(reg.sidecar.checks)
    assert {(c.tcp, c.http) for c in checks} == {(f"{HOST_IP}:21000", None)}
    assert len(reg.sidecar.checks) == 1
    assert reg.sidecar.expose == ()


def _host_task(labels: dict[str, str], *, app_mappings: bool = True) -> Registration:
    td = task_definition("api")
    api = td.container("api")
    assert api is not None
    api = replace(
        api,
        labels={**api.labels, **labels},
        port_mappings=api.port_mappings if app_mappings else (),
    )
    td = replace(td, containers=(api, *[c for c in td.containers if c.name != "api"]))
    app = mesh_target(td)
    assert isinstance(app, ContainerDefinition)
    return desired_registration(_event("task_running_host.json"), td, app, HOST)


def test_host_task_health_path_is_an_expose_path_served_by_envoy() -> None:
    # GIVEN a host-mode task with an HTTP health path and no app port published on the host
    reg = _host_task({"consul-mesh.health-check-path": "/ready"}, app_mappings=False)
    # THEN Envoy serves exactly that path on its expose listener (proxy port + 500), forwarded
    # to the app's primary port on loopback
    sc = reg.sidecar
    assert [(p.listener_port, p.path, p.local_path_port, p.protocol) for p in sc.expose] == [
        (21500, "/ready", 9090, "http")
    ]
    # AND every HTTP check targets that listener, never the app's port
    url = f"http://{HOST_IP}:21500/ready"
    assert [s.check.http for s in reg.services] == [url, url]
    assert [(c.tcp, c.http) for c in sc.checks] == [(f"{HOST_IP}:21000", None), (None, url)]


def test_expose_port_label_moves_envoys_health_listener() -> None:
    reg = _host_task(
        {"consul-mesh.health-check-path": "/ready", "consul-mesh.expose-port": "20999"}
    )
    assert [p.listener_port for p in reg.sidecar.expose] == [20999]
    assert reg.services[0].check.http == f"http://{HOST_IP}:20999/ready"


@pytest.mark.parametrize(
    ("port", "clash"),
    [("21000", "consul-mesh.proxy-port"), ("9091", "registered app port 9091")],
)
def test_fails_when_the_expose_port_collides(port: str, clash: str) -> None:
    labels = {"consul-mesh.health-check-path": "/ready", "consul-mesh.expose-port": port}
    with pytest.raises(InvalidTaskDefinition, match=rf"expose-port.*{port} collides with {clash}"):
        _host_task(labels)


def _with_containers(
    labels: dict[str, str], envoy_ports: tuple[int, ...], *extra: ContainerDefinition
) -> Registration:
    """The host-mode `api` task with Envoy mapping `envoy_ports` and `extra` containers."""
    td = task_definition("api")
    api, envoy = td.container("api"), td.container("envoy")
    assert api is not None
    assert envoy is not None
    envoy = replace(envoy, port_mappings=tuple(PortMapping(p, p, "tcp") for p in envoy_ports))
    api = replace(api, labels={**api.labels, **labels})
    td = replace(td, containers=(api, envoy, *extra))
    app = mesh_target(td)
    assert isinstance(app, ContainerDefinition)
    return desired_registration(_event("task_running_host.json"), td, app, HOST)


def _sidecar(name: str, *ports: int, protocol: str = "tcp") -> ContainerDefinition:
    return ContainerDefinition(name, {}, tuple(PortMapping(p, p, protocol) for p in ports))


HEALTH = {"consul-mesh.health-check-path": "/ready"}


def test_meshservice_shaped_task_reserves_its_envoy_listeners_without_collision() -> None:
    # GIVEN Envoy mapping its public, health (named by the label) and metrics ports, as
    # MeshService writes it, and another container on ports of its own
    reg = _with_containers(
        {**HEALTH, "consul-mesh.expose-port": "21500"},
        (21000, 21500, 9102),
        _sidecar("log-agent", 24224),
        _sidecar("dns", 21000, protocol="udp"),  # UDP never holds a TCP listener's port
    )
    assert [p.listener_port for p in reg.sidecar.expose] == [21500]


@pytest.mark.parametrize(
    ("labels", "envoy_ports", "extra", "message"),
    [
        # another container of the task maps Envoy's public listener port
        (
            {},
            (21000,),
            (_sidecar("log-agent", 21000),),
            r"label consul-mesh\.proxy-port: Envoy's public listener port 21000 collides with "
            r"a port mapping of container log-agent",
        ),
        # the app maps, without registering it, the port named as the proxy port
        (
            {"consul-mesh.proxy-port": "9999"},
            (9999,),
            (),
            r"consul-mesh\.proxy-port: .* 9999 collides with a port mapping of container api",
        ),
        # Envoy's metrics listener sits on the default health port (proxy port + 500)
        (
            HEALTH,
            (21000, 21500),
            (),
            r"label consul-mesh\.expose-port: Envoy's health listener port 21500 collides with "
            r"a port mapping of proxy container envoy \(another Envoy listener, such as its "
            r"metrics; if it reserves the health listener, set consul-mesh\.expose-port=21500\)",
        ),
        # an exporter container maps the port the label names for the health listener
        (
            {**HEALTH, "consul-mesh.expose-port": "9102"},
            (21000, 9102),
            (_sidecar("exporter", 9102),),
            r"consul-mesh\.expose-port: .* 9102 collides with a port mapping of container "
            r"exporter",
        ),
    ],
)
def test_fails_when_envoys_listener_port_is_held_in_the_task(
    labels: dict[str, str],
    envoy_ports: tuple[int, ...],
    extra: tuple[ContainerDefinition, ...],
    message: str,
) -> None:
    # GIVEN a hand-written host-mode task whose containers share the host's ports: Envoy would
    # fail to bind that listener and NACK it, its checks staying critical with no reason given
    # THEN the registrar refuses the task definition, naming the label to change
    with pytest.raises(InvalidTaskDefinition, match=message):
        _with_containers(labels, envoy_ports, *extra)


def test_bridge_task_has_no_expose_path_its_app_port_is_published() -> None:
    reg = _registration()
    assert reg.sidecar.expose == ()
    assert reg.services[0].check.http == f"http://{HOST_IP}:32768/healthz"


def test_no_check_is_named_serf_health() -> None:
    for reg in (_registration(), _registration("task_running_host.json", "api")):
        checks = [s.check for s in reg.services] + list(reg.sidecar.checks)
        assert all("serfHealth" not in (c.check_id, c.name) for c in checks)
        assert len({c.check_id for c in checks}) == len(checks)


def test_ipv6_host_addresses_are_bracketed_in_check_targets() -> None:
    reg = _registration(host=replace(HOST, address="fd00::10"))
    assert reg.services[0].check.http == "http://[fd00::10]:32768/healthz"


def test_digest_is_stable_and_follows_the_address() -> None:
    assert _registration().digest() == _registration().digest()
    assert (
        _registration().digest() != _registration(host=replace(HOST, address="10.0.0.9")).digest()
    )


def test_fails_when_a_bridge_port_has_no_binding() -> None:
    event = _event(host_ports={"envoy": {20000: 32769}})
    td = task_definition("web")
    app = td.container("web")
    assert app is not None
    with pytest.raises(MalformedEvent, match=r"containers\[name=web\] has no TCP network binding"):
        desired_registration(event, td, app, HOST)


def test_fails_when_the_proxy_container_is_missing() -> None:
    td = task_definition("web")
    without_envoy = replace(td, containers=tuple(c for c in td.containers if c.name != "envoy"))
    app = td.container("web")
    assert app is not None
    with pytest.raises(InvalidTaskDefinition, match=r"proxy container 'envoy' is not in the task"):
        desired_registration(_event(), without_envoy, app, HOST)


def test_fails_when_the_ports_label_names_an_unmapped_port() -> None:
    td = task_definition("web")
    app = td.container("web")
    assert app is not None
    app = replace(app, labels={**app.labels, "consul-mesh.ports": "8080,8443"})
    with pytest.raises(InvalidTaskDefinition, match=r"names \[8443\], which container web"):
        desired_registration(_event(), td, app, HOST)


# --------------------------------------------------------------------------------------------
# decide: the ordering table of docs/architecture.md


REG = _registration()
RUNNING_V3 = StateRecord(3, "running", REG.digest(), {"Node": REG.node})
STOPPED_V4 = StateRecord(4, "stopped")


@pytest.mark.parametrize(
    ("desired", "version", "record", "expected"),
    [
        # nothing recorded: do what the event says
        (REG, 3, None, Register),
        (None, 4, None, Deregister),
        # tombstone: a stop is final
        (None, 5, STOPPED_V4, "duplicate"),
        (None, 2, STOPPED_V4, "duplicate"),
        (REG, 9, STOPPED_V4, VerifyAbsent),
        (REG, 3, STOPPED_V4, VerifyAbsent),
        # running record
        (REG, 2, RUNNING_V3, "stale"),
        (None, 2, RUNNING_V3, "stale"),
        (REG, 3, RUNNING_V3, VerifySidecar),
        (None, 3, RUNNING_V3, "duplicate"),
        (None, 4, RUNNING_V3, Deregister),
        (REG, 4, RUNNING_V3, VerifySidecar),
        (_registration(host=replace(HOST, address="10.0.0.9")), 4, RUNNING_V3, Register),
    ],
)
def test_decide(
    desired: Registration | None, version: int, record: StateRecord | None, expected: object
) -> None:
    action = decide(desired, version, record)
    if isinstance(expected, str):
        assert isinstance(action, Skip)
        assert action.kind == expected
    else:
        assert isinstance(action, expected)  # type: ignore[arg-type]
