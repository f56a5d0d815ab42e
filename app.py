#!/usr/bin/env python3
"""CDK entry point: the only place that reads context. Builds config, the stack and cdk-nag."""

from __future__ import annotations

import gc
import os
import struct
import sys
import time
from collections.abc import Callable

if __name__ == "__main__":
    # `cdk synth` runs this file once per synthesis and the process ends right after: the
    # collector would only walk aws-cdk-lib's ~140,000 module objects again and again (a fifth
    # of the Python side of a synthesis, bench/README.md figure 1) and free nothing (the peak
    # memory is the same without it). Off before the imports, which create most of them.
    gc.disable()

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from mesh_stack.config import FIELDS, ConfigError, MeshConfig
from mesh_stack.stack import MeshStack


def build_app(context: dict[str, object] | None = None, outdir: str | None = None) -> cdk.App:
    """The app with both nag packs. Tests pass `context` (cdk.json's) and an `outdir`."""
    app = cdk.App(context=context, outdir=outdir)
    # One jsii round trip for the whole context instead of one per key.
    merged = app.node.get_all_context()
    config = MeshConfig.from_context(
        {key: merged[key] for key in FIELDS if merged.get(key) is not None}
    )
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
    return 0


def leave_without_teardown(code: int) -> None:
    """Exit at once once the cloud assembly is written; return if that cannot be done safely.

    A normal exit costs the full app seconds that produce nothing (bench/README.md, figure 1):
    jsii's exit hook waits for its Node process to tear down a heap of several hundred MB, and
    Python then frees every module object one by one. Every file of the assembly was written
    before `synth()` returned, so instead: give the kernel's pending stderr (warnings, the
    validation report) to jsii's forwarding thread, tell the kernel to exit (on its own it
    removes its `jsii-kernel-*` directory), remove the directory jsii unpacked its runtime
    into (what jsii's own stop() does after waiting), flush, and `os._exit`. jsii's process
    handle is private API: anything unexpected there returns, and the caller exits normally.
    """
    try:
        # Imported here: jsii internals, and fcntl/termios exist on POSIX only.
        import fcntl  # noqa: PLC0415
        import termios  # noqa: PLC0415

        from jsii._runtime import kernel  # noqa: PLC0415

        node = kernel.provider._process  # type: ignore[attr-defined]
        stdin, stderr = node._process.stdin, node._process.stderr
        runtime_dir = node._ctx_stack
        _drain(lambda: fcntl.ioctl(stderr.fileno(), termios.FIONREAD, b"\0\0\0\0"))
        stdin.write(b'{"exit":0}\n')
        stdin.close()
        runtime_dir.close()
    except (AttributeError, ImportError, OSError, ValueError):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _drain(unread: Callable[[], bytes], budget_s: float = 2.0) -> None:
    """Wait (briefly) until jsii's forwarding thread has read what the kernel wrote to stderr.

    unread: FIONREAD of the pipe, the number of bytes written and not read yet.
    """
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline and struct.unpack("i", unread())[0] > 0:
        time.sleep(0.001)
    time.sleep(0.005)  # the line read last may still be on its way to sys.stderr


if __name__ == "__main__":
    status = main()
    if status == 0:
        leave_without_teardown(status)
    sys.exit(status)
