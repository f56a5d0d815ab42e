"""The default demo: `frontend` calls `backend` through its Envoy, the only allowed intention.

The demo is two entries of the `services` configuration (docs/services.md), built by the same
code as any configured service; only their ports are fixed here, because the README and the
docs tell the operator where to `curl`. Pure: no CDK (configuration validation reads it).

A fresh deploy plus one registered host shows a working mesh: on the host,
`curl http://127.0.0.1:9080/` returns frontend's answer with backend's response nested inside
it. Both run in host mode, the secure default: each app listens on 127.0.0.1 only and is
reachable from other machines only through its Envoy (mTLS, intentions). It is deployed by
default only with `environment=dev`: `-c demo_enabled=true` deploys it elsewhere,
`-c demo_enabled=false` turns it off.
"""

from __future__ import annotations

from typing import Any

# HashiCorp's demo service: answers HTTP and calls UPSTREAM_URIS, nesting their answers.
DEMO_IMAGE = "nicholasjackson/fake-service:v0.26.2"
# fake-service needs no privilege: run it as `nobody` (host mode refuses root).
DEMO_USER = "65534:65534"
# Apps, on 127.0.0.1.
BACKEND_PORT = 9090
FRONTEND_PORT = 9080
# frontend's upstream listener for backend, on 127.0.0.1.
BACKEND_LOCAL_PORT = 9091
# Envoy public listeners; the expose (health) listeners are these + 500 (identity.py).
PROXY_PORTS = {"backend": 20000, "frontend": 20001}
# Envoy metrics listeners, on each host's 127.0.0.1 (the default bind in host mode):
# `prometheus_port` + this offset (one port per service in host mode).
METRICS_OFFSETS = {"backend": 0, "frontend": 1}
# Construct scope of the demo's services: `Demo/Backend`, `Demo/Frontend` (logical IDs).
SCOPE = "Demo"


def app_ports() -> dict[int, str]:
    """The demo's app and upstream ports, described."""
    return {
        BACKEND_PORT: "the demo backend's app",
        FRONTEND_PORT: "the demo frontend's app",
        BACKEND_LOCAL_PORT: "the demo frontend's upstream listener",
    }


def demo_services(prometheus_port: int) -> dict[str, dict[str, Any]]:
    """The demo as `services` entries (backend's metrics on `prometheus_port` of each host's
    127.0.0.1, frontend's on the next port).

    Both are DAEMON services: one task on every host that joins, zero before any has, so the
    stack deploys before a host exists (a replica service would wait for placement).
    fake-service listens where LISTEN_ADDR says and calls UPSTREAM_URIS.
    """

    def entry(name: str, port: int, **extra: Any) -> dict[str, Any]:
        return {
            "image": DEMO_IMAGE,
            "port": port,
            "app_user": DEMO_USER,
            "health_check_path": "/health",
            "cpu": 128,
            "memory": 128,
            "daemon": True,
            "proxy_port": PROXY_PORTS[name],
            "prometheus_port": prometheus_port + METRICS_OFFSETS[name],
            **extra,
        }

    return {
        "backend": entry(
            "backend",
            BACKEND_PORT,
            allow_from=["frontend"],
            environment={
                "NAME": "backend",
                "MESSAGE": "hello from backend",
                "LISTEN_ADDR": f"127.0.0.1:{BACKEND_PORT}",
            },
        ),
        "frontend": entry(
            "frontend",
            FRONTEND_PORT,
            upstreams={"backend": BACKEND_LOCAL_PORT},
            environment={
                "NAME": "frontend",
                "MESSAGE": "hello from frontend",
                "LISTEN_ADDR": f"127.0.0.1:{FRONTEND_PORT}",
                "UPSTREAM_URIS": f"http://127.0.0.1:{BACKEND_LOCAL_PORT}",
            },
        ),
    }
