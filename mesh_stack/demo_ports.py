"""The host ports of the demo's two host-mode services, on every host that joins.

Kept apart from `demo.py` (which builds constructs) because configuration validation, which
never imports CDK, must know them: `prometheus_port` may not land on any of them.
"""

from __future__ import annotations

# Apps, on 127.0.0.1.
BACKEND_PORT = 9090
FRONTEND_PORT = 9080
# frontend's upstream listener for backend, on 127.0.0.1.
BACKEND_LOCAL_PORT = 9091
# Envoy public listeners; the expose (health) listeners are these + 500 (identity.py).
PROXY_PORTS = {"backend": 20000, "frontend": 20001}
# Envoy metrics listeners: `prometheus_port` + this offset (one port per service in host mode).
METRICS_OFFSETS = {"backend": 0, "frontend": 1}


def app_ports() -> dict[int, str]:
    """The demo's app and upstream ports, described."""
    return {
        BACKEND_PORT: "the demo backend's app",
        FRONTEND_PORT: "the demo frontend's app",
        BACKEND_LOCAL_PORT: "the demo frontend's upstream listener",
    }
