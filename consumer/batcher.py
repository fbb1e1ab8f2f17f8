"""Group fetched messages into batches: a batch closes when full or when its oldest waited long enough."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Holds messages until ``max_batch_size`` are waiting or the oldest waited ``max_wait_ms``."""

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
        self._items: deque[T] = deque()
        self._oldest: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[T]) -> None:
        for item in items:
            if self._oldest is None:
                self._oldest = self._clock()
            self._items.append(item)
            self.bytes += self._size(item)

    def space(self) -> int:
        """How many more messages the open batch takes before it is full."""
        return max(0, self.max_batch_size - len(self._items))

    def seconds_left(self) -> float | None:
        """Time until the open batch must go; None when it is empty."""
        if self._oldest is None:
            return None
        return max(0.0, self._oldest + self.max_wait - self._clock())

    def ready(self) -> bool:
        return len(self._items) >= self.max_batch_size or self.seconds_left() == 0.0

    def take(self) -> list[T]:
        """Close and return the open batch (at most ``max_batch_size`` messages)."""
        count = min(len(self._items), self.max_batch_size)
        batch = [self._items.popleft() for _ in range(count)]
        self.bytes -= sum(self._size(item) for item in batch)
        self._oldest = self._clock() if self._items else None
        return batch

    def drop(self, keep: Callable[[T], bool]) -> None:
        """Remove the messages for which ``keep`` is False (partitions taken away)."""
        self._items = deque(item for item in self._items if keep(item))
        self.bytes = sum(self._size(item) for item in self._items)
        if not self._items:
            self._oldest = None
