"""Read a whole topic without joining a group: assign every partition, stop at partition EOF."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0, min_count: int = 0) -> list[Message]:
    """Every record now in ``topic``; waits up to ``timeout`` for at least ``min_count`` of them."""
    return list(iter_topic(bootstrap, topic, timeout, min_count))


def iter_topic(bootstrap: str, topic: str, timeout: float = 30.0, min_count: int = 0) -> Iterator[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tfstream-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        count, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline and (len(at_end) < len(partitions) or count < min_count):
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error, partition = msg.error(), cast(int, msg.partition())
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
                continue
            at_end.discard(partition)
            count += 1
            yield msg
    finally:
        consumer.close()
