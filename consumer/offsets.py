"""Which input offsets are done, and how far each partition may be committed.

Outputs go to other partitions, so acknowledgements come back out of order. An offset is
committable only when it and every offset before it (that this worker fetched) are done.
Thread-safe: the fetch loop adds, delivery callbacks mark done, the loop commits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

Partition = tuple[str, int]


class HasCoordinates(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


def coordinates(msg: HasCoordinates) -> tuple[Partition, int]:
    """A fetched record's (topic, partition) and offset; always set on records from a consumer."""
    return (msg.topic(), msg.partition()), msg.offset()  # type: ignore[return-value]  # hot path: no cast()


@dataclass
class _Progress:
    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    next_offset: int | None = None  # the offset to commit: everything below it is done
    committed: int | None = None
    first: int | None = None  # the first offset fetched since the partition was (re)tracked


class OffsetTracker:
    """Tracks fetched and finished offsets per partition; hands out contiguous commit points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[Partition, _Progress] = {}

    def add(self, partition: Partition, offset: int) -> None:
        """Record a fetched offset (offsets arrive in increasing order per partition)."""
        self.add_many([(partition, offset)])

    def done(self, partition: Partition, offset: int) -> None:
        """Mark an offset finished. Offsets of forgotten partitions are ignored."""
        self.done_many([(partition, offset)])

    def done_many(self, finished: Iterable[tuple[Partition, int]]) -> None:
        """Mark many offsets finished under one lock (a whole batch's inputs); forgotten partitions' are ignored."""
        with self._lock:
            touched = set()
            for partition, offset in finished:
                progress = self._partitions.get(partition)
                if progress is not None:
                    progress.done.add(offset)
                    touched.add(partition)
            for partition in touched:
                self._advance(self._partitions[partition])

    def add_many(self, fetched: Iterable[tuple[Partition, int]]) -> None:
        """Record many fetched offsets under one lock."""
        with self._lock:
            for partition, offset in fetched:
                progress = self._partitions.get(partition)
                if progress is None:
                    progress = self._partitions[partition] = _Progress(first=offset)
                progress.pending.append(offset)

    @staticmethod
    def _advance(progress: _Progress) -> None:
        while progress.pending and progress.pending[0] in progress.done:
            finished = progress.pending.popleft()
            progress.done.discard(finished)
            progress.next_offset = finished + 1

    def committable(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Commit points that moved since the last ``mark_committed``."""
        with self._lock:
            chosen = self._partitions if partitions is None else set(partitions) & set(self._partitions)
            return {
                p: progress.next_offset
                for p in chosen
                if (progress := self._partitions[p]).next_offset is not None
                and progress.next_offset != progress.committed
            }

    def mark_committed(self, offsets: dict[Partition, int]) -> None:
        with self._lock:
            for partition, offset in offsets.items():
                if partition in self._partitions:
                    self._partitions[partition].committed = offset

    def in_flight(self, partitions: Iterable[Partition] | None = None) -> int:
        """How many fetched offsets are not yet done."""
        with self._lock:
            chosen = self._partitions if partitions is None else set(partitions) & set(self._partitions)
            return sum(len(self._partitions[p].pending) for p in chosen)

    def rewind_points(self) -> dict[Partition, int]:
        """Where to read again from after an aborted transaction: the last commit, or the first fetch."""
        with self._lock:
            points = {p: pr.committed if pr.committed is not None else pr.first for p, pr in self._partitions.items()}
            return {p: o for p, o in points.items() if o is not None}

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop all state of partitions this worker no longer owns."""
        with self._lock:
            for partition in partitions:
                self._partitions.pop(partition, None)

    def first_pending(self, partition: Partition) -> int | None:
        with self._lock:
            progress = self._partitions.get(partition)
            return progress.pending[0] if progress and progress.pending else None
