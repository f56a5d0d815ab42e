"""Container ports published on the hosts, read from a small synthesized app.

One mesh service in host network mode and one in bridge mode (the opt-in), each with an app
container labelled `consul-mesh.enabled` and an Envoy sidecar, as aws-cdk-lib writes them.
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ecs as ecs

from tools.review.collect import Review, build_review
from tools.review.containers import TaskNetwork
from tools.review.posture import weaknesses

IMAGE = ecs.ContainerImage.from_registry("public.ecr.aws/docker/library/busybox:latest")


def _service(
    stack: cdk.Stack,
    name: str,
    mode: ecs.NetworkMode,
    app_ports: list[int],
    metrics_bind: str | None = None,
) -> None:
    task = ecs.ExternalTaskDefinition(stack, name, network_mode=mode)
    if metrics_bind is not None:
        # MeshService's init container tells Envoy where its metrics listener binds
        task.add_container(
            "envoy-init",
            image=IMAGE,
            memory_limit_mib=64,
            essential=False,
            environment={"ENVOY_PROMETHEUS_BIND": metrics_bind},
        )
    task.add_container(
        "app",
        image=IMAGE,
        memory_limit_mib=64,
        docker_labels={
            "consul-mesh.enabled": "true",
            "consul-mesh.proxy-container": "envoy",
            "consul-mesh.proxy-port": "20000",
        },
        port_mappings=[ecs.PortMapping(container_port=port) for port in app_ports],
    )
    task.add_container(
        "envoy",
        image=IMAGE,
        memory_limit_mib=64,
        port_mappings=[
            ecs.PortMapping(container_port=20000),
            ecs.PortMapping(container_port=9102),
        ],
    )


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory) -> Review:
    outdir = tmp_path_factory.mktemp("ports.out")
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Ports", env=cdk.Environment(account="111111111111", region="us-east-1"))
    # The secure default: host mode, the app binds loopback and publishes nothing.
    _service(stack, "Secure", ecs.NetworkMode.HOST, [])
    # The opt-in: bridge mode, the app's port is published on a dynamic host port.
    _service(stack, "Bridged", ecs.NetworkMode.BRIDGE, [8080])
    # A mistake the review must catch too: host mode with the app port declared.
    _service(stack, "HostApp", ecs.NetworkMode.HOST, [9090])
    # Envoy metrics on the host's loopback (the default), and on every interface (the opt-in)
    _service(stack, "LoopMetrics", ecs.NetworkMode.HOST, [], metrics_bind="127.0.0.1:9102")
    _service(stack, "OpenMetrics", ecs.NetworkMode.HOST, [], metrics_bind="0.0.0.0:9102")
    app.synth()
    return build_review(Path(app.outdir), linter=None)


def _network(review: Review, name: str) -> TaskNetwork:
    [found] = [n for n in review.task_networks if f"/{name}/" in n.task_definition.path]
    return found


def test_host_mode_sidecar_ports_are_host_ports_and_nothing_bypasses_the_mesh(
    review: Review,
) -> None:
    secure = _network(review, "Secure")
    assert (secure.network_mode, secure.mesh_apps) == ("host", ("app",))
    assert [
        (p.container, p.container_port, p.host_port, p.role, p.bypasses_mesh) for p in secure.ports
    ] == [
        ("envoy", 20000, "20000", "mesh listener (mTLS, intentions)", False),
        ("envoy", 9102, "9102", "sidecar", False),
    ]


def test_bridge_mode_app_port_is_published_and_flagged(review: Review) -> None:
    bridged = _network(review, "Bridged")
    assert bridged.network_mode == "bridge"
    [app_port] = [p for p in bridged.ports if p.container == "app"]
    assert (app_port.container_port, app_port.host_port, app_port.bypasses_mesh) == (
        8080,
        "dynamic (ephemeral range)",
        True,
    )


def test_every_published_app_port_is_weaker_than_the_default(review: Review) -> None:
    flagged = sorted(
        (w.subject.path.split("/")[1], w.what)
        for w in weaknesses(review)
        if w.subject and w.kind == "published-app-port"
    )
    assert flagged == [
        ("Bridged", "app 8080 -> host dynamic (bridge)"),
        ("HostApp", "app 9090 -> host 9090 (host)"),
    ]
    # and the reachability table shows them as reachable by clients of the host
    bypass = [p for p in review.reachability if p.bypasses_mesh]
    assert sorted(p.ports for p in bypass) == [
        "8080 -> host dynamic (ephemeral range)",
        "9090 -> host 9090",
    ]
    assert {p.source_kind for p in bypass} == {"host-clients"}


def test_metrics_opened_to_every_host_interface_are_weaker_than_the_default(
    review: Review,
) -> None:
    binds = {
        name: {p.container_port: (p.bind, p.told) for p in _network(review, name).ports}
        for name in ("LoopMetrics", "OpenMetrics")
    }
    assert binds["LoopMetrics"][9102] == ("loopback", "ENVOY_PROMETHEUS_BIND=127.0.0.1:9102")
    assert binds["OpenMetrics"][9102] == ("all interfaces", "ENVOY_PROMETHEUS_BIND=0.0.0.0:9102")
    flagged = [
        (w.subject.path.split("/")[1], w.what)
        for w in weaknesses(review)
        if w.subject and w.kind == "metrics-every-interface"
    ]
    assert flagged == [("OpenMetrics", "envoy 9102 on every host interface")]
