"""Host-mode ports are judged by where the process binds, not by the port mapping.

In host mode ECS only reserves a mapped port on the host; who reaches a listener is decided by
the address the process binds (ECS developer guide, task-networking: host mode maps container
ports directly to the host's interface). The template states that address where it tells the
process: envoy-init's `ENVOY_PROMETHEUS_BIND`, the app's `CONSUL_MESH_LISTEN_ADDR`.

GIVEN a host-mode mesh task told to listen on loopback (the default app), and the same task
told 0.0.0.0 (MeshService `prometheus_bind_address="0.0.0.0"`, the app's LISTEN_ADDR)
WHEN reviewed, and diffed against each other
THEN loopback listeners are not reachable by clients of the host, the open ones are (the app
port flagged as bypassing the mesh), and leaving loopback is a broadening change.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.review.builder import resource, write_assembly
from tools.review.collect import Review, build_review
from tools.review.diff import diff
from tools.review.posture import weaknesses
from tools.review.twin import facts


def _task(bind: str, mode: str = "host") -> dict[str, Any]:
    return {
        "Resources": {
            "Task": resource(
                "AWS::ECS::TaskDefinition",
                "App/Task/Resource",
                NetworkMode=mode,
                ContainerDefinitions=[
                    {
                        "Name": "envoy-init",
                        "Environment": [{"Name": "ENVOY_PROMETHEUS_BIND", "Value": f"{bind}:9102"}],
                    },
                    {
                        "Name": "envoy",
                        "PortMappings": [
                            {"ContainerPort": p, "HostPort": p if mode == "host" else 0}
                            for p in (20000, 20500, 9102)
                        ],
                    },
                    {
                        "Name": "app",
                        "Environment": [
                            {"Name": "CONSUL_MESH_LISTEN_ADDR", "Value": "127.0.0.1:9090"},
                            {"Name": "LISTEN_ADDR", "Value": f"{bind}:9090"},
                        ],
                        "DockerLabels": {
                            "consul-mesh.enabled": "true",
                            "consul-mesh.ports": "9090",
                            "consul-mesh.proxy-container": "envoy",
                            "consul-mesh.proxy-port": "20000",
                            "consul-mesh.expose-port": "20500",
                        },
                    },
                ],
            )
        }
    }


def _review(tmp_path: Path, template: dict[str, Any]) -> Review:
    return build_review(write_assembly(tmp_path, {"App": template}), linter=None)


def _reachable(review: Review) -> list[tuple[str, str, bool]]:
    return sorted(
        (p.container, p.ports, p.bypasses_mesh)
        for p in review.reachability
        if p.source_kind == "host-clients"
    )


def test_loopback_listeners_are_not_reachable_by_clients_of_the_host(tmp_path: Path) -> None:
    review = _review(tmp_path, _task("127.0.0.1"))
    assert _reachable(review) == [
        ("envoy", "20000 -> host 20000", False),
        ("envoy", "20500 -> host 20500", False),
    ]
    [network] = review.task_networks
    binds = {(p.container, p.container_port): (p.bind, p.role) for p in network.ports}
    assert binds[("envoy", 9102)][0] == "loopback"
    assert binds[("app", 9090)][0] == "loopback"
    assert binds[("envoy", 20500)][1] == "expose listener (health path, plain HTTP, no mTLS)"
    assert [w for w in weaknesses(review) if w.kind == "published-app-port"] == []


def test_listeners_told_all_interfaces_are_reachable_and_the_app_bypasses_the_mesh(
    tmp_path: Path,
) -> None:
    review = _review(tmp_path, _task("0.0.0.0"))
    assert _reachable(review) == [
        ("app", "9090 -> host 9090", True),
        ("envoy", "20000 -> host 20000", False),
        ("envoy", "20500 -> host 20500", False),
        ("envoy", "9102 -> host 9102", False),
    ]
    [flagged] = [w for w in weaknesses(review) if w.kind == "published-app-port"]
    assert flagged.what == "app 9090 -> host 9090 (host)"


def _diff(tmp_path: Path, old: dict[str, Any], new: dict[str, Any]) -> list[Any]:
    was = facts(_review(tmp_path / "old", copy.deepcopy(old)))
    return [c for c in diff(was, facts(_review(tmp_path / "new", new))) if c.category != "counts"]


def test_leaving_loopback_is_a_broadening_host_ports_change(tmp_path: Path) -> None:
    [change] = _diff(tmp_path, _task("127.0.0.1"), _task("0.0.0.0"))
    assert change.category == "host-ports"
    assert "no longer bound to loopback" in change.broadening
    assert "envoy 9102" in change.broadening
    assert "app 9090" in change.broadening
    assert "an app port now bypasses mTLS and intentions" in change.broadening


def test_host_to_bridge_publishes_the_loopback_metrics_port(tmp_path: Path) -> None:
    changes = _diff(tmp_path, _task("127.0.0.1"), _task("127.0.0.1", mode="bridge"))
    broadening = " ".join(c.broadening for c in changes if c.category == "host-ports")
    assert "envoy 9102" in broadening
