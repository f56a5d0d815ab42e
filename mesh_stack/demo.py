"""The default demo: `frontend` calls `backend` through its Envoy, the only allowed intention.

A fresh deploy plus one registered host shows a working mesh: on the host,
`curl http://127.0.0.1:9080/` returns frontend's answer with backend's response nested inside
it. Both run in host mode, the secure default: each app listens on 127.0.0.1 only and is
reachable from other machines only through its Envoy (mTLS, intentions). It is deployed by
default only with `environment=dev`: `-c demo_enabled=true` deploys it elsewhere,
`-c demo_enabled=false` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from mesh_stack import demo_ports
from mesh_stack.mesh_service import MeshService
from mesh_stack.sidecar_images import SidecarImages

# HashiCorp's demo service: answers HTTP and calls UPSTREAM_URIS, nesting their answers.
DEMO_IMAGE = "nicholasjackson/fake-service:v0.26.2"
DEMO_SERVICES = ("frontend", "backend")
# Consul intentions the fleet must hold for the demo: exactly frontend -> backend.
DEMO_INTENTIONS = (("frontend", "backend"),)
# fake-service needs no privilege: run it as `nobody` (host mode refuses root).
DEMO_USER = "65534:65534"


class MeshDemo(Construct):
    """Two host-mode MeshServices: `frontend` -> (Envoy, mTLS) -> `backend`.

    The demo always takes its xDS over gRPC-TLS (8503), whatever the fleet's
    `plaintext_listeners` opt-in opens for other clients: that option must never downgrade the
    project's own sidecars.

    token_secrets: the per-service ACL token secrets for "frontend" and "backend" (from the
        Consul fleet construct, which also writes DEMO_INTENTIONS).
    prometheus_port: backend's metrics listener on each host's 127.0.0.1; frontend's is the
        next port (host mode needs one port per service). None disables both.
    The other arguments are passed to both MeshServices unchanged.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: ecs.ICluster,
        token_secrets: Mapping[str, secretsmanager.ISecret],
        ca_secret: secretsmanager.ISecret,
        consul_grpc_host: str,
        envoy_version: str,
        log_key: kms.IKey,
        consul_tls_server_name: str | None = None,
        prometheus_port: int | None = 9102,
        images: SidecarImages | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        missing = [name for name in DEMO_SERVICES if name not in token_secrets]
        if missing:
            raise ValueError(
                f"token_secrets needs a secret for each demo service; missing {missing}, "
                f"got {sorted(token_secrets)}"
            )
        image = ecs.ContainerImage.from_registry(DEMO_IMAGE)

        def service(
            name: str,
            port: int,
            environment: dict[str, str],
            upstreams: dict[str, int] | None = None,
        ) -> MeshService:
            mesh_service = MeshService(
                self,
                name.capitalize(),
                cluster=cluster,
                service_name=name,
                image=image,
                port=port,
                token_secret=token_secrets[name],
                ca_secret=ca_secret,
                consul_grpc_host=consul_grpc_host,
                consul_tls_server_name=consul_tls_server_name,
                envoy_version=envoy_version,
                log_key=log_key,
                proxy_port=demo_ports.PROXY_PORTS[name],
                prometheus_port=None
                if prometheus_port is None
                else prometheus_port + demo_ports.METRICS_OFFSETS[name],
                app_user=DEMO_USER,
                environment={"NAME": name, **environment},
                health_check_path="/health",
                cpu=128,
                memory_mib=128,
                upstreams=upstreams,
                # One frontend and one backend on every host that joins: the stack deploys
                # before any host exists (a replica service would wait for placement), and
                # one registered host shows the working mesh.
                daemon=True,
                images=images,
            )
            # fake-service listens where LISTEN_ADDR says: 127.0.0.1 in host mode.
            mesh_service.app_container.add_environment("LISTEN_ADDR", mesh_service.listen_address)
            return mesh_service

        self.backend = service(
            "backend", demo_ports.BACKEND_PORT, {"MESSAGE": "hello from backend"}
        )
        self.frontend = service(
            "frontend",
            demo_ports.FRONTEND_PORT,
            {"MESSAGE": "hello from frontend"},
            upstreams={"backend": demo_ports.BACKEND_LOCAL_PORT},
        )
        # fake-service reads its upstreams from the environment: the Envoy upstream listener.
        self.frontend.app_container.add_environment(
            "UPSTREAM_URIS", f"http://{self.frontend.upstream_address('backend')}"
        )
