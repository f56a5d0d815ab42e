#!/usr/bin/env python3
"""CDK entry point: the only place that reads context. Builds config, the stack and cdk-nag."""

from __future__ import annotations

import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from mesh_stack.config import FIELDS, ConfigError, MeshConfig
from mesh_stack.stack import MeshStack


def build_app(context: dict[str, object] | None = None, outdir: str | None = None) -> cdk.App:
    """The app with both nag packs. Tests pass `context` (cdk.json's) and an `outdir`."""
    app = cdk.App(context=context, outdir=outdir)
    keys = {key: app.node.try_get_context(key) for key in FIELDS}
    config = MeshConfig.from_context({k: v for k, v in keys.items() if v is not None})
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


def main() -> int:
    try:
        app = build_app()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    app.synth()
    for stack in app.node.children:
        if isinstance(stack, MeshStack) and stack.server_image_unrecorded:
            print(f"note: {stack.server_image_unrecorded}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
