"""What a worker counts, for its summary, its status reports and the metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The counts of ``Counters``, in the order of its ``tally``.
COUNTED = ("consumed", "predicted", "dead_lettered", "skipped", "batches", "padded_rows")
_TALLY_INDEX = {name: index for index, name in enumerate(COUNTED)}


@dataclass
class Counters:
    """What a worker did, for its summary line and metrics. Updated under one lock."""

    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    batches: int = 0
    padded_rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: also told every addition (the Prometheus counters), when metrics are on
    sink: Callable[[dict[str, int]], None] | None = field(default=None, repr=False)
    #: the totals, in ``COUNTED`` order, also kept in memory the supervisor shares (a
    #: ``multiprocessing`` array): it reads them when the worker died without its summary
    tally: Any = field(default=None, repr=False)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                total = getattr(self, name) + amount
                setattr(self, name, total)
                if self.tally is not None:
                    self.tally[_TALLY_INDEX[name]] = total
        if self.sink is not None:
            self.sink(amounts)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in COUNTED}
