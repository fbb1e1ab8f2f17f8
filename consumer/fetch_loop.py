"""One turn of a worker's fetch loop: hand closed batches to the pipeline, keep the read-ahead
within its budget, read what the next batch needs, and route what was read.

The loop never runs the model, so it polls Kafka at least every ``POLL_SECONDS`` whatever a batch
costs. When the pipeline is full it reads ahead, and past the read-ahead budget it pauses its
partitions (back-pressure).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import compress
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from consumer import kafka_io
from consumer.batcher import Batcher
from consumer.careful import CrashGuard
from consumer.commits import Commits
from consumer.config import Settings
from consumer.counts import Counters
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker, Partition, coordinates, coordinates_of, timestamps_of
from consumer.pauses import Pauses
from consumer.pipeline import Pipeline
from consumer.positions import EndOfInput, TimeWindow
from consumer.serving import Serving
from consumer.timing import Timeline

POLL_SECONDS = 0.1
#: How long the fetch loop waits for messages while the next batch waits for pipeline room.
BLOCKED_WAIT_SECONDS = 0.005
#: Batches in flight (predicting, and the next one decoded) at which a partial batch waits to grow.
BUSY_BATCHES = 2
#: How many messages one read-ahead call asks for.
READ_AHEAD_CHUNK = 1000
#: Full batches waiting in the batcher at which the fetch loop stops reading (for up to POLL_SECONDS
#: at a time): reading on, it takes the interpreter lock from the predict thread while what it
#: reads only waits (with librdkafka fetching once its queue is taken, the MLP bench drained about
#: 15% slower without this; docs/performance-log.md, 2026-12-01).
HOLD_BATCHES = 4


@dataclass
class Books:
    """Where the fetch loop records what it read: offsets in flight, partition ends, the consumed
    ages, the counts and (when served) the metrics."""

    tracker: OffsetTracker
    ends: EndOfInput
    timeline: Timeline
    counters: Counters
    metrics: WorkerMetrics | None


class FetchLoop:
    """Reads the worker's partitions into its batcher, and its closed batches into the pipeline."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        batcher: Batcher,
        serving: Serving,
        books: Books,
        pauses: Pauses,
        commits: Commits,
        guard: CrashGuard | None,
        log: Any,
        group_instance_id: str | None,
    ) -> None:
        self.settings, self.consumer, self.batcher, self.serving = settings, consumer, batcher, serving
        self.pipeline: Pipeline = serving.pipeline
        self.books, self.pauses, self.commits, self.guard = books, pauses, commits, guard
        self.log = log
        #: the consumer's static group membership id, named when it is fenced
        self.group_instance_id = group_instance_id
        self.window = TimeWindow(settings.from_ms, settings.until_ms)
        #: read ahead (while the pipeline is full) until this many message bytes are held, then pause
        self.read_ahead_bytes = int(settings.read_ahead_mb * 2**20)
        self._last_read = -math.inf  # when the loop last called consume

    def turn(self) -> None:
        self.feed_pipeline()
        self._apply_backpressure()
        plan = self._fetch_plan()
        if plan is None:  # holding; the next turn starts by feeding the pipeline
            time.sleep(BLOCKED_WAIT_SECONDS)
            return
        self._last_read = time.monotonic()
        count, timeout = plan
        if self.guard is not None and self.guard.suspects:
            # suspects run apart, a few runs a turn, from one chunk (not one cut after its first record)
            self._route(self.consumer.consume(num_messages=min(count, self.guard.chunk()), timeout=timeout))
        else:
            self._read(count, timeout)
        self.feed_pipeline()

    def _read(self, count: int, timeout: float) -> None:
        """Up to ``count`` records. ``consume(count, timeout)`` would hold the records already fetched
        until all ``count`` came: wait for one, then take what else is there, so each record counts as
        consumed (``consume_latency_ms``) when it reached this loop, not when its batch filled up."""
        first = self.consumer.consume(num_messages=1, timeout=timeout)
        self._route(first)
        if first and count > 1:
            self._route(self.consumer.consume(num_messages=count - 1, timeout=0))

    def feed_pipeline(self) -> None:
        """A full batch goes as soon as there is room. A partial one (its wait is up) goes only when
        the model is about to be free (``_model_busy``): meanwhile it keeps growing, so a busy model
        gets fewer, fuller batches (less per-batch overhead and padding) instead of a queue of small
        ones."""
        while self.batcher.ready() and self.pipeline.has_room():
            if self.batcher.space() > 0 and self._model_busy():
                return
            self.close_batch()

    def _model_busy(self) -> bool:
        """Busy for a partial batch: ``BUSY_BATCHES`` batches in flight (one predicting, the next
        decoded), or the batches in flight will keep the model busy longer than ``max_wait_ms`` (a
        slow model: the inputs that come while it computes go together when it is done, rather than
        the first of them alone in a small batch that the rest wait behind)."""
        in_flight = self.pipeline.in_flight()
        if in_flight >= BUSY_BATCHES:
            return True
        return in_flight > 0 and in_flight * self.serving.batch_seconds > self.batcher.max_wait

    def close_batch(self) -> None:
        opened_at = self.batcher.opened_at
        messages, coords, timestamps = self.batcher.take()
        if self.guard is not None:
            self.guard.entering(coords)
        self.pipeline.put((messages, coords, timestamps), opened_at)

    def _fetch_plan(self) -> tuple[int, float] | None:
        """How many messages to ask for, and how long to wait for them: wake on the first input, fill
        its batch by its deadline; while the pipeline is full, read ahead up to the read-ahead budget.
        With ``HOLD_BATCHES`` full batches waiting, nothing (None), but one message every POLL_SECONDS:
        ``consume`` is what serves rebalances and consumer errors."""
        if len(self.batcher) >= HOLD_BATCHES * self.batcher.max_batch_size:
            return (1, 0.0) if time.monotonic() - self._last_read >= POLL_SECONDS else None
        if self.batcher.ready():
            return READ_AHEAD_CHUNK, BLOCKED_WAIT_SECONDS
        wait = self.batcher.seconds_left()
        return self.batcher.space(), POLL_SECONDS if wait is None else whole_ms(min(wait, POLL_SECONDS))

    def _apply_backpressure(self) -> None:
        """Pause at the read-ahead budget, resume at half of it: pausing drops librdkafka's prefetched
        data, so a wide gap between the two keeps pause/resume rare, and what is still held covers
        the time a resumed partition takes to deliver again (resuming at one batch left the model
        idle for most of a second after each resume)."""
        full = self.batcher.bytes >= self.read_ahead_bytes
        if not full and (not self.pauses.paused or self.batcher.bytes > self.read_ahead_bytes // 2):
            return  # asking for the assignment takes librdkafka's locks: only when there is work
        if full:
            self.pauses.pause_all()
        else:
            self.pauses.resume_assigned()

    def _route(self, messages: list[Message]) -> None:
        """Errors and records past a stop-at-end bound are handled apart; the rest is tracked, counted
        and batched as a whole (per-message Python work is what bounds a small model's throughput)."""
        kept = [m for m in messages if m.error() is None]
        if kept:
            self._keep(kept)
        if len(kept) < len(messages):  # after the records: an end-of-partition event follows them
            for msg in messages:
                if (error := msg.error()) is not None:
                    self._on_consumer_error(error, *coordinates(msg))

    def _keep(self, kept: list[Message]) -> None:
        books = self.books
        fetched = coordinates_of(kept)
        if self.settings.stop_at_end:
            kept, fetched = self._within_bounds(kept, fetched)
            if not kept:
                return
        if books.tracker.add_many(fetched):
            self.commits.soon()
        timestamps = timestamps_of(kept)
        ages_ms = books.timeline.consumed(timestamps)
        if books.metrics is not None:
            books.metrics.consumed_at((ages_ms / 1000).tolist())
        books.counters.add(consumed=len(fetched))
        if self.window.bounded:
            kept, fetched, timestamps = self._within_window(kept, fetched, timestamps)
        if self.guard is not None and self.guard.suspects:
            self.guard.add(kept, fetched, timestamps)
        else:
            self.batcher.add(kept, fetched, timestamps)

    def _within_bounds(
        self, messages: list[Message], fetched: list[tuple[Partition, int]]
    ) -> tuple[list[Message], list[tuple[Partition, int]]]:
        """The records below their partition's stop-at-end bound; a partition that reached it pauses."""
        ends = self.books.ends
        past = ends.reached_bounds(self.consumer, fetched)
        if not past:
            return messages, fetched
        self.pauses.pause(past)
        keep = [p not in past or ends.below_bound(p, offset) for p, offset in fetched]
        return list(compress(messages, keep)), list(compress(fetched, keep))

    def _within_window(
        self, messages: list[Message], coords: list[tuple[Partition, int]], timestamps: list[int]
    ) -> tuple[list[Message], list[tuple[Partition, int]], list[int]]:
        """The records inside ``--from/--until``; the others are done at once, and counted skipped."""
        keep = [self.window.keeps(timestamp) for timestamp in timestamps]
        skipped = [c for c, kept in zip(coords, keep, strict=True) if not kept]
        if skipped:
            self.books.tracker.done_many(skipped)
            self.books.counters.add(skipped=len(skipped))
        return list(compress(messages, keep)), list(compress(coords, keep)), list(compress(timestamps, keep))

    def _on_consumer_error(self, error: KafkaError, partition: Partition, offset: int | None) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            self.books.ends.reached_eof(partition)
            if self.guard is not None:
                self.guard.reached_end(partition)
            if offset is not None and offset >= 0 and self.books.tracker.start_at(partition, offset):
                self.commits.soon()
        elif error.fatal() or error.code() == KafkaError._FATAL:
            raise kafka_io.dead_consumer_error(error, self.group_instance_id)
        else:
            self.log.warning("consumer error", error=error.str(), partition=partition)


def whole_ms(seconds: float) -> float:
    """``seconds`` rounded up to a whole millisecond: librdkafka waits in milliseconds and
    confluent-kafka truncates, so ``consume`` given less than 1 ms returns at once. The last
    millisecond of every batch's wait was a busy loop of empty reads (about 40 a batch at 10,000
    msg/s, 150 on a trickle: about two-fifths of the fetch loop's CPU, holding the interpreter lock
    the predict thread needs); a batch now closes at most 1 ms past its ``max_wait_ms`` instead."""
    return math.ceil(seconds * 1000) / 1000
