"""Read a topic's partitions without joining a group: assign, read, stop at the end, a count or idleness."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from tqdm import tqdm

from consumer.errors import BrokerError, ConfigError
from consumer.kafka_io import UNREACHABLE_HINT
from producer_tools.clients import close_consumer, kafka_consumer


@dataclass(frozen=True)
class StopWhen:
    """When a read ends: every partition at its end (once ``min_count`` records were read),
    ``count`` records, ``idle`` seconds of quiet, or ``timeout`` seconds in all (the first wins)."""

    at_end: bool = True
    min_count: int = 0
    count: int | None = None
    idle: float | None = None
    timeout: float | None = None


class ReadProgress:
    """A read's progress bar (stderr). Its total is ``stop.count``; for a read to the partitions'
    ends, it grows as each partition's first record comes by the records from there to the end
    that fetch saw (the high watermark a fetch response carries, right on every broker, unlike
    ListOffsets on the embedded one; records appended meanwhile are read too, past the total);
    reading until idle, it has none."""

    def __init__(self, consumer: Consumer, stop: StopWhen, desc: str) -> None:
        self.consumer = consumer
        self.to_end = stop.at_end and stop.count is None and stop.idle is None
        total = stop.count if stop.count is not None else (0 if self.to_end else None)
        self.bar = tqdm(desc=desc, unit="msg", total=total)
        self.sized: set[int] = set()

    def read(self, msg: Message) -> None:
        partition = cast(int, msg.partition())
        if self.to_end and partition not in self.sized:
            self.sized.add(partition)
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(cast(str, msg.topic()), partition), cached=True
            )
            self.bar.total = (self.bar.total or 0) + max(0, (high or 0) - cast(int, msg.offset()))
        self.bar.update()

    def __enter__(self) -> ReadProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.close()


def partitions_of(client: Consumer | Producer | AdminClient, topic: str, timeout: float = 30.0) -> list[int]:
    """The topic's partition ids; ``ConfigError`` if it does not exist (never auto-creates it)."""
    try:
        found = client.list_topics(timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        reason = exc.args[0].str()
        raise BrokerError(f"cannot reach Kafka to look up topic {topic!r}: {reason}; {UNREACHABLE_HINT}") from None
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(f"topic {topic!r} does not exist: create it or fix the name")
    return sorted(found.partitions)


def read_partitions(
    consumer: Consumer, topic: str, stop: StopWhen, starts: Mapping[int, int] | None = None
) -> Iterator[Message]:
    """Records of ``topic`` from ``starts`` (default: the beginning), until ``stop`` holds."""
    partitions = partitions_of(consumer, topic)
    starts = starts or {}
    consumer.assign([TopicPartition(topic, p, starts.get(p, OFFSET_BEGINNING)) for p in partitions])
    at_end: set[int] = set()
    count, began = 0, time.monotonic()
    last = began
    while not _stopped(stop, len(at_end) == len(partitions), count, began, last):
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        error, partition = msg.error(), cast(int, msg.partition())
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                at_end.add(partition)
            continue
        at_end.discard(partition)
        count, last = count + 1, time.monotonic()
        yield msg


def _stopped(stop: StopWhen, all_at_end: bool, count: int, began: float, last: float) -> bool:
    now = time.monotonic()
    return (
        (stop.at_end and all_at_end and count >= stop.min_count)
        or (stop.count is not None and count >= stop.count)
        or (stop.idle is not None and now - last >= stop.idle)
        or (stop.timeout is not None and now - began >= stop.timeout)
    )


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0, min_count: int = 0) -> list[Message]:
    """Every record now in ``topic``; waits up to ``timeout`` for at least ``min_count`` of them."""
    return list(iter_topic(bootstrap, topic, timeout, min_count))


def iter_topic(bootstrap: str, topic: str, timeout: float = 30.0, min_count: int = 0) -> Iterator[Message]:
    consumer = kafka_consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tfstream-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        yield from read_partitions(consumer, topic, StopWhen(min_count=min_count, timeout=timeout))
    finally:
        close_consumer(consumer)
