"""The default demo: `frontend` calls `backend` through its Envoy, the only allowed intention.

A fresh deploy plus one registered host shows a working mesh: on the host,
`curl http://localhost:<frontend host port>/` returns frontend's answer with backend's
response nested inside it. Turn it off with `-c demo_enabled=false`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from mesh_stack.mesh_service import MeshService

# HashiCorp's demo service: answers HTTP and calls UPSTREAM_URIS, nesting their answers.
DEMO_IMAGE = "nicholasjackson/fake-service:v0.26.2"
DEMO_SERVICES = ("frontend", "backend")
# Consul intentions the fleet must hold for the demo: exactly frontend -> backend.
DEMO_INTENTIONS = (("frontend", "backend"),)
DEMO_PORT = 9090
BACKEND_LOCAL_PORT = 9091


class MeshDemo(Construct):
    """Two MeshServices in bridge mode: `frontend` -> (Envoy, mTLS) -> `backend`.

    token_secrets: the per-service ACL token secrets for "frontend" and "backend" (from the
        Consul fleet construct, which also writes DEMO_INTENTIONS).
    The other arguments are passed to both MeshServices unchanged.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: ecs.ICluster,
        token_secrets: Mapping[str, secretsmanager.ISecret],
        ca_secret: secretsmanager.ISecret | None,
        consul_grpc_host: str,
        envoy_version: str,
        log_key: kms.IKey,
        consul_tls_server_name: str | None = None,
        plaintext: bool = False,
        prometheus_port: int | None = 9102,
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
            name: str, environment: dict[str, str], upstreams: dict[str, int] | None = None
        ) -> MeshService:
            return MeshService(
                self,
                name.capitalize(),
                cluster=cluster,
                service_name=name,
                image=image,
                port=DEMO_PORT,
                token_secret=token_secrets[name],
                ca_secret=ca_secret,
                consul_grpc_host=consul_grpc_host,
                consul_tls_server_name=consul_tls_server_name,
                plaintext=plaintext,
                envoy_version=envoy_version,
                log_key=log_key,
                prometheus_port=prometheus_port,
                environment={"LISTEN_ADDR": f"0.0.0.0:{DEMO_PORT}", "NAME": name, **environment},
                health_check_path="/health",
                cpu=128,
                memory_mib=128,
                upstreams=upstreams,
                # One frontend and one backend on every host that joins: the stack deploys
                # before any host exists (a replica service would wait for placement), and
                # one registered host shows the working mesh.
                daemon=True,
            )

        self.backend = service("backend", {"MESSAGE": "hello from backend"})
        self.frontend = service(
            "frontend",
            {"MESSAGE": "hello from frontend"},
            upstreams={"backend": BACKEND_LOCAL_PORT},
        )
        # fake-service reads its upstreams from the environment: the Envoy upstream listener.
        self.frontend.app_container.add_environment(
            "UPSTREAM_URIS", f"http://{self.frontend.upstream_address('backend')}"
        )
