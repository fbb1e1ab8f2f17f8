"""The supervisor's progress line, every ``progress_interval_s``: what the workers did in all, and
how fast since the last line, so that a long run (a backfill of millions of inputs) shows it is
moving between its first log lines and its summary.

Each worker reports its counts since it started, with its status, every second; a restarted worker
starts again from zero, and what it counted since its last report before dying is not in the totals
(the summary's counts are exact; these are for watching).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from consumer.offsets import Partition

#: the counts a progress line carries, from ``counts.Counters``
COUNTS = ("consumed", "predicted", "dead_lettered", "skipped")


class Progress:
    def __init__(self, interval_s: float, now: float) -> None:
        self.interval_s = interval_s
        self.totals = dict.fromkeys(COUNTS, 0)
        self._since_last = dict.fromkeys(COUNTS, 0)
        self._reported: dict[int, Mapping[str, int]] = {}  # each worker's last counts
        self._last_line_at = now
        #: inputs done (predicted, dead-lettered or skipped) a second, between the last two lines
        self.done_per_s = 0.0

    def update(self, worker: int, counts: Mapping[str, int]) -> None:
        """A worker's counts since it started, as its status reported them."""
        before = self._reported.get(worker, {})
        for name in COUNTS:
            now, then = counts.get(name, 0), before.get(name, 0)
            added = now - then if now >= then else now  # fewer than before: it restarted
            self.totals[name] += added
            self._since_last[name] += added
        self._reported[worker] = counts

    def line(self, now: float) -> dict[str, Any] | None:
        """The progress line's fields when one is due (then the rates start again), else None."""
        seconds = now - self._last_line_at
        if not self.interval_s or seconds < self.interval_s:
            return None
        rates = {f"{name}_per_s": round(self._since_last[name] / seconds, 1) for name in ("consumed", "predicted")}
        self.done_per_s = sum(self._since_last[name] for name in COUNTS if name != "consumed") / seconds
        self._since_last = dict.fromkeys(COUNTS, 0)
        self._last_line_at = now
        return {**self.totals, **rates}


def total_lag(lags: Mapping[Partition, int | None], assigned: AbstractSet[Partition] | None) -> int | None:
    """A worker's lag over the partitions it owns (``lags``: ``kafka_io.partition_lags``): unknown,
    not short, while one of them has no known lag; unknown before it joined and between an eager
    rebalance's revoke and assign (``assigned`` None); 0 with no partition (more workers than
    partitions)."""
    if assigned is None:
        return None
    total = 0
    for partition in assigned:
        lag = lags.get(partition)
        if lag is None:
            return None
        total += lag
    return total


def lag_and_eta(per_worker: list[int | None], done_per_s: float, bounded: bool) -> dict[str, Any]:
    """The inputs not yet committed up to the partitions' ends, once every worker knows its own
    (librdkafka's statistics, every 5 s), and for a bounded run, at the rate inputs were done since
    the last line, about how long they take."""
    known = bool(per_worker) and all(n is not None for n in per_worker)
    lag = sum(n for n in per_worker if n is not None) if known else None
    if not bounded:
        return {"lag": lag}
    return {"lag": lag, "eta_s": round(lag / done_per_s) if lag is not None and done_per_s > 0 else None}
