"""Produce outputs and dead letters; an input counts as done only when the broker acknowledged.

``Outbox`` is the one place that calls ``Producer.produce``: it waits (serving delivery reports)
when the producer's queue is full, and turns each acknowledgement into ``OffsetTracker.done``.
A failed delivery is never marked done: it is kept as ``failure`` and ends the run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.errors import DeliveryError
from consumer.headers import Headers
from consumer.offsets import OffsetTracker, Partition, coordinates_of, timestamps_of
from consumer.timing import Timeline
from consumer.topic_rules import CLEANUP_POLICY, PRODUCER_MAX_BYTES, RECORD_BATCH_HEADER_BYTES, TopicRules

#: Delivery errors that retrying the same record cannot cure: they end the run (exit 1).
PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError._INVALID_ARG,
    }
)
#: ``Producer.produce``'s partition and timestamp when not given: the partitioner's choice (by key),
#: and now. Records are produced with positional arguments (topic, value, key, partition, callback,
#: on_delivery, timestamp, headers), measured 0.24 µs a record cheaper than keywords (1.0 against 1.23
#: µs with five headers and a callback): a record's whole cost in the calling thread is that call.
ANY_PARTITION, NOW = -1, 0
#: How long ``Outbox.dead_producer`` serves events to learn the fatal error behind a sign of one.
FATAL_CAUSE_WAIT_SECONDS = 1.0
#: Above a record's key, value and headers, what librdkafka counts against ``message.max.bytes`` (its
#: ``RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD``, rounded up), and per header (two length varints).
RECORD_OVERHEAD_BYTES, HEADER_OVERHEAD_BYTES = 64, 10


@dataclass(frozen=True)
class Oversize:
    """A record of a batch refused as too large: its index, its size (as ``record_bytes`` counts) and
    the limit it is over, with the rule that sets it, for a line that says which."""

    index: int
    size: int
    limit: int
    rule: str


@dataclass(frozen=True)
class Keyless:
    """A record of a batch without a key, for a compacted topic, whose brokers refuse it."""

    index: int
    rule: str


#: When a record is refused for what its input made of it (too large: by the producer, over its
#: ``message.max.bytes``, or before producing, over its topic's lower ``max.message.bytes``; or without
#: a key, for a compacted topic), ``send_batch`` may ask its caller to take the record's input elsewhere
#: (a dead letter): True if it did.
Unfit = Callable[[Oversize | Keyless], bool]


def record_bytes(value: bytes | None, key: bytes | None, headers: Headers | None) -> int:
    """What the producer counts of a record against its ``message.max.bytes``, at most."""
    size = RECORD_OVERHEAD_BYTES + len(value or b"") + len(key or b"")
    for name, header in headers or ():
        size += HEADER_OVERHEAD_BYTES + len(name) + len(header or b"")
    return size


def _refusal(bad: Oversize | Keyless) -> KafkaError:
    """The error the brokers would give a record that breaks its topic's rules, with the rule."""
    if isinstance(bad, Keyless):
        return KafkaError(KafkaError.INVALID_RECORD, bad.rule)
    return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, f"{bad.size:,} bytes, over {bad.rule}")


def _hint(code: int, dead_letter: bool) -> str:
    """What to do about a record refused for good, where the cause is a topic's or the producer's rule."""
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return _too_large_hint(dead_letter)
    if code in (KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG):
        return _keyless_hint(dead_letter)
    if code == KafkaError._UNKNOWN_PARTITION:
        return (
            ": the topic has no partition of that number; with --output-partitioning input each output goes to "
            "its input's partition number, so the output topic needs as many partitions as the input topic"
        )
    return ""


def _keyless_hint(dead_letter: bool) -> str:
    """What to do about a record refused as invalid: most likely a record without a key (its input had
    none) for a compacted topic."""
    compacted = f"if the topic is compacted ({CLEANUP_POLICY} compact), it takes no record without a key"
    if dead_letter:
        return (
            f": {compacted} (a dead letter has its input's key, and this input had none), and keeps only the last "
            f"dead letter of each key: give the dead-letter topic {CLEANUP_POLICY} delete"
        )
    return (
        f": {compacted} (an output has its input's key, and this input had none); the worker sends such inputs "
        "to the dead letters where it may read the topic's configuration at start (DescribeConfigs): allow "
        f"that, or give the topic {CLEANUP_POLICY} delete"
    )


def _too_large_hint(dead_letter: bool) -> str:
    """Why a record was refused as too large, and what to do. (An input's own size goes to a dead
    letter instead, which is cut to fit the limits the worker knows of.)"""
    if dead_letter:
        return (
            ": a dead letter, even cut to fit, is larger than the producer's message.max.bytes or the dead-letter "
            "topic takes (its own tfstream.errors.* headers alone, or a topic limit the brokers did not describe "
            "at start); raise the topic's max.message.bytes, with message.max.bytes under [kafka.producer]"
        )
    return (
        ": the model's outputs for one input are larger than the producer's message.max.bytes or the "
        "topic's max.message.bytes; raise message.max.bytes under [kafka.producer], with the topic's "
        "max.message.bytes and the brokers' message.max.bytes"
    )


#: How long ``Outbox.send_now`` keeps librdkafka sending without linger (if its sender thread misses
#: that window, the records go after ``linger.ms`` as they would anyway).
SEND_NOW_SECONDS = 0.001


class Outbox:
    """Sends records for input messages and marks the inputs done.

    At least once, an input is done when the broker acknowledged its record. Exactly once
    (``transactional``), an input is done as soon as its record is in the open transaction: the
    transaction commits the records and the offsets together, or neither. ``lock`` is held while
    one batch's records are produced, so a transaction never holds part of a batch. Delivery
    reports then come for failures only; the inputs' latency is taken when their transaction
    commits (``committed``), which is when their outputs become visible.
    """

    def __init__(
        self, producer: Producer, tracker: OffsetTracker, timeline: Timeline | None = None, transactional: bool = False
    ) -> None:
        self.producer = producer
        self.tracker = tracker
        self.timeline = timeline or Timeline()
        self.transactional = transactional
        #: per-batch acknowledgement hook (topic, input timestamps in ms): the metrics, when on
        self.on_acknowledged: Callable[[str, list[int]], None] | None = None
        self.lock = threading.RLock()
        #: while set, records are dropped unsent: their transaction was aborted and they will be redone
        self.discarding = False
        self.failure: DeliveryError | None = None
        #: where dead letters go (a refusal says which kind of record was refused)
        self.dead_letter_topic: str | None = None
        #: the producer's ``message.max.bytes``, which librdkafka checks at ``produce``
        self.producer_limit = PRODUCER_MAX_BYTES
        #: topics whose brokers refuse records the producer sends (larger than ``max_bytes``: their
        #: ``max.message.bytes`` less a record batch's header, where below the producer's; without a key,
        #: where compacted): each record for them is checked before it is produced, as the brokers would
        #: refuse it and end the run
        self.topic_rules: dict[str, TopicRules] = {}
        #: the fatal error librdkafka gave up on the producer with, once one was served
        self.fatal_error: KafkaError | None = None
        #: exactly once: (topic, input timestamps) of the batches in the open transaction
        self._uncommitted: list[tuple[str, list[int]]] = []
        self._serving = threading.Event()
        self._server: threading.Thread | None = None

    def send(self, source: Message, topic: str, value: bytes, key: bytes | None, headers: Headers) -> None:
        self.send_batch([source], topic, [value], [headers], keys=[key])

    def send_batch(
        self,
        sources: list[Message],
        topic: str,
        values: Sequence[bytes | None],
        headers: list[Headers | None],
        keys: list[bytes | None] | None = None,
        coords: list[tuple[Partition, int]] | None = None,
        timestamps: list[int] | None = None,
        timed: bool = False,
        unfit: Unfit | None = None,
        to_input_partitions: bool = False,
    ) -> int:
        """One record per source message (key: the source's, unless given). ``coords`` and
        ``timestamps``: the sources', when the caller already has them. ``timed``: a batch's outputs,
        whose wait for acknowledgement is its ``acknowledge`` stage (at least once). ``unfit``:
        see ``Unfit``. ``to_input_partitions``: each record to the partition of its source's number,
        not the partitioner's choice. Returns how many records were left out that way."""
        with self.lock:
            if self.discarding:
                return 0
            coords = coordinates_of(sources) if coords is None else coords
            ack = BatchAck(self, topic, coords, timestamps_of(sources) if timestamps is None else timestamps)
            produce, on_delivery = self.producer.produce, ack.on_delivery
            keys = [msg.key() for msg in sources] if keys is None else keys
            left_out: list[int] = []
            rules = self.topic_rules.get(topic)
            refused: KafkaError | None
            partitions = [p for (_, p), _ in coords] if to_input_partitions else [ANY_PARTITION] * len(values)
            records = zip(values, keys, headers, partitions, strict=True)
            for index, (value, key, record_headers, partition) in enumerate(records):
                bad = None if rules is None else self._breaks(rules, topic, index, value, key, record_headers)
                if bad is None:
                    try:  # the common case, kept lean: one call per record
                        produce(topic, value, key, partition, on_delivery, None, NOW, record_headers)
                        continue
                    except (BufferError, KafkaException):
                        refused = self._produce(topic, value, key, partition, record_headers, ack)
                        if refused is None:
                            continue
                    if refused.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                        bad = self._over_producer_limit(index, record_bytes(value, key, record_headers))
                else:
                    refused = _refusal(bad)
                if bad is not None and unfit is not None and unfit(bad):
                    left_out.append(index)
                    continue
                self._fail(topic, *coords[index], refused)
                return len(left_out)
            if left_out:
                self._leave_out(ack, left_out)
            if self.transactional:
                self.tracker.done_many(ack.coords)
                self._uncommitted.append((topic, ack.timestamps))
            else:
                if timed:
                    ack.produced_at = time.monotonic()
                ack.handed()
            return len(left_out)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        headers: Headers | None,
        ack: BatchAck,
    ) -> KafkaError | None:
        """Produce one record, waiting while the producer's queue is full; the error if it was refused
        before sending (too large, unknown topic or partition...)."""
        while True:
            try:
                self.producer.produce(topic, value, key, partition, ack.on_delivery, None, NOW, headers)
                return None
            except BufferError:  # the producer's queue is full: wait for acknowledgements
                self.poll(0.05)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                return error

    def _over_producer_limit(self, index: int, size: int) -> Oversize:
        return Oversize(index, size, self.producer_limit, f"the producer's message.max.bytes ({self.producer_limit:,})")

    @staticmethod
    def _breaks(
        rules: TopicRules, topic: str, index: int, value: bytes | None, key: bytes | None, headers: Headers | None
    ) -> Oversize | Keyless | None:
        """How a record breaks its topic's rules, if it does."""
        if rules.compacted and key is None:
            return Keyless(
                index, f"topic {topic!r} is compacted ({CLEANUP_POLICY} compact): it takes no record without a key"
            )
        if rules.max_bytes is not None and (size := record_bytes(value, key, headers)) > rules.max_bytes:
            rule = (
                f"topic {topic!r}'s max.message.bytes ({rules.max_bytes + RECORD_BATCH_HEADER_BYTES:,}, "
                f"a record batch's {RECORD_BATCH_HEADER_BYTES}-byte header included)"
            )
            return Oversize(index, size, rules.max_bytes, rule)
        return None

    def _leave_out(self, ack: BatchAck, left_out: list[int]) -> None:
        """Records the producer refused whose inputs went elsewhere (dead letters, done when those are):
        the batch no longer covers their inputs, nor waits for their acknowledgement."""
        gone = set(left_out)
        ack.coords = [c for i, c in enumerate(ack.coords) if i not in gone]
        ack.timestamps = [t for i, t in enumerate(ack.timestamps) if i not in gone]
        if not self.transactional:  # counted as acknowledged, after the coordinates changed: the last
            for _ in left_out:  # acknowledgement, whichever thread serves it, marks the rest done
                ack.on_delivery(None, None)

    def committed(self) -> None:
        """Exactly once: the open transaction committed; its inputs count as acknowledged now."""
        with self.lock:
            for topic, timestamps in self._uncommitted:
                self.acknowledged(topic, timestamps)
            self._uncommitted.clear()

    def aborted(self) -> None:
        """Exactly once: the open transaction was aborted; its inputs will be processed again."""
        with self.lock:
            self._uncommitted.clear()

    def acknowledged(self, topic: str, timestamps: list[int]) -> None:
        self.timeline.acknowledged_many(timestamps)
        if self.on_acknowledged is not None:
            self.on_acknowledged(topic, timestamps)

    def _fail(self, topic: str, partition: Partition, offset: int, err: KafkaError) -> None:
        """Keep the first failure; the input is never marked done, so nothing past it commits."""
        if self.failure is None and not self.discarding:
            retriable = err.code() not in PERMANENT and not err.fatal()
            hint = _hint(err.code(), topic == self.dead_letter_topic)
            self.failure = DeliveryError(
                f"could not deliver a record to topic {topic!r} ({err.str()}); "
                f"input {partition[0]}[{partition[1]}]@{offset} and later are not committed{hint}",
                retriable=retriable,
                cause=err,
            )

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports for up to ``timeout`` seconds (see ``_served``)."""
        self._served(self.producer.poll, timeout)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every record to be acknowledged or failed."""
        self._served(self.producer.flush, timeout)

    def _served(self, serve: Callable[[float], int], timeout: float) -> None:
        """Every call that serves the producer's events goes through here: librdkafka's fatal error
        is raised once, by whichever call serves it, and is kept (``dead_producer``)."""
        try:
            serve(timeout)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            if self.fatal_error is None:
                self.fatal_error = exc.args[0]

    def dead_producer(self) -> KafkaError | None:
        """The fatal error the producer died of, if it did; None while it lives. Nothing cures that
        but a new producer. A failed record can tell before the error is served (``_is_dead``): it
        is then awaited briefly."""
        cause = self.failure.cause if self.failure is not None else None
        if self.fatal_error is None and cause is not None and self._is_dead(cause):
            wait_until(lambda: self.fatal_error is not None, FATAL_CAUSE_WAIT_SECONDS, lambda: self.poll(0.05))
            return self.fatal_error or cause
        return self.fatal_error

    def _is_dead(self, error: KafkaError) -> bool:
        """A record's error that only a dead producer gives: ``produce`` refused with ``_FATAL``, or,
        at least once (exactly once, aborts purge too), its queued records purged."""
        purged = error.code() == KafkaError._PURGE_QUEUE and not self.transactional
        return error.fatal() or error.code() == KafkaError._FATAL or purged

    def send_now(self) -> None:
        """Send the records produced so far without waiting out ``linger.ms``: called when a batch's
        records are all produced and no batch is behind it, so nothing is coming soon to share their
        request. librdkafka's only call for that is ``flush``, which sends without linger while it
        runs; a millisecond is enough for its sender thread to wake up (and ``flush`` serves the
        delivery reports that come meanwhile). It does not wait for the acknowledgements."""
        self.flush(SEND_NOW_SECONDS)

    def serve_acknowledgements(self) -> None:
        """Serve delivery reports as they arrive, in a thread of their own: an input is done (and its
        latency taken) when the broker acknowledges its output, not when a loop next comes round."""
        self._serving.clear()
        self._server = threading.Thread(target=self._serve, name="acks", daemon=True)
        self._server.start()

    def _serve(self) -> None:
        while not self._serving.is_set():
            self.poll(0.05)

    def stop_serving(self) -> None:
        self._serving.set()
        if self._server is not None:
            self._server.join()


class BatchAck:
    """Counts one batch's acknowledgements; the last one marks all its inputs done at once.

    Delivery callbacks run in whichever thread polls the producer (the acks thread may serve them
    all before ``send`` returns); ``next()`` on an ``itertools.count`` is one atomic step, so exactly
    one count is the last: that of the last acknowledgement, or of ``handed``, once ``send`` is done
    with the batch (its ``produced_at`` set)."""

    __slots__ = ("_acknowledged", "coords", "last", "outbox", "produced_at", "timestamps", "topic")

    def __init__(self, outbox: Outbox, topic: str, coords: list[tuple[Partition, int]], timestamps: list[int]) -> None:
        self.outbox, self.topic, self.coords, self.timestamps = outbox, topic, coords, timestamps
        self.last = len(coords)  # one count per record, and one for ``handed``
        self._acknowledged = itertools.count()
        #: when its last record was handed to the producer, for a timed batch
        self.produced_at: float | None = None

    def on_delivery(self, err: KafkaError | None, _msg: Message | None) -> None:
        if err is not None:  # the batch never counts as done: nothing past it commits
            self.outbox._fail(self.topic, *self.coords[0], err)
        elif next(self._acknowledged) == self.last:
            self._all_acknowledged()

    def handed(self) -> None:
        """Every record of the batch is with the producer: counted like an acknowledgement."""
        self.on_delivery(None, None)

    def _all_acknowledged(self) -> None:  # at least once: exactly once reports failures only
        produced_at = self.produced_at
        if produced_at is not None:
            self.outbox.timeline.stage("acknowledge", time.monotonic() - produced_at)
        self.outbox.tracker.done_many(self.coords)
        self.outbox.acknowledged(self.topic, self.timestamps)


def wait_until(condition: Callable[[], bool], timeout: float, tick: Callable[[], None]) -> bool:
    """Call ``tick`` until ``condition`` holds or ``timeout`` seconds pass; return the condition."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        tick()
    return True
