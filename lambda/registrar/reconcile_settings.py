"""The reconcile pass's settings (environment) and its report (metrics, summary)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import registrar


class ConfigError(registrar.ConfigError):
    """A reconcile setting in the environment is invalid."""


def _int_env(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class ReconcileSettings:
    """RECONCILE_MAX_DELETIONS (50, config key reconcile_max_deletions): entries one pass may
    delete. TOMBSTONE_GRACE_HOURS (120): age before a stopped task's record may go.
    HOST_DISCONNECT_GRACE_MINUTES (5, config key host_disconnect_grace_minutes): how long an ECS
    agent may stay disconnected before its host's task nodes are marked critical."""

    max_deletions: int = 50
    tombstone_grace: timedelta = timedelta(hours=120)
    host_disconnect_grace: timedelta = timedelta(minutes=5)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReconcileSettings:
        return cls(
            max_deletions=_int_env(env, "RECONCILE_MAX_DELETIONS", 50, 1, 10000),
            tombstone_grace=timedelta(
                hours=_int_env(env, "TOMBSTONE_GRACE_HOURS", 120, 25, 24 * 365)
            ),
            host_disconnect_grace=timedelta(
                minutes=_int_env(env, "HOST_DISCONNECT_GRACE_MINUTES", 5, 1, 1440)
            ),
        )


@dataclass
class PassReport:
    """What one pass saw and did; `metrics()` is what goes to CloudWatch."""

    running: int = 0
    in_sync: int = 0
    missing: int = 0
    changed: int = 0
    stale: int = 0
    hosts: int = 0
    held_back: int = 0
    tombstones_collected: int = 0
    migrated: int = 0
    deferred: int = 0
    failed: int = 0
    invalid: int = 0
    refused: int = 0
    doubtful: int = 0  # hosts whose SSM address may be a Docker bridge's (aws.address_doubt)
    marked: int = 0
    unanswered: int = 0  # repairs' sidecar writes that got no answer (may land later)
    resurrected: int = 0
    complete: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return self.missing + self.changed + self.stale + self.hosts + self.resurrected

    def metrics(self) -> dict[str, int]:
        return {
            "ReconcileTasks": self.running,
            "DriftMissing": self.missing,
            "DriftChanged": self.changed,
            "DriftStale": self.stale,
            "DriftHosts": self.hosts,
            "DriftResurrected": self.resurrected,
            "DriftRepaired": self.repaired,
            "DeletionsHeldBack": self.held_back,
            "TombstonesCollected": self.tombstones_collected,
            "RecordsMigrated": self.migrated,
            "ReconcileIncomplete": 0 if self.complete else 1,
            "ReconcileDeferred": self.deferred,
            "ReconcileFailed": self.failed,
            "ReconcileUnansweredWrites": self.unanswered,
            "InvalidTaskDefinition": self.invalid,
            "HostAddressRefused": self.refused,
            "HostAddressDoubtful": self.doubtful,
            "HostChecksCritical": self.marked,
        }

    def summary(self) -> dict[str, Any]:
        return {
            **self.metrics(),
            "InSync": self.in_sync,
            "Complete": self.complete,
            "Problems": self.problems[:20],
        }
