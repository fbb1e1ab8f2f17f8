"""Which input offsets are done, and how far each partition may be committed.

Outputs go to other partitions, so acknowledgements come back out of order. An offset is
committable only when it and every offset before it (that this worker fetched) are done.
Before any is done, a partition's start (its first fetched offset, or its end when it was found
empty) is committable: committed at once, it keeps a worker that dies before its first done
offset from leaving its successor nothing to resume from (a group's new partitions start at the
latest offset, which would skip what arrived meanwhile).
Thread-safe: the fetch loop adds, delivery callbacks mark done, the loop commits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby, repeat, takewhile
from operator import itemgetter
from typing import Any, Protocol

Partition = tuple[str, int]
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


class HasCoordinates(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


def coordinates(msg: HasCoordinates) -> tuple[Partition, int]:
    """A fetched record's (topic, partition) and offset; always set on records from a consumer."""
    return (msg.topic(), msg.partition()), msg.offset()  # type: ignore[return-value]  # hot path: no cast()


def coordinates_of(messages: Sequence[HasCoordinates]) -> list[tuple[Partition, int]]:
    """``coordinates`` of many records in one comprehension (measured faster than map/zip here)."""
    return [((m.topic(), m.partition()), m.offset()) for m in messages]  # type: ignore[misc]


def timestamps_of(messages: Sequence[Any]) -> list[int]:
    """Each record's timestamp in ms (the value of its ``(type, ms)`` pair)."""
    return [m.timestamp()[1] for m in messages]


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
            for partition, run in groupby(finished, key=_FIRST):  # runs of one partition
                progress = self._partitions.get(partition)
                if progress is not None:
                    progress.done.update(map(_SECOND, run))
                    touched.add(partition)
            for partition in touched:
                self._advance(self._partitions[partition])

    def add_many(self, fetched: Iterable[tuple[Partition, int]]) -> set[Partition]:
        """Record many fetched offsets under one lock; return the partitions tracked from now on."""
        started = set()
        with self._lock:
            for partition, run in groupby(fetched, key=_FIRST):
                offsets = list(map(_SECOND, run))
                progress = self._partitions.get(partition)
                if progress is None:
                    progress = self._partitions[partition] = _Progress(first=offsets[0])
                    started.add(partition)
                progress.pending.extend(offsets)
        return started

    def start_at(self, partition: Partition, offset: int) -> bool:
        """Track a partition found at its end (``offset``) with nothing fetched; True if it is new here."""
        with self._lock:
            if partition in self._partitions:
                return False
            self._partitions[partition] = _Progress(first=offset)
            return True

    @staticmethod
    def _advance(progress: _Progress) -> None:
        pending, done = progress.pending, progress.done
        if not pending or pending[0] not in done:
            return
        finished = list(takewhile(done.__contains__, pending))
        done.difference_update(finished)
        for _ in repeat(None, len(finished)):
            pending.popleft()
        progress.next_offset = finished[-1] + 1

    def committable(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Commit points that moved since the last ``mark_committed`` (a partition's start, before any
        of its offsets is done)."""
        with self._lock:
            chosen = self._partitions if partitions is None else set(partitions) & set(self._partitions)
            points = {p: _commit_point(self._partitions[p]) for p in chosen}
            return {p: o for p, o in points.items() if o is not None and o != self._partitions[p].committed}

    def mark_committed(self, offsets: dict[Partition, int]) -> None:
        """Commits the broker accepted. Only forward: an asynchronous commit's result can arrive after
        a later commit's (the broker applies them in order, so the later one holds)."""
        with self._lock:
            for partition, offset in offsets.items():
                progress = self._partitions.get(partition)
                if progress is not None and (progress.committed is None or offset > progress.committed):
                    progress.committed = offset

    def committed_offsets(self) -> dict[Partition, int]:
        """The last commit the broker accepted of each partition tracked (either delivery guarantee)."""
        with self._lock:
            return {p: pr.committed for p, pr in self._partitions.items() if pr.committed is not None}

    def in_flight(self, partitions: Iterable[Partition] | None = None) -> int:
        """How many fetched offsets are not yet done."""
        with self._lock:
            chosen = self._partitions if partitions is None else set(partitions) & set(self._partitions)
            return sum(len(self._partitions[p].pending) for p in chosen)

    def uncommitted(self) -> int:
        """How many inputs were read past the last commit (or the first fetch, if none): done but
        not committed, or still in flight. These are read again by whoever next owns the partition."""
        with self._lock:
            return sum(_uncommitted(progress) for progress in self._partitions.values())

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

    def pending_ranges(self) -> dict[Partition, tuple[int, int]]:
        """Each partition's lowest and highest offset fetched and not yet done."""
        with self._lock:
            return {p: (pr.pending[0], pr.pending[-1]) for p, pr in self._partitions.items() if pr.pending}


def _commit_point(progress: _Progress) -> int | None:
    return progress.first if progress.next_offset is None else progress.next_offset


def _uncommitted(progress: _Progress) -> int:
    base = progress.committed if progress.committed is not None else progress.first
    done = 0 if progress.next_offset is None or base is None else progress.next_offset - base
    return done + len(progress.pending)
