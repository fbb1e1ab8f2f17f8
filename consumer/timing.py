"""What a run measures about itself: first input and last acknowledgement, latency, memory.

End-to-end latency is the time from an input's record timestamp to its output's broker
acknowledgement. Latencies are kept in a bounded reservoir sample (so memory stays flat on an
endless stream) and summarised as percentiles.
"""

from __future__ import annotations

import random
import resource
import threading
import time
from typing import Any

import psutil

RESERVOIR = 100_000


class Timeline:
    """Thread-safe: the fetch loop marks consumption, delivery callbacks mark acknowledgements."""

    def __init__(self, reservoir: int = RESERVOIR) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._seen = 0
        self._reservoir = reservoir
        self._random = random.Random(0)
        self.first_consumed: float | None = None
        self.last_acknowledged: float | None = None

    def consumed(self) -> None:
        if self.first_consumed is None:
            self.first_consumed = time.time()

    def acknowledged(self, input_timestamp_ms: int) -> None:
        now = time.time()
        latency = now * 1000 - input_timestamp_ms
        with self._lock:
            self.last_acknowledged = now
            self._seen += 1
            if len(self._latencies) < self._reservoir:
                self._latencies.append(latency)
            else:
                slot = self._random.randrange(self._seen)
                if slot < self._reservoir:
                    self._latencies[slot] = latency

    def latency_ms(self) -> dict[str, float | int]:
        with self._lock:
            ordered = sorted(self._latencies)
        if not ordered:
            return {"count": 0}
        return {
            "count": self._seen,
            "p50": _percentile(ordered, 0.50),
            "p95": _percentile(ordered, 0.95),
            "p99": _percentile(ordered, 0.99),
            "max": round(ordered[-1], 2),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "first_consumed_at": self.first_consumed,
            "last_acknowledged_at": self.last_acknowledged,
            "latency_ms": self.latency_ms(),
        }


def _percentile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def rss_mb() -> float:
    """This process's resident memory now."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def peak_rss_mb() -> float:
    """The highest resident memory this process has had (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
