"""Helpers for integration tests: publish, run a worker, read what came out, read commits."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from consumer.codec import unpack_output
from consumer.config import Settings, load_settings
from producer_tools.reader import read_topic
from tests.conftest import FAST_GROUP

Record = tuple[bytes | None, bytes | None]


def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    headers: list[tuple[str, bytes]] | None = None,
    timestamps: Sequence[int] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i, (key, value) in enumerate(records):
        extra = {"timestamp": timestamps[i]} if timestamps else {}
        producer.produce(topic, value, key, headers=headers, **extra)
    assert producer.flush(30) == 0


def settings(bootstrap: str, model: Path, input_topic: str, output_topic: str, group: str, **extra: Any) -> Settings:
    consumer = {**FAST_GROUP, **extra.pop("kafka_consumer", {})}
    values = dict(
        bootstrap_servers=bootstrap,
        model=model,
        input_topic=input_topic,
        output_topic=output_topic,
        group=group,
        max_batch_size=32,
        from_beginning=True,
        stop_at_end=True,
        kafka_consumer=consumer,
    )
    return load_settings({**values, **extra}, None, {})


def run_worker(s: Settings) -> dict[str, Any]:
    from consumer.worker import Worker

    return Worker(s).run()


class Background:
    """A worker running in a thread, for tests that stop it from outside."""

    def __init__(self, s: Settings) -> None:
        from consumer.worker import Worker

        self.worker = Worker(s)
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.worker.run()
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 60) -> None:
        self.worker.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive()


def outputs(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[tuple[Message, dict[str, Any]]]:
    return [(m, unpack_output(m.value())) for m in read_topic(bootstrap, topic, timeout=timeout, min_count=count)]


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()
