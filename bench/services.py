"""Figure 8: what one configured service costs the stack's template, and how many fit in it.

Synthesizes the stack (cdk.json's context: the demo on) with no configured service and with
SERVICES of them (each allowing the previous one: one intentions entry each but the first),
and measures the written template: its resources, outputs and bytes. CloudFormation takes at
most 500 resources, 200 outputs and a 1 MB template body from S3 per template (CloudFormation
user guide, "Understand CloudFormation quotas"); `configured_services.check_template_quotas`
refuses more at synth. The size binds first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from bench import ROOT
from bench.report import Row
from mesh_stack.config import MeshConfig
from mesh_stack.configured_services import MAX_OUTPUTS, MAX_RESOURCES, MAX_TEMPLATE_BYTES
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


def _measure(count: int) -> tuple[int, int, int]:
    """(resources, outputs, bytes) of the template CDK writes with `count` services."""
    context = {
        **json.loads((ROOT / "cdk.json").read_text())["context"],
        "services": json.dumps(_services(count)),
    }
    with tempfile.TemporaryDirectory() as outdir:
        app = cdk.App(context=context, outdir=outdir)
        config = MeshConfig.from_context(context)
        stack = MeshStack(
            app, config.stack_name, config=config, env=cdk.Environment(region="us-east-1")
        )
        path = Path(app.synth().get_stack_by_name(stack.stack_name).template_full_path)
        template = json.loads(path.read_text())
        return len(template["Resources"]), len(template.get("Outputs", {})), path.stat().st_size


def measure() -> list[Row]:
    base_resources, base_outputs, base_bytes = _measure(0)
    resources, outputs, size = _measure(SERVICES)
    per_service = (resources - base_resources) / SERVICES
    per_output = (outputs - base_outputs) / SERVICES
    per_byte = (size - base_bytes) / SERVICES
    by_count = min(
        int((MAX_RESOURCES - base_resources) // per_service),
        int((MAX_OUTPUTS - base_outputs) // per_output),
    )
    by_size = int((MAX_TEMPLATE_BYTES - base_bytes) // per_byte)
    return [
        Row(
            f"{FIGURE}: CloudFormation resources per configured service (with its intentions)",
            per_service,
            "resources",
            f"stack with the demo and no services {base_resources}, with {SERVICES}: "
            f"{resources}; outputs {base_outputs} -> {outputs}",
        ),
        Row(
            f"{FIGURE}: template bytes per configured service",
            per_byte,
            "bytes",
            f"template {base_bytes:,} -> {size:,} bytes as CDK writes it",
        ),
        Row(
            f"{FIGURE}: configured services that fit beside the demo by resources and outputs",
            by_count,
            "services",
            f"{MAX_RESOURCES} resources and {MAX_OUTPUTS} outputs per template",
        ),
        Row(
            f"{FIGURE}: configured services that fit beside the demo by template size",
            by_size,
            "services",
            f"{MAX_TEMPLATE_BYTES:,}-byte template body in S3 (binds first)",
        ),
    ]
