"""Bounded exponential backoff with full jitter, inside the invocation's time budget.

Transient failures (Consul 429/5xx, timeouts, refused connections, AWS throttling) are retried
here a few times; when attempts or time run out the error propagates, the message is reported
in batchItemFailures and SQS redelivers it later. The budget keeps a reserve so the handler
always returns its partial batch response before Lambda's timeout (a timeout would redeliver
the whole batch, including messages already applied).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import logs

T = TypeVar("T")


class RetryableError(Exception):
    """A failure that may succeed if tried again later."""


class BudgetExhausted(RetryableError):
    """Not enough invocation time is left to try (again)."""


class Budget:
    """Time left for work: the Lambda's remaining time minus a reserve for the response."""

    def __init__(self, remaining_ms: Callable[[], int], reserve_ms: int) -> None:
        self._remaining_ms = remaining_ms
        self._reserve_ms = reserve_ms

    @classmethod
    def fixed(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Budget:
        """A budget of `seconds` from now (local runs, reconcile, tests)."""
        deadline = clock() + seconds
        return cls(lambda: int((deadline - clock()) * 1000), 0)

    def remaining_s(self) -> float:
        return max(0.0, (self._remaining_ms() - self._reserve_ms) / 1000)

    @property
    def exhausted(self) -> bool:
        return self.remaining_s() <= 0


@dataclass(frozen=True)
class RetryPolicy:
    """max_attempts counts the first try; delays grow base*2^n, capped, fully jittered."""

    max_attempts: int = 4
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(
                f"retry delays must be >= 0, got {self.base_delay_s}, {self.max_delay_s}"
            )


def call(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    budget: Budget,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run `fn`, retrying RetryableError while attempts and budget last; re-raise the last."""
    attempt = 1
    while True:
        if budget.exhausted:
            raise BudgetExhausted(f"{what}: no time left in this invocation")
        try:
            return fn()
        except BudgetExhausted:
            raise  # no time left: waiting cannot make any
        except RetryableError as err:
            if attempt >= policy.max_attempts:
                raise
            delay = jitter() * min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
            if delay >= budget.remaining_s():
                raise
            logs.warning(
                "retrying after a transient failure",
                operation=what,
                attempt=attempt,
                delay_ms=round(delay * 1000),
                error=str(err),
            )
            sleep(delay)
            attempt += 1
