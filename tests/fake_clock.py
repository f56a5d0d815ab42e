"""A clock that moves only when the code under test sleeps, so no test waits on wall time."""

from __future__ import annotations


class FakeClock:
    """Patch a module's `_sleep` with `sleep` and its `_clock` with `monotonic`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now
