"""CloudWatch metrics as Embedded Metric Format log lines (no PutMetricData call, no latency).

One line per invocation aggregates the counts of its batch. Names:
- Registered, Deregistered: events whose effect was written to Consul;
- IgnoredStale: older than the task's record, or RUNNING behind a tombstone;
- Duplicate: already applied, or nothing changed (no write);
- Skipped: not ours (other cluster, launch type, opted out, not running yet);
- InvalidTaskDefinition: opted in but unusable labels/network mode (no write, no retry);
- Repaired: a duplicate found the catalog behind the record and fixed it;
- Checked: a re-check (or a RUNNING event behind a stop whose AWS lookups failed) found the
  catalog matching the task's record;
- RecheckScheduled: an applied event whose sidecar write got no answer; a delayed re-check of
  it was sent to the queue (recheck.py). RecheckGaveUp: still unanswered on the last re-check;
  left to the reconcile pass;
- Malformed, Failed: reported in batchItemFailures (redelivered, then DLQ);
- EventToCatalogLagMs: event time (EventBridge) to the write being acknowledged by Consul.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable

NAMESPACE_ENV = "METRICS_NAMESPACE"
DEFAULT_NAMESPACE = "ConsulMesh/Registrar"
LAG = "EventToCatalogLagMs"
_MAX_VALUES = 100  # EMF limit of values per metric per line


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Metrics:
    def __init__(self, dimensions: dict[str, str], write: Callable[[str], None] = _stdout):
        self._dimensions = dimensions
        self._write = write
        self.counts: Counter[str] = Counter()
        self.lags_ms: list[float] = []

    def count(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def lag(self, milliseconds: float) -> None:
        self.lags_ms.append(max(0.0, round(milliseconds, 1)))

    def flush(self) -> None:
        """Write the aggregate as EMF lines and start over."""
        namespace = os.environ.get(NAMESPACE_ENV, DEFAULT_NAMESPACE)
        lags = self.lags_ms or []
        chunks = [lags[i : i + _MAX_VALUES] for i in range(0, len(lags), _MAX_VALUES)] or [[]]
        for n, chunk in enumerate(chunks):
            values: dict[str, object] = dict(self.counts) if n == 0 else {}
            if chunk:
                values[LAG] = chunk
            if not values:
                continue
            doc: dict[str, object] = {
                "_aws": {
                    "Timestamp": int(time.time() * 1000),
                    "CloudWatchMetrics": [
                        {
                            "Namespace": namespace,
                            "Dimensions": [sorted(self._dimensions)],
                            "Metrics": [
                                {
                                    "Name": name,
                                    "Unit": "Milliseconds" if name == LAG else "Count",
                                }
                                for name in sorted(values)
                            ],
                        }
                    ],
                },
                **self._dimensions,
                **values,
            }
            self._write(json.dumps(doc, separators=(",", ":")))
        self.counts.clear()
        self.lags_ms = []
