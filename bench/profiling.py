"""cProfile across every thread: `python -m bench.run --only burst --profile`.

cProfile sees only the thread that enabled it, and in the registrar figures the work is spread
over handler threads and the double's per-connection server threads. `threading.setprofile`
starts one profiler in each new thread; their statistics are merged with the main thread's.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


def profiled(fn: Callable[[], T], *, top: int = 30) -> tuple[T, str]:
    """Run `fn` with every thread profiled; its result and the merged report (tottime first)."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(frame: FrameType, event: str, arg: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()

    main = cProfile.Profile()
    threading.setprofile(start_in_thread)
    main.enable()
    try:
        result = fn()
    finally:
        main.disable()
        threading.setprofile(None)
    out = io.StringIO()
    stats = pstats.Stats(main, stream=out)
    with lock:
        for profile in profiles:
            profile.disable()
            stats.add(profile)
    out.write(f"merged profiles of {len(profiles) + 1} threads\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return result, out.getvalue()
