"""Leaving a synthesis process at once, without the seconds of teardown a normal exit costs.

A normal exit of a jsii app costs seconds that produce nothing (bench/README.md, figure 1):
jsii's exit hook waits for its Node process to tear down a heap of several hundred MB, and
Python then frees every module object of aws-cdk-lib one by one. Every file of the cloud
assembly is written before `App.synth()` returns, so `app.py` leaves through here instead.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable


def leave_without_teardown(code: int) -> None:
    """Exit with `code` now; return (and let the caller exit normally) if that is not safe.

    In order: give what the kernel already wrote to stderr (warnings, a validation report) to
    jsii's forwarding thread, send the kernel its exit message (on its own it then removes its
    `jsii-kernel-*` directory and exits), remove the directory jsii unpacked its runtime into
    (what jsii's stop() does after waiting), flush, `os._exit`. jsii's process handle is
    private API (jsii 1.142, pinned): anything unexpected there returns instead.
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
    """Wait, briefly, until jsii's forwarding thread has read what the kernel wrote to stderr.

    unread: FIONREAD of the pipe, the number of bytes written to it and not read yet. Node
    writes to a pipe synchronously on Linux, so what CDK printed during synth() is in the pipe
    or already read when synth() returns; the forwarding thread normally has it by then.
    """
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline and struct.unpack("i", unread())[0] > 0:
        time.sleep(0.001)
    time.sleep(0.005)  # the line read last may still be on its way to sys.stderr
