"""How long a record waits before a caught-up consumer has it, with no model in the way.

A paced producer stamps each record with the time it is produced; a consumer that keeps up takes
"now - timestamp" for every record it receives. What that measures is the input producer's
``linger.ms``, the broker's produce path and how soon the broker answers a waiting fetch: the
floor under the consumer's own ``consume_latency_ms`` on that broker, at that rate.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer
from tqdm import tqdm

from consumer.errors import BrokerError
from consumer.timing import Reservoir, ages_ms
from producer_tools.publish import Pacer, produce
from producer_tools.topics import create_topics

#: the first second's records are left out: connections and the first fetches are start-up
WARM_UP_SECONDS = 1.0
JOIN_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Probe:
    fetch_wait_ms: int = 100
    rate: float = 5000.0
    seconds: float = 8.0
    linger_ms: float = 5.0
    partitions: int = 2


def measure(bootstrap: str, probe: Probe) -> dict[str, Any]:
    """Percentiles (ms) of consumed - record timestamp over the probe's records, as the workers
    summarise their own (``consume_latency_ms``)."""
    topic = f"fetch-latency-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=probe.partitions)
    consumer = _joined_consumer(bootstrap, topic, probe.fetch_wait_ms)
    stop = threading.Event()
    publisher = threading.Thread(target=_publish, args=(bootstrap, topic, probe, stop), daemon=True)
    publisher.start()
    try:
        ages = _receive(consumer, probe)
    finally:
        stop.set()
        publisher.join()
        consumer.close()
    return ages.percentiles()


def _joined_consumer(bootstrap: str, topic: str, fetch_wait_ms: int) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fetch-latency-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_wait_ms,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
    while not consumer.assignment():
        if time.monotonic() > deadline:
            consumer.close()
            raise BrokerError(f"the probe's consumer got no partitions of {topic!r} within {JOIN_TIMEOUT_SECONDS:.0f}s")
        consumer.poll(0.1)
    return consumer


def _publish(bootstrap: str, topic: str, probe: Probe, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": probe.linger_ms})
    pacer, value = Pacer(probe.rate), b"x" * 100
    while not stop.is_set():
        pacer.wait(producer)
        produce(producer, topic, value, None, timestamp=int(time.time() * 1000))
    producer.flush(10)


def _receive(consumer: Consumer, probe: Probe) -> Reservoir:
    """Every record's age when received, after the warm-up."""
    ages = Reservoir()
    start = time.monotonic()
    with tqdm(total=round(probe.seconds), desc="fetch-latency", unit="s", leave=False) as bar:
        while (elapsed := time.monotonic() - start) < probe.seconds:
            # one record as soon as it is there, then whatever else came with it
            messages = consumer.consume(1, 0.05) + consumer.consume(10_000, 0)
            now = time.time()
            stamps = [m.timestamp()[1] for m in messages if m.error() is None]
            if stamps and elapsed >= WARM_UP_SECONDS:
                ages.add(ages_ms(stamps, now))
            bar.update(int(elapsed) - bar.n)
    return ages
