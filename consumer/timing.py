"""What a run measures about itself: first input and last acknowledgement, latency, memory.

End-to-end latency is the time from an input's record timestamp to its output's broker
acknowledgement; consume latency, from that timestamp to the worker receiving the record (what the
input producer and the broker took, before the worker could do anything). The worker's share is
split per batch into ``STAGES``. Latencies are kept in bounded reservoir samples (so memory stays
flat on an endless stream) and summarised as percentiles.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import psutil

RESERVOIR = 100_000
#: The worker's share of a batch's latency, in order (each per batch, in ``Timeline.stage``):
#: its first input reaching the fetch loop → the batch closing (full, or its ``max_wait_ms`` up, or
#: later while the model is busy) → its predict starting (decoding in tf.data, waiting behind other
#: batches) → predict done → its outputs packed and handed to the producer → the last one acknowledged.
STAGES = ("batching", "queue", "predict", "emit", "acknowledge")


class Reservoir:
    """A bounded, uniform sample of a stream of latencies (algorithm R), summarised as percentiles.
    Thread-safe."""

    def __init__(self, size: int = RESERVOIR) -> None:
        self._lock = threading.Lock()
        self._sample = np.empty(size, dtype=np.float64)
        self._seen = 0
        self._size = size
        self._random = np.random.default_rng(0)

    def __len__(self) -> int:
        return min(self._seen, self._size)

    def add(self, latencies: np.ndarray) -> None:
        with self._lock:
            seen, room = self._seen, max(0, self._size - self._seen)
            head, tail = latencies[:room], latencies[room:]
            self._sample[seen : seen + len(head)] = head
            if len(tail):
                positions = np.arange(seen + len(head) + 1, seen + len(latencies) + 1)
                slots = (self._random.random(len(tail)) * positions).astype(np.int64)
                keep = slots < self._size
                self._sample[slots[keep]] = tail[keep]
            self._seen += len(latencies)

    def percentiles(self) -> dict[str, float | int]:
        with self._lock:
            ordered = np.sort(self._sample[: min(self._seen, self._size)])
            seen = self._seen
        if not len(ordered):
            return {"count": 0}
        return {
            "count": seen,
            "p50": _percentile(ordered, 0.50),
            "p95": _percentile(ordered, 0.95),
            "p99": _percentile(ordered, 0.99),
            "max": round(float(ordered[-1]), 2),
        }


def ages_ms(timestamps_ms: Sequence[int], now: float) -> np.ndarray:
    """``now`` (seconds) minus each record timestamp (ms), in ms."""
    return now * 1000 - np.asarray(timestamps_ms, dtype=np.float64)


class Timeline:
    """Thread-safe: the fetch loop marks consumption, delivery callbacks mark acknowledgements.

    Two latencies per input, both from its record timestamp: to the moment the worker consumed it
    (the input producer's and the broker's share) and to its output's acknowledgement (end to end)."""

    def __init__(self, reservoir: int = RESERVOIR) -> None:
        self._end_to_end = Reservoir(reservoir)
        self._consume = Reservoir(reservoir)
        self._stages = {name: Reservoir(reservoir // 10) for name in STAGES}
        #: called with each stage's duration (name, seconds) as well: the metrics, when on
        self.on_stage: Callable[[str, float], None] | None = None
        self.first_consumed: float | None = None
        self.last_acknowledged: float | None = None

    def consumed(self, input_timestamps_ms: Sequence[int]) -> np.ndarray:
        """Inputs the fetch loop just received; their consume latencies (ms)."""
        now = time.time()
        if self.first_consumed is None:
            self.first_consumed = now
        ages = ages_ms(input_timestamps_ms, now)
        if len(ages):
            self._consume.add(ages)
        return ages

    def acknowledged(self, input_timestamp_ms: int) -> None:
        self.acknowledged_many([input_timestamp_ms])

    def acknowledged_many(self, input_timestamps_ms: list[int]) -> None:
        """Inputs whose outputs were all acknowledged now."""
        now = time.time()
        self._end_to_end.add(ages_ms(input_timestamps_ms, now))
        self.last_acknowledged = now

    def stage(self, name: str, seconds: float) -> None:
        """One batch spent ``seconds`` in stage ``name`` (one of ``STAGES``)."""
        self._stages[name].add(np.array([seconds * 1000]))
        if self.on_stage is not None:
            self.on_stage(name, seconds)

    def latency_ms(self) -> dict[str, float | int]:
        """End to end: output acknowledged minus input timestamp."""
        return self._end_to_end.percentiles()

    def consume_latency_ms(self) -> dict[str, float | int]:
        """Consumed by the worker minus input timestamp."""
        return self._consume.percentiles()

    def summary(self) -> dict[str, Any]:
        return {
            "first_consumed_at": self.first_consumed,
            "last_acknowledged_at": self.last_acknowledged,
            "latency_ms": self.latency_ms(),
            "consume_latency_ms": self.consume_latency_ms(),
            "stages_ms": {name: reservoir.percentiles() for name, reservoir in self._stages.items()},
        }


#: The weight of the latest figure in a ``moving_average`` (a batch's time, a suspect's run).
LATEST_WEIGHT = 0.2


def moving_average(average: float, latest: float, weight: float = LATEST_WEIGHT) -> float:
    """An exponentially weighted average; the first figure (``average`` 0) is taken as it is."""
    return latest if average == 0.0 else average + weight * (latest - average)


def worst_of(percentiles: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Each percentile's worst value over several summaries of the same measure (several processes'),
    ``count`` their sum; {} if none counted anything."""
    measured = [p for p in percentiles if p.get("count")]
    if not measured:
        return {}
    return {k: max(m[k] for m in measured) for k in ("p50", "p95", "p99", "max")} | {
        "count": sum(m["count"] for m in measured)
    }


def _percentile(ordered: np.ndarray, q: float) -> float:
    return round(float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]), 2)


def rss_mb() -> float:
    """This process's resident memory now."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def peak_rss_mb() -> float:
    """The highest resident memory this process has had (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
