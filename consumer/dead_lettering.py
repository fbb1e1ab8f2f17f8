"""Inputs that cannot be predicted: sent to the dead-letter topic, unchanged, with headers that say
why and where they came from, cut to fit the topic where they must be; or, without a dead-letter
topic, skipped. Either way they count as done, and are logged, sampled."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from confluent_kafka import Message

from consumer.counts import Counters
from consumer.delivery import RECORD_OVERHEAD_BYTES, Outbox, record_bytes
from consumer.errors import InputError
from consumer.headers import HEADER_PREFIX, Headers, error_headers, source_headers
from consumer.logs import Sampled
from consumer.offsets import coordinates


class DeadLetters:
    """Routes invalid inputs to the dead-letter topic, or skips them when there is none; logs them sampled."""

    def __init__(
        self,
        outbox: Outbox,
        topic: str | None,
        group: str,
        model: dict[str, str],
        counters: Counters,
        log: Any,
        max_record_bytes: int = 1_000_000,
        keep_key: bool = False,
    ) -> None:
        self.outbox, self.topic, self.group, self.model = outbox, topic, group, model
        self.counters, self.log = counters, log
        #: the largest record the dead-letter topic takes (the producer's ``message.max.bytes``, or the
        #: topic's ``max.message.bytes`` where lower): a dead letter is cut to fit it (``_fitted``)
        self.max_record_bytes = max_record_bytes
        #: the dead-letter topic is compacted: it takes no record without a key, so cutting keeps it
        self.keep_key = keep_key
        self.on_dead_letter: Callable[[str], None] | None = None
        #: each dead letter (or skipped input) is said in the log, sampled: a stream of bad inputs (a
        #: producer writing another format, a model that takes another shape) writes a few lines a window
        self.warnings = Sampled(log, "input dead-lettered" if topic else "input skipped (no dead-letter topic)")

    def send(self, msg: Message, error: InputError) -> None:
        self.counters.add(dead_lettered=1)
        if self.on_dead_letter is not None:
            self.on_dead_letter(type(error).__name__)
        self.warnings.warning(
            type(error).__name__,
            stage=error.stage,
            error=type(error).__name__,
            reason=str(error),
            offset=msg.offset(),
            partition=msg.partition(),
        )
        if self.topic is None:
            self.outbox.tracker.done(*coordinates(msg))
            return
        self.outbox.send(msg, self.topic, *self._fitted(msg, error_headers(msg, error, self.group, self.model)))

    def _fitted(self, msg: Message, ours: Headers) -> tuple[bytes, bytes | None, Headers]:
        """The dead letter's value, key and headers (the input's own, then ``ours``), cut until it
        fits ``max_record_bytes`` (else the stream would stop on it): the largest of the input's value, key
        and own headers dropped first, then the next, each said in a
        ``tfstream.errors.{value,key,headers}.omitted.bytes`` header. The key stays where ``keep_key``."""
        value, key, theirs = msg.value() or b"", msg.key(), source_headers(msg)
        headers = theirs + ours
        their_headers = record_bytes(b"", None, theirs) - RECORD_OVERHEAD_BYTES
        sizes = {"value": len(value), "headers": their_headers}
        if not self.keep_key:
            sizes["key"] = len(key or b"")
        for part, size in sorted(sizes.items(), key=itemgetter(1), reverse=True):
            if record_bytes(value, key, headers) <= self.max_record_bytes:
                break
            if part == "value":
                value = b""
            elif part == "key":
                key = None
            else:
                headers = headers[len(theirs) :]  # the input's own come first
            headers = [*headers, (f"{HEADER_PREFIX}errors.{part}.omitted.bytes", str(size).encode())]
        return value, key, headers
