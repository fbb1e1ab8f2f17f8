"""``replay``: copy the records of a time range from one topic to another, for backfills.

Keys, values, headers and record timestamps are kept; two headers are added so the copy can
always be traced back, even where the target topic's broker overwrites timestamps
(``LogAppendTime``): ``tfstream.replay.timestamp`` and ``tfstream.replay.source``. A copy of a copy
keeps the first copy's, which name the original record.
Each partition is read from ``offsets_for_times(from)`` to its end, and every record's own
timestamp is checked, so the range is exact even where that lookup is coarse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from consumer.headers import message_headers
from consumer.positions import TimeWindow
from producer_tools.publish import DeliveryCount, produce
from producer_tools.reader import ReadProgress, StopWhen, partitions_of, read_partitions

REPLAY_HEADER = "tfstream.replay."


@dataclass
class ReplayCount:
    read: int = 0
    outside: int = 0
    #: records in the window that ``keep`` left out (dead letters of other errors or stages)
    left_out: int = 0


def start_offsets(consumer: Consumer, topic: str, from_ms: int | None) -> dict[int, int]:
    """Per partition, where records at or after ``from_ms`` may begin (all of them if None)."""
    if from_ms is None:
        return {}
    lookup = [TopicPartition(topic, p, from_ms) for p in partitions_of(consumer, topic)]
    found = consumer.offsets_for_times(lookup, timeout=30)
    # -1 means no record is that recent: the read then starts (and ends) at the partition's end
    return {tp.partition: tp.offset for tp in found}


def replay(
    consumer: Consumer,
    producer: Producer,
    source: str,
    target: str,
    window: TimeWindow,
    keep: Callable[[Message], bool] | None = None,
) -> tuple[ReplayCount, DeliveryCount]:
    """Copy the records of ``window`` (those ``keep`` takes, if given) from ``source`` to ``target``."""
    same_layout = len(partitions_of(consumer, source)) == len(partitions_of(producer, target))
    counts, delivered = ReplayCount(), DeliveryCount()
    starts = start_offsets(consumer, source, window.from_ms)
    stop = StopWhen()  # every partition read to its end
    with ReadProgress(consumer, stop, f"replay {source} -> {target}") as progress:
        for msg in read_partitions(consumer, source, stop, starts):
            counts.read += 1
            progress.read(msg)
            if not window.keeps(msg.timestamp()[1]):
                counts.outside += 1
                continue
            if keep is not None and not keep(msg):
                counts.left_out += 1
                continue
            _copy(producer, msg, target, same_layout, delivered)
        while producer.flush(1.0):
            progress.bar.set_postfix(acknowledged=delivered.ok)
    return counts, delivered


def _copy(producer: Producer, msg: Message, target: str, same_layout: bool, delivered: DeliveryCount) -> None:
    timestamp = msg.timestamp()[1]
    headers = message_headers(msg)
    if not any(name.startswith(REPLAY_HEADER) for name, _ in headers):  # a copy of a copy names the original
        headers += [
            (REPLAY_HEADER + "timestamp", str(timestamp).encode()),
            (REPLAY_HEADER + "source", f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
        ]
    extra = {"partition": msg.partition()} if same_layout and msg.key() is None else {}
    produce(
        producer, target, msg.value(), msg.key(), headers=headers, timestamp=timestamp, on_delivery=delivered, **extra
    )
