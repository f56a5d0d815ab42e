"""A clock that moves only when the code under test sleeps, so no test waits on wall time."""

from __future__ import annotations

from types import ModuleType

import pytest


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


def patch_clock(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> FakeClock:
    """A FakeClock in place of `module`'s `_clock` and `_sleep` for one test."""
    fake = FakeClock()
    monkeypatch.setattr(module, "_clock", fake.monotonic)
    monkeypatch.setattr(module, "_sleep", fake.sleep)
    return fake
