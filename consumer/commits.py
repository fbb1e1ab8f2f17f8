"""When a worker commits its done offsets, and what it does with the broker's answer.

Periodic commits do not wait for the broker (``on_commit`` takes the result, served by ``consume``
in the fetch loop); forced ones (a revoke, a stop, a bounded run's end, a recovery) wait, since what
follows needs them done. Exactly once, the open transaction commits the offsets instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer import kafka_io
from consumer.offsets import OffsetTracker, Partition
from consumer.transactions import Transactions


class Commits:
    """Commits the tracker's committable offsets every ``interval_s``, or at once when forced."""

    def __init__(
        self,
        consumer: Consumer,
        tracker: OffsetTracker,
        interval_s: float,
        log: Any,
        transactions: Transactions | None,
        rewind: Callable[[], None],
        accepted: Callable[[], None],
    ) -> None:
        self.consumer, self.tracker, self.interval_s, self.log = consumer, tracker, interval_s, log
        self.transactions = transactions
        #: after a transaction that could not commit: read again from the last committed offsets
        self._rewind = rewind
        #: the broker took a commit
        self._accepted = accepted
        self._last = time.monotonic()

    def soon(self) -> None:
        """Have the fetch loop's next turn commit where newly owned partitions start, before anything
        of them is done: a partition the group never committed would otherwise start at the latest
        offset for this worker's successor, should this worker die first, skipping what was fetched
        and what arrived since. (Not at once, amid routing a fetch: exactly once, a failed commit
        rewinds, and the records being routed must not be batched after it.)"""
        self._last = -math.inf

    def maybe(self, force: bool = False, partitions: set[Partition] | None = None) -> None:
        """Commit the done offsets: every ``interval_s`` without waiting for the broker; forced,
        waiting for it."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.transactions is not None:
            if not self.transactions.commit(self.consumer):
                self._rewind()
            return
        offsets = self.tracker.committable(partitions)
        try:
            if force:
                self._taken(kafka_io.commit(self.consumer, offsets))
            else:
                kafka_io.commit_async(self.consumer, offsets)
        except KafkaException as exc:
            self._failed(exc)

    def now(self) -> None:
        self.maybe(force=True)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """An asynchronous commit's result (librdkafka's ``on_commit``). Waiting for it, periodic
        commits held up fetching and batching for a round trip to the group coordinator every
        ``commit_interval_ms``: under 5 ms on the embedded broker, seconds on a cluster whose
        coordinator is moving (docs/performance-log.md, 2026-12-01, the evening session)."""
        try:
            self._taken(kafka_io.commit_result(error, partitions))
        except KafkaException as exc:
            self._failed(exc)

    def _taken(self, accepted: dict[Partition, int]) -> None:
        self.tracker.mark_committed(accepted)
        if accepted:
            self._accepted()

    def _failed(self, exc: KafkaException) -> None:
        self.log.warning("commit failed; retrying at the next commit", error=str(exc))
