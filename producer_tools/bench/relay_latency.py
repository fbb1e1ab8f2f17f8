"""The I/O limit's latency: the bare relay at the steady phase's rate, with no model.

The relay is the I/O limit's (consume → msgpack decode → produce), run in as many processes as the
system has workers (the partitions split between them, as the group splits them between the
workers) while the bench publishes at the rate the system's latency was measured at. One process
alone had a longer tail than two at 60,000 msg/s on two cores (p99 118 and 242 ms against 62 and
83): its one interpreter lock serves the fetching, the producing and the delivery reports.

Its clients are configured as a worker's (``kafka_io``, from the consumer's defaults: the paced
fetch; ``linger.ms`` 5, lz4, idempotent, ``acks`` all). It relays each record as soon as it is
fetched, and a thread serves its delivery reports. Each output carries its input's timestamp, so
its delivery report gives the workers' measure: output acknowledged minus the input's record
timestamp. What the system's p99 adds to this one is its batching, its model and its per-batch
work; this one is what the broker, the host and the clients leave at that rate before any of that.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import msgpack
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from consumer import kafka_io
from consumer.child import when_parent_dies
from consumer.config import Settings
from consumer.errors import BrokerError
from consumer.offsets import timestamps_of
from consumer.timing import Reservoir, ages_ms, worst_of
from producer_tools.bench.system import PRIMERS, input_producer, publish
from producer_tools.clients import close_consumer, kafka_consumer, kafka_producer
from producer_tools.reader import partitions_of, read_topic
from producer_tools.topics import create_topics

#: how long the relay waits for a first record before looking at its stop flag
POLL_SECONDS = 0.1
#: records taken at once after the first (what else the last fetch brought)
READ_AT_ONCE = 10_000
#: the relays' start (imports, metadata, the primers' round trip) and their end (the last outputs)
START_SECONDS = 60.0
#: after the last input is published, time for it to be relayed (the system's phase waits as long)
SETTLE_SECONDS = 3.0


def measure(
    bootstrap: str, values: list[bytes], rate: float, seconds: float, partitions: int, processes: int
) -> dict[str, Any]:
    """Publish ``values`` at ``rate`` for ``seconds`` through the bare relay in ``processes``
    processes (as many as the system's workers), the partitions split between them, on topics of
    its own; the percentiles (ms) of consumed and of acknowledged minus the input's timestamp, each
    the worst over the processes, as the system's are over its workers."""
    source = f"bench-relay-steady-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [source, source + "-out"], partitions=partitions)
    context = get_context("spawn")
    stop = context.Event()
    relays = [_start(context, bootstrap, source, stop, index, processes) for index in range(processes)]
    try:
        _wait_until_ready(relays)
        producer = input_producer(bootstrap)
        # as in the system's phase: a few inputs relayed before the steady rate, so that connections
        # and first fetches (start-up) are behind it
        publish(bootstrap, source, values, PRIMERS, desc="primers", producer=producer)
        if len(read_topic(bootstrap, source + "-out", timeout=START_SECONDS, min_count=PRIMERS)) < PRIMERS:
            _raise_any_failure(relays)
            raise BrokerError(f"the bench's relay did not relay its first inputs within {START_SECONDS:.0f}s")
        publish(bootstrap, source, values, max(1, int(rate * seconds)), rate, f"relay {rate:,.0f}/s", producer)
        time.sleep(SETTLE_SECONDS)
        stop.set()
        results = [_result(receiving) for _, receiving, _ in relays]
    finally:
        stop.set()
        for relay, *_ in relays:
            relay.join(START_SECONDS)
            if relay.is_alive():
                relay.kill()
    return {
        "processes": processes,
        "latency_ms": worst_of(r["latency_ms"] for r in results),
        "consume_latency_ms": worst_of(r["consume_latency_ms"] for r in results),
    }


#: a relay's process, the end its result comes from, and the flag it sets once its clients are made
Relay = tuple[Any, Connection, Event]


def _start(context: Any, bootstrap: str, source: str, stop: Event, index: int, count: int) -> Relay:
    """Relay ``index`` of ``count``: partitions ``index``, ``index + count``, … of ``source``."""
    receiving, sending = context.Pipe(duplex=False)
    ready = context.Event()
    args = (bootstrap, source, ready, stop, sending, index, count)
    relay = context.Process(target=_relay, args=args, daemon=True)
    relay.start()
    return relay, receiving, ready


def _wait_until_ready(relays: list[Relay]) -> None:
    """Every relay's clients made and its partitions assigned, before the first input is published
    (as the system's workers hold theirs before its phase starts)."""
    deadline = time.monotonic() + START_SECONDS
    for relay, _, ready in relays:
        while not ready.wait(0.2):
            _raise_any_failure(relays)
            if not relay.is_alive() or time.monotonic() > deadline:
                raise BrokerError(f"the bench's relay did not start within {START_SECONDS:.0f}s")


def _raise_any_failure(relays: list[Relay]) -> None:
    """A relay that failed has said why: that, rather than what it left undone."""
    for _, receiving, _ in relays:
        if receiving.poll(0):
            _result(receiving)


def _result(receiving: Connection) -> dict[str, Any]:
    if not receiving.poll(START_SECONDS):
        raise BrokerError(f"the bench's relay did not finish within {START_SECONDS:.0f}s of its last input")
    result: dict[str, Any] = receiving.recv()
    if "error" in result:
        raise BrokerError(f"the bench's relay failed: {result['error']}")
    return result


def _relay(bootstrap: str, source: str, ready: Event, stop: Event, results: Connection, index: int, count: int) -> None:
    """A relay's process: its partitions of ``source`` to ``source-out`` until ``stop``."""
    when_parent_dies(lambda: os._exit(1))
    try:
        settings = _workers_settings(bootstrap, source)
        consumer, producer = _consumer(settings, index, count), _producer(settings)
        ready.set()
        results.send(_run_relay(consumer, producer, source, stop))
    except Exception as exc:  # said by the parent, in one line
        results.send({"error": f"{type(exc).__name__}: {exc}"})


def _run_relay(consumer: Consumer, producer: Producer, source: str, stop: Event) -> dict[str, Any]:
    acknowledged = Acknowledgements(producer)
    consumed = Reservoir()
    try:
        while not stop.is_set():
            first = consumer.consume(1, POLL_SECONDS)
            records = [m for m in first + (consumer.consume(READ_AT_ONCE, 0) if first else []) if m.error() is None]
            if records:
                consumed.add(ages_ms(timestamps_of(records), time.time()))
            for msg in records:
                msgpack.unpackb(msg.value(), raw=False)
                acknowledged.send(source + "-out", msg)
        acknowledged.finish()
    finally:
        close_consumer(consumer)
    return {"latency_ms": acknowledged.ages.percentiles(), "consume_latency_ms": consumed.percentiles()}


def _consumer(settings: Settings, index: int, count: int) -> Consumer:
    consumer = kafka_consumer(_as_tools_client(kafka_io.consumer_config(settings, "relay")))
    mine = partitions_of(consumer, settings.input_topic)[index::count]
    consumer.assign([TopicPartition(settings.input_topic, p, OFFSET_BEGINNING) for p in mine])
    return consumer


def _producer(settings: Settings) -> Producer:
    return kafka_producer(_as_tools_client(kafka_io.producer_config(settings, "relay")))


def _workers_settings(bootstrap: str, source: str) -> Settings:
    """The consumer's defaults, so that the relay's clients are configured exactly as a worker's
    (``kafka_io``): its fetch, its producer, and whatever later changes them."""
    group = f"bench-relay-{uuid.uuid4().hex[:8]}"
    fields = {"bootstrap_servers": bootstrap, "input_topic": source, "output_topic": source + "-out"}
    return Settings.model_validate(fields | {"group": group, "model": "(no model)"})


def _as_tools_client(config: dict[str, Any]) -> dict[str, Any]:
    """A worker's client settings, logging as the tools' clients do."""
    return {key: value for key, value in config.items() if key != "logger"}


class Acknowledgements:
    """The relay's producer, with a thread serving its delivery reports as the workers' does: each
    delivered output's age (now minus its input's timestamp, which it carries) goes to ``ages``."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.ages = Reservoir()
        self.failure: KafkaError | None = None
        self._pending: list[float] = []  # this poll's ages, added to the reservoir at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="relay-acks", daemon=True)
        self._thread.start()

    def send(self, topic: str, msg: Message) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, msg.value(), msg.key(), timestamp=msg.timestamp()[1], on_delivery=self._on_delivery
                )
                return
            except BufferError:  # the local queue is full: the serving thread empties it
                time.sleep(0.001)

    def finish(self) -> None:
        """The serving thread stopped, then every output left waited for (acknowledged or failed)."""
        self._stop.set()
        self._thread.join()
        self.producer.flush(START_SECONDS)
        self._add_pending()
        if len(self.producer):
            raise BrokerError(f"{len(self.producer)} of the relay's outputs were not acknowledged")
        if self.failure is not None:
            raise BrokerError(f"an output of the relay failed: {self.failure.str()}")

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)
            self._add_pending()

    def _add_pending(self) -> None:
        if self._pending:
            self.ages.add(np.asarray(self._pending, dtype=np.float64))
            self._pending = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failure = err
            return
        self._pending.append(time.time() * 1000 - msg.timestamp()[1])
