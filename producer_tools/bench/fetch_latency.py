"""How long a record waits before a caught-up consumer has it, with no model in the way.

The consumer fetches as the workers do (``kafka_io.PACED_FETCH``), or with librdkafka's own
prefetching (``Probe.paced`` false).

A paced producer stamps each record with the time it is produced; a consumer that keeps up takes
"now - timestamp" for every record it receives. What that measures is the input producer's
``linger.ms``, the broker's produce path and how soon the broker answers a waiting fetch: the
floor under the consumer's own ``consume_latency_ms`` on that broker, at that rate. librdkafka's
statistics give the last part alone: the round trip of the consumer's requests to the partitions'
broker, which are its fetches.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer
from tqdm import tqdm

from consumer.errors import BrokerError
from consumer.kafka_io import FETCH_WAIT_MS, PACED_FETCH
from consumer.offsets import timestamps_of
from consumer.timing import Reservoir, ages_ms
from producer_tools.clients import close_consumer, kafka_consumer, kafka_producer
from producer_tools.publish import Pacer, produce
from producer_tools.topics import create_topics

#: the first second's records are left out: connections and the first fetches are start-up
WARM_UP_SECONDS = 1.0
JOIN_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Probe:
    fetch_wait_ms: int = FETCH_WAIT_MS
    rate: float = 5000.0
    seconds: float = 8.0
    linger_ms: float = 5.0
    partitions: int = 2
    #: the workers' paced fetch; False: librdkafka's own (fetch again as soon as a response lands)
    paced: bool = True


@dataclass
class FetchRoundTrips:
    """The p50 and p99 (µs) of each statistics window of librdkafka's round trips to the brokers
    that lead partitions (not the group coordinator's connection, which carries the heartbeats)."""

    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    #: windows reported before this (``time.monotonic()``) are start-up, and left out
    counting_from: float = float("inf")

    def on_statistics(self, stats_json: str) -> None:
        if time.monotonic() < self.counting_from:
            return
        for broker in json.loads(stats_json).get("brokers", {}).values():
            rtt = broker.get("rtt", {})
            if broker.get("nodeid", -1) >= 0 and rtt.get("cnt", 0) > 0:
                self.p50s.append(rtt["p50"])
                self.p99s.append(rtt["p99"])

    def summary(self) -> dict[str, float | None]:
        """ms: the median window's p50 and the worst window's p99."""
        if not self.p50s:
            return {"p50": None, "p99": None}
        return {"p50": round(statistics.median(self.p50s) / 1000, 2), "p99": round(max(self.p99s) / 1000, 2)}


def measure(bootstrap: str, probe: Probe) -> dict[str, Any]:
    """Percentiles (ms) of consumed - record timestamp over the probe's records, as the workers
    summarise their own (``consume_latency_ms``), and the consumer's fetch round trips."""
    topic = f"fetch-latency-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=probe.partitions)
    round_trips = FetchRoundTrips()
    consumer = _joined_consumer(bootstrap, topic, probe, round_trips)
    stop = threading.Event()
    publisher = threading.Thread(target=_publish, args=(bootstrap, topic, probe, stop), daemon=True)
    publisher.start()
    try:
        ages = _receive(consumer, probe, round_trips)
    finally:
        stop.set()
        publisher.join()
        close_consumer(consumer)
    return {"consumed": ages.percentiles(), "fetch_round_trip_ms": round_trips.summary()}


def _joined_consumer(bootstrap: str, topic: str, probe: Probe, round_trips: FetchRoundTrips) -> Consumer:
    consumer = kafka_consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fetch-latency-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": probe.fetch_wait_ms,
            **(PACED_FETCH if probe.paced else {}),
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "statistics.interval.ms": 1000,
            "stats_cb": round_trips.on_statistics,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
    try:
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the probe's consumer got no partitions of {topic!r} within {JOIN_TIMEOUT_SECONDS:.0f}s"
                )
            consumer.poll(0.1)
    except BaseException:  # also Ctrl-C or SIGTERM while joining: leave the group before the broker goes
        close_consumer(consumer)
        raise
    return consumer


def _publish(bootstrap: str, topic: str, probe: Probe, stop: threading.Event) -> None:
    producer = kafka_producer({"bootstrap.servers": bootstrap, "linger.ms": probe.linger_ms})
    pacer, value = Pacer(probe.rate), b"x" * 100
    while not stop.is_set():
        pacer.wait(producer)
        produce(producer, topic, value, None, timestamp=int(time.time() * 1000))
    producer.flush(10)


def _receive(consumer: Consumer, probe: Probe, round_trips: FetchRoundTrips) -> Reservoir:
    """Every record's age when received, and the fetch round trips, after the warm-up."""
    ages = Reservoir()
    start = time.monotonic()
    round_trips.counting_from = start + WARM_UP_SECONDS
    with tqdm(total=round(probe.seconds), desc="fetch-latency", unit="s", leave=False) as bar:
        while (elapsed := time.monotonic() - start) < probe.seconds:
            # one record as soon as it is there, then whatever else came with it
            messages = consumer.consume(1, 0.05) + consumer.consume(10_000, 0)
            now = time.time()
            stamps = timestamps_of([m for m in messages if m.error() is None])
            if stamps and elapsed >= WARM_UP_SECONDS:
                ages.add(ages_ms(stamps, now))
            bar.update(int(elapsed) - bar.n)
    return ages
