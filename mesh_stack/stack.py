"""The one stack of the app: composes the constructs and wires them together.

Thin on purpose: each capability lives in its own construct; this file only passes what one
construct exposes (security groups, secrets, addresses) to the next and adds the outputs.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from constructs import Construct

from mesh_stack.config import MeshConfig
from mesh_stack.keys import Keys
from mesh_stack.network import Network


class MeshStack(Stack):
    """Consul server fleet, ECS Anywhere cluster, mesh services and the registrar."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: MeshConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config

        keys = Keys(self, "Keys")
        self.key = keys.key
        network = Network(self, "Network", config=config, log_key=keys.key)
        self.vpc = network.vpc
