"""A group's position on a topic: end offsets, lag, and moving the group (``reset-offsets``).

End offsets come from a fetch response's high watermark (or partition EOF), not ListOffsets
alone: right on real Kafka and on the embedded broker, whose ListOffsets counts batches.
A timestamp is turned into an offset with ``offsets_for_times`` and then checked against the
records' own timestamps, so the answer is exact on both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupState, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.errors import BrokerError, ConfigError
from producer_tools.clients import admin_result
from producer_tools.reader import partitions_of

_ACTIVE = {
    ConsumerGroupState.STABLE,
    ConsumerGroupState.PREPARING_REBALANCING,
    ConsumerGroupState.COMPLETING_REBALANCING,
}


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group has no commit here
    low: int
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed if self.committed is not None else self.low)


def end_offsets(consumer: Consumer, topic: str, timeout: float = 30.0) -> dict[int, tuple[int, int]]:
    """(low, end) per partition, ``end`` read from a fetch response or partition EOF."""
    partitions = partitions_of(consumer, topic)
    lows = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[0] for p in partitions}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(ends) < len(partitions):
        if time.monotonic() > deadline:
            raise BrokerError(f"no fetch answer for topic {topic!r} within {timeout:.0f}s; is the broker up?")
        msg = consumer.poll(0.2)
        if msg is None or cast(int, msg.partition()) in ends:
            continue
        partition = cast(int, msg.partition())
        error = msg.error()
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            ends[partition] = cast(int, msg.offset())
        elif error is None:
            ends[partition] = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]
            consumer.pause([TopicPartition(topic, partition)])
    consumer.resume([TopicPartition(topic, p) for p in partitions])  # pausing outlives the assignment
    consumer.unassign()
    return {p: (lows[p], ends[p]) for p in partitions}


def committed_offsets(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int | None]:
    found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}


def lag(consumer: Consumer, topic: str) -> list[PartitionLag]:
    bounds = end_offsets(consumer, topic)
    committed = committed_offsets(consumer, topic, sorted(bounds))
    return [PartitionLag(p, committed[p], low, end) for p, (low, end) in sorted(bounds.items())]


def offset_at_time(consumer: Consumer, topic: str, partition: int, timestamp_ms: int, end: int) -> int:
    """The first offset whose record timestamp is at or after ``timestamp_ms`` (``end`` if none)."""
    (guess,) = consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)], timeout=30)
    start = guess.offset if guess.offset >= 0 else end
    consumer.assign([TopicPartition(topic, partition, start)])
    deadline = time.monotonic() + 30
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > deadline:
                    raise BrokerError(f"no fetch answer for {topic}[{partition}] within 30s; is the broker up?")
                continue
            error = msg.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return cast(int, msg.offset())
            if error is None and msg.timestamp()[1] >= timestamp_ms:
                return cast(int, msg.offset())
    finally:
        consumer.unassign()


def refuse_if_active(admin: AdminClient, group: str, timeout: float = 30.0) -> None:
    """Moving a group's offsets under running members would be overwritten (or worse): refuse."""
    described = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
    description = admin_result(described, timeout, f"describing group {group!r}")
    if description.members or description.state in _ACTIVE:
        raise ConfigError(
            f"group {group!r} has active members (state {description.state.name}, {len(description.members)} "
            "members listed): stop every consumer of the group first"
        )


def targets(
    consumer: Consumer, topic: str, to: str, timestamp_ms: int | None, bounds: Mapping[int, tuple[int, int]]
) -> dict[int, int]:
    """The new committed offset per partition for ``to`` = earliest, latest or timestamp."""
    if to == "earliest":
        return {p: low for p, (low, _) in bounds.items()}
    if to == "latest":
        return {p: end for p, (_, end) in bounds.items()}
    assert timestamp_ms is not None
    return {p: offset_at_time(consumer, topic, p, timestamp_ms, end) for p, (_, end) in bounds.items()}


def commit(consumer: Consumer, topic: str, offsets: Mapping[int, int]) -> None:
    request = [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
    result = consumer.commit(offsets=request, asynchronous=False) or []
    failed = [f"{tp.partition}: {tp.error.str()}" for tp in result if tp.error is not None]
    if failed:
        raise BrokerError(f"the broker refused some offsets of {topic!r}: {', '.join(failed)}")
