"""Group fetched messages into batches: a batch closes when full or when its oldest waited long enough."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Holds messages until ``max_batch_size`` are waiting or the oldest waited ``max_wait_ms``.

    Messages are kept in the chunks they were fetched in, and weighed per chunk: no Python step per
    message, which is what bounds a small model's throughput."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        clock: Callable[[], float] = time.monotonic,
        size: Callable[[T], int] = lambda _: 0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._clock = clock
        self._size = size
        self.bytes = 0  # what the held messages weigh, by ``size``
        self._chunks: deque[list[T]] = deque()
        self._count = 0
        self._oldest: float | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, items: Iterable[T]) -> None:
        chunk = list(items)
        if not chunk:
            return
        if self._oldest is None:
            self._oldest = self._clock()
        self._chunks.append(chunk)
        self._count += len(chunk)
        self.bytes += sum(map(self._size, chunk))

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

    def take(self) -> list[T]:
        """Close and return the open batch (at most ``max_batch_size`` messages)."""
        count = min(self._count, self.max_batch_size)
        batch: list[T] = []
        while len(batch) < count:
            need = count - len(batch)
            chunk = self._chunks[0]
            if len(chunk) <= need:
                batch += self._chunks.popleft()
            else:
                batch += chunk[:need]
                self._chunks[0] = chunk[need:]
        self._count -= count
        self.bytes -= sum(map(self._size, batch))
        self._oldest = self._clock() if self._count else None
        return batch

    def drop(self, keep: Callable[[T], bool]) -> None:
        """Remove the messages for which ``keep`` is False (partitions taken away)."""
        kept = [item for chunk in self._chunks for item in chunk if keep(item)]
        self._chunks = deque([kept] if kept else [])
        self._count = len(kept)
        self.bytes = sum(map(self._size, kept))
        if not kept:
            self._oldest = None
