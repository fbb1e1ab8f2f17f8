"""Group fetched messages into batches: a batch closes when full or when its oldest waited long enough."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import chain
from typing import Any

#: a chunk or a batch of records as parallel lists of equal length: the messages first, then what
#: was read of them once (their coordinates, their timestamps), so that no step reads it again
Columns = tuple[list[Any], ...]


class Batcher:
    """Holds records until ``max_batch_size`` are waiting or the oldest waited ``max_wait_ms``.

    Records are kept in the chunks they were fetched in, each as columns (``Columns``), cut and
    joined as wholes and weighed per chunk (``weigh``: the bytes of a chunk's first column): no
    Python step per message, which is what bounds a small model's throughput."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        clock: Callable[[], float] = time.monotonic,
        weigh: Callable[[list[Any]], int] = lambda _: 0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._clock = clock
        self._weigh = weigh
        self.bytes = 0  # what the held messages weigh, by ``weigh``
        self._chunks: deque[Columns] = deque()
        self._count = 0
        self._oldest: float | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, *columns: list[Any]) -> None:
        """One fetched chunk, as columns of equal length."""
        if not columns[0]:
            return
        if self._oldest is None:
            self._oldest = self._clock()
        self._chunks.append(columns)
        self._count += len(columns[0])
        self.bytes += self._weigh(columns[0])

    def space(self) -> int:
        """How many more messages the open batch takes before it is full."""
        return max(0, self.max_batch_size - self._count)

    @property
    def opened_at(self) -> float | None:
        """When the open batch's first message came (by ``clock``); None when it is empty."""
        return self._oldest

    def seconds_left(self) -> float | None:
        """Time until the open batch must go; None when it is empty."""
        if self._oldest is None:
            return None
        return max(0.0, self._oldest + self.max_wait - self._clock())

    def ready(self) -> bool:
        return self._count >= self.max_batch_size or self.seconds_left() == 0.0

    def take(self) -> Columns:
        """Close and return the open batch (at most ``max_batch_size`` records), as columns; call
        it when ``ready``."""
        need = min(self._count, self.max_batch_size)
        self._count -= need
        taken: list[Columns] = []
        while need:
            chunk = self._chunks[0]
            if len(chunk[0]) <= need:
                taken.append(self._chunks.popleft())
                need -= len(chunk[0])
            else:
                taken.append(tuple(column[:need] for column in chunk))
                self._chunks[0] = tuple(column[need:] for column in chunk)
                need = 0
        batch = taken[0] if len(taken) == 1 else tuple(list(chain.from_iterable(c)) for c in zip(*taken, strict=True))
        self.bytes -= self._weigh(batch[0])
        self._oldest = self._clock() if self._count else None
        return batch

    def drop(self, keep: Callable[..., bool]) -> int:
        """Remove the records for which ``keep(*record)`` is False (partitions taken away); how many."""
        kept = [record for chunk in self._chunks for record in zip(*chunk, strict=True) if keep(*record)]
        dropped = self._count - len(kept)
        self._chunks = deque([tuple(map(list, zip(*kept, strict=True)))] if kept else [])
        self._count = len(kept)
        self.bytes = self._weigh(self._chunks[0][0]) if kept else 0
        if not kept:
            self._oldest = None
        return dropped
