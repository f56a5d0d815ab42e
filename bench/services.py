"""Figure 8: what one configured service costs the stack's template, and how many fit in it.

Synthesizes the stack (demo off, cdk.json's context otherwise) with no service and with
SERVICES configured services (each allowing the previous one: one intentions entry each but
the first), and counts the template's resources and outputs. CloudFormation declares at most
500 resources and 200 outputs per template (CloudFormation user guide, "Understand
CloudFormation quotas"); `configured_services.check_template_quotas` refuses more at synth.
"""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from bench import ROOT
from bench.report import Row
from mesh_stack.config import MeshConfig
from mesh_stack.configured_services import MAX_OUTPUTS, MAX_RESOURCES
from mesh_stack.stack import MeshStack

FIGURE = "8 services"
SERVICES = 10


def _services(count: int) -> dict[str, dict[str, Any]]:
    return {
        f"svc-{i}": {
            "image": "ghcr.io/acme/app:1.0.0",
            "port": 10000 + i,
            "app_user": "1000",
            "health_check_path": "/healthz",
            **({"allow_from": [f"svc-{i - 1}"]} if i else {}),
        }
        for i in range(count)
    }


def _counts(count: int) -> tuple[int, int]:
    context = {
        **json.loads((ROOT / "cdk.json").read_text())["context"],
        "demo_enabled": "false",
        "services": json.dumps(_services(count)),
    }
    app = cdk.App(context=context)
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        app, config.stack_name, config=config, env=cdk.Environment(region="us-east-1")
    )
    template = Template.from_stack(stack).to_json()
    return len(template["Resources"]), len(template.get("Outputs", {}))


def measure() -> list[Row]:
    base_resources, base_outputs = _counts(0)
    resources, outputs = _counts(SERVICES)
    per_service = (resources - base_resources) / SERVICES
    per_output = (outputs - base_outputs) / SERVICES
    fit = min(
        int((MAX_RESOURCES - base_resources) // per_service),
        int((MAX_OUTPUTS - base_outputs) // per_output),
    )
    return [
        Row(
            f"{FIGURE}: CloudFormation resources per configured service (with its intentions)",
            per_service,
            "resources",
            f"stack without services {base_resources}, with {SERVICES}: {resources}; "
            f"outputs {base_outputs} -> {outputs}",
        ),
        Row(
            f"{FIGURE}: configured services that fit in one template",
            fit,
            "services",
            f"{MAX_RESOURCES} resources and {MAX_OUTPUTS} outputs per template",
        ),
    ]
