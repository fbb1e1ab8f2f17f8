"""``publish``: send examples to an input topic in wire format v1, optionally at a steady rate.

The idempotent producer is flushed at the end and every delivery is counted: the command
exits non-zero if any message was not acknowledged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from tqdm import tqdm

from consumer.codec import pack_input
from producer_tools.sources import Example, repeat


@dataclass
class DeliveryCount:
    """Acknowledged and failed deliveries, filled in by the producer's callbacks."""

    ok: int = 0
    failed: int = 0
    first_error: str = ""

    def __call__(self, err: KafkaError | None, _msg: Message | None) -> None:
        if err is None:
            self.ok += 1
            return
        self.failed += 1
        self.first_error = self.first_error or err.str()


class Pacer:
    """Holds a steady rate: message n goes no earlier than ``start + n / rate``."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.start, self.sent = rate, time.monotonic(), 0

    def wait(self, producer: Producer) -> None:
        if self.rate:
            ahead = self.start + self.sent / self.rate - time.monotonic()
            if ahead > 0.001:
                producer.poll(ahead)  # serve delivery reports while waiting
                time.sleep(max(0.0, self.start + self.sent / self.rate - time.monotonic()))
        self.sent += 1


def plan(examples: Sequence[Example], times: int, count: int | None) -> tuple[Iterable[Example], int]:
    """What to send and how many: ``count`` messages (cycling the file), else ``times`` passes."""
    if count is not None:
        times = math.ceil(count / len(examples))
    total = count if count is not None else len(examples) * times
    return repeat(examples, times, count), total


def send_all(
    producer: Producer, topic: str, examples: Iterable[Example], total: int, as_lists: bool, rate: float | None
) -> DeliveryCount:
    """Produce every example, then flush; returns what was acknowledged."""
    delivered = DeliveryCount()
    pacer = Pacer(rate)
    with tqdm(total=total, desc=f"publish {topic}", unit="msg") as bar:
        for example in examples:
            pacer.wait(producer)
            value = pack_input(example.inputs, id=example.id, as_lists=as_lists)
            produce(producer, topic, value, example.key, on_delivery=delivered)
            bar.update()
        while producer.flush(1.0):
            bar.set_postfix(acknowledged=delivered.ok)
    return delivered


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None, **options: Any) -> None:
    """``Producer.produce`` that waits for room (serving delivery reports) when the queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, **options)
            producer.poll(0)
            return
        except BufferError:  # the local queue is full: wait for acknowledgements
            producer.poll(0.1)
        except KafkaException as exc:  # refused before sending (too large, unknown partition): a failure
            report = options.get("on_delivery")
            if report is None:
                raise
            report(exc.args[0], None)
            return
