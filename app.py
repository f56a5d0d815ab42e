#!/usr/bin/env python3
"""CDK entry point: the only place that reads context. Builds config, the stack and cdk-nag."""

from __future__ import annotations

import gc
import sys

if __name__ == "__main__":
    # `cdk synth` runs this file once per synthesis and the process ends right after: the
    # collector would only walk aws-cdk-lib's ~140,000 module objects again and again (a fifth
    # of the Python side of a synthesis, bench/README.md figure 1) and free nothing (the peak
    # memory is the same without it). Off before the imports, which create most of them.
    gc.disable()

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import cx_api
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from mesh_stack import lambda_code
from mesh_stack.config import MeshConfig
from mesh_stack.config_errors import ConfigError
from mesh_stack.configured_services import check_template_quotas
from mesh_stack.jsii_exit import leave_without_teardown
from mesh_stack.stack import MeshStack


def build_app(context: dict[str, object] | None = None, outdir: str | None = None) -> cdk.App:
    """The app with both nag packs. Tests pass `context` (cdk.json's) and an `outdir`."""
    app = cdk.App(context=context, outdir=outdir)
    # All of it (cdk.json, ~/.cdk.json, `-c` overrides): a key that looks like a typo of ours
    # stops synthesis instead of being ignored.
    context = app.node.get_all_context()
    config = MeshConfig.from_context({k: v for k, v in context.items() if v is not None})
    env = cdk.Environment(account=config.account or None, region=config.region)
    MeshStack(
        app,
        config.stack_name,
        config=config,
        env=env,
        description="Consul service mesh for ECS Anywhere (servers, cluster, registrar)",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), NIST80053R5Checks(app))
    return app


def synthesize(app: cdk.App) -> cx_api.CloudAssembly:
    """`app.synth()`, then the quota only the written template shows: its size (ConfigError)."""
    assembly = app.synth()
    for stack in app.node.children:
        if isinstance(stack, cdk.Stack):
            path = Path(assembly.get_stack_by_name(stack.stack_name).template_full_path)
            check_template_quotas(stack, template_bytes=path.stat().st_size)
    return assembly


def main() -> int:
    try:
        app = build_app()
        synthesize(app)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    lambda_code.finish_staging(app)  # before the fast exit, which skips `atexit`
    for stack in app.node.children:
        if isinstance(stack, MeshStack) and stack.server_image_unrecorded:
            print(f"note: {stack.server_image_unrecorded}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    status = main()
    if status == 0:
        # The assembly is complete: skip the seconds of teardown (mesh_stack/jsii_exit.py).
        leave_without_teardown(status)
    sys.exit(status)
