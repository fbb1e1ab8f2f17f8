"""The supervisor's progress line, every ``progress_interval_s``: what the workers did in all, and
how fast since the last line, so that a long run (a backfill of millions of inputs) shows it is
moving between its first log lines and its summary.

Each worker reports its counts since it started, with its status, every second; a restarted worker
starts again from zero, and what it counted since its last report before dying is not in the totals
(the summary's counts are exact; these are for watching).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the counts a progress line carries, from ``delivery.Counters``
COUNTS = ("consumed", "predicted", "dead_lettered", "skipped")


class Progress:
    def __init__(self, interval_s: float, now: float) -> None:
        self.interval_s = interval_s
        self.totals = dict.fromkeys(COUNTS, 0)
        self._since_last = dict.fromkeys(COUNTS, 0)
        self._reported: dict[int, Mapping[str, int]] = {}  # each worker's last counts
        self._last_line_at = now

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
        self._since_last = dict.fromkeys(COUNTS, 0)
        self._last_line_at = now
        return {**self.totals, **rates}
