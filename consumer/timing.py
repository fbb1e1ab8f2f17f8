"""What a run measures about itself: first input and last acknowledgement, latency, memory.

End-to-end latency is the time from an input's record timestamp to its output's broker
acknowledgement. Latencies are kept in a bounded reservoir sample (so memory stays flat on an
endless stream) and summarised as percentiles.
"""

from __future__ import annotations

import resource
import threading
import time
from typing import Any

import numpy as np
import psutil

RESERVOIR = 100_000


class Timeline:
    """Thread-safe: the fetch loop marks consumption, delivery callbacks mark acknowledgements."""

    def __init__(self, reservoir: int = RESERVOIR) -> None:
        self._lock = threading.Lock()
        self._latencies = np.empty(reservoir, dtype=np.float64)
        self._seen = 0
        self._reservoir = reservoir
        self._random = np.random.default_rng(0)
        self.first_consumed: float | None = None
        self.last_acknowledged: float | None = None

    def consumed(self) -> None:
        if self.first_consumed is None:
            self.first_consumed = time.time()

    def acknowledged(self, input_timestamp_ms: int) -> None:
        self.acknowledged_many([input_timestamp_ms])

    def acknowledged_many(self, input_timestamps_ms: list[int]) -> None:
        """Inputs whose outputs were all acknowledged now (reservoir sampling, algorithm R)."""
        now = time.time()
        latencies = now * 1000 - np.asarray(input_timestamps_ms, dtype=np.float64)
        with self._lock:
            self.last_acknowledged = now
            seen, room = self._seen, max(0, self._reservoir - self._seen)
            head, tail = latencies[:room], latencies[room:]
            self._latencies[seen : seen + len(head)] = head
            if len(tail):
                positions = np.arange(seen + len(head) + 1, seen + len(latencies) + 1)
                slots = (self._random.random(len(tail)) * positions).astype(np.int64)
                keep = slots < self._reservoir
                self._latencies[slots[keep]] = tail[keep]
            self._seen += len(latencies)

    def latency_ms(self) -> dict[str, float | int]:
        with self._lock:
            ordered = np.sort(self._latencies[: min(self._seen, self._reservoir)])
        if not len(ordered):
            return {"count": 0}
        return {
            "count": self._seen,
            "p50": _percentile(ordered, 0.50),
            "p95": _percentile(ordered, 0.95),
            "p99": _percentile(ordered, 0.99),
            "max": round(float(ordered[-1]), 2),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "first_consumed_at": self.first_consumed,
            "last_acknowledged_at": self.last_acknowledged,
            "latency_ms": self.latency_ms(),
        }


def _percentile(ordered: np.ndarray, q: float) -> float:
    return round(float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]), 2)


def rss_mb() -> float:
    """This process's resident memory now."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def peak_rss_mb() -> float:
    """The highest resident memory this process has had (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
