"""``consumer check --sample-topic``: records of a topic, read without joining a group, to run
through the model as a worker would: what the producers send (the input topic), or the dead letters
a new model version should now take (the dead-letter topic), before a deploy or a replay.

The first ``--sample-count`` records from the start of each partition, or from
``--sample-from-timestamp`` (looked up with ``offsets_for_times``, and each record's own timestamp
checked, so the start is exact even where that lookup is coarse, as on the embedded broker); or,
``--sample-latest``, the last ``--sample-count`` records, shared over the partitions (their ends
read from a fetch response: right on the embedded broker too, whose ListOffsets counts batches).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from confluent_kafka import Consumer

from consumer.positions import TimeWindow
from producer_tools.clients import Clients, close_consumer
from producer_tools.commands import epoch_ms
from producer_tools.groups import end_offsets
from producer_tools.reader import StopWhen, partitions_of, read_partitions
from producer_tools.replay import start_offsets

#: records checked unless ``--sample-count`` says
SAMPLE_COUNT = 1000


class TopicSample:
    """The sample's values, read as they are fed, and the name of the last one read."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        count: int,
        window: TimeWindow,
        starts: dict[int, int],
        tombstones: str,
        latest: bool = False,
    ) -> None:
        self.consumer, self.topic, self.count, self.window, self.starts = consumer, topic, count, window, starts
        self.current = ""  # ``topic[partition]@offset`` of the value last read
        self.before = 0  # records read before ``--sample-from-timestamp``
        #: ``--tombstones skip`` or ``forward``: records without a value are no dead letters, left out
        #: (and counted in ``set_aside``); with ``dead-letter``, the default, they go through and become dead letters
        self.tombstones = tombstones
        self.set_aside = 0
        #: ``--sample-latest``: ``starts`` are each partition's share of the last ``count`` records
        self.latest = latest

    @classmethod
    def open(cls, args: argparse.Namespace, tombstones: str) -> TopicSample:
        """Look the topic up (``ConfigError`` if it does not exist, ``BrokerError`` if Kafka does not
        answer) and where each partition's sample starts."""
        window = TimeWindow(epoch_ms(args.sample_from_timestamp, "--sample-from-timestamp"), None)
        count = args.sample_count or SAMPLE_COUNT
        consumer = Clients(args).consumer()
        try:
            partitions_of(consumer, args.sample_topic)
            if args.sample_latest:
                starts = latest_starts(end_offsets(consumer, args.sample_topic), count)
            else:
                starts = start_offsets(consumer, args.sample_topic, window.from_ms)
        except BaseException:
            close_consumer(consumer)
            raise
        return cls(consumer, args.sample_topic, count, window, starts, tombstones, bool(args.sample_latest))

    def values(self) -> Iterator[bytes | None]:
        taken = 0
        for msg in read_partitions(self.consumer, self.topic, StopWhen(), self.starts):
            if not self.window.keeps(msg.timestamp()[1]):
                self.before += 1
                continue
            if msg.value() is None and self.tombstones != "dead-letter":
                self.set_aside += 1
                continue
            self.current = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            taken += 1
            yield msg.value()
            if taken >= self.count:
                return

    @property
    def labels(self) -> Iterator[str]:
        """Each value's name, read right after the value."""
        while True:
            yield self.current

    def describe(self) -> str:
        which = f"the latest, up to {self.count:,} records" if self.latest else f"up to {self.count:,} records"
        since = f", {self.before} before --sample-from-timestamp left out" if self.before else ""
        aside = f", {self.set_aside} without a value left to --tombstones {self.tombstones}" if self.set_aside else ""
        return f" from {self.topic!r} ({which}{since}{aside})"

    def close(self) -> None:
        close_consumer(self.consumer)


def latest_starts(bounds: dict[int, tuple[int, int]], count: int) -> dict[int, int]:
    """Where each partition's share of the last ``count`` records starts, from its (low, end)
    offsets: shared evenly, and what a partition holding fewer cannot give goes to the others."""
    held = {partition: end - low for partition, (low, end) in bounds.items()}
    shares: dict[int, int] = {}
    left = count
    for place, partition in enumerate(sorted(held, key=held.__getitem__)):
        even = -(-left // (len(held) - place))  # rounded up: the last partition takes what is left
        shares[partition] = min(held[partition], even)
        left -= shares[partition]
    return {partition: end - shares[partition] for partition, (_, end) in bounds.items()}
