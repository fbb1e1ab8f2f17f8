from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.delivery import Outbox
from consumer.offsets import OffsetTracker
from tests.helpers import Topics

Acknowledge = Callable[[Any, Any], None]


class _Producer:
    """Takes records as ``confluent_kafka.Producer.produce`` does (positionally); acknowledges each at
    once, as the acks thread may before ``send_batch`` returns, or when told."""

    def __init__(self, at_once: bool) -> None:
        self.at_once = at_once
        self.waiting: list[Acknowledge] = []

    def produce(self, _topic: str, _value: bytes, _key: bytes, _part: int, on_delivery: Acknowledge, *_: Any) -> None:
        if self.at_once:
            on_delivery(None, None)
        else:
            self.waiting.append(on_delivery)

    def acknowledge(self) -> None:
        for on_delivery in self.waiting:
            on_delivery(None, None)
        self.waiting.clear()


@pytest.mark.parametrize("at_once", [True, False], ids=["acknowledged-before-send-returns", "acknowledged-after"])
def test_a_batch_is_done_and_its_acknowledge_stage_timed_once_whenever_its_acknowledgements_come(
    at_once: bool,
) -> None:
    """Under load the acks thread can serve a batch's every acknowledgement while the thread that sent
    it is still between its last ``produce`` and noting when that was: the batch must still count as
    done once, with its ``acknowledge`` stage (the bench checks that every stage counts every batch)."""
    producer, tracker = _Producer(at_once), OffsetTracker()
    coords = [(("in", 0), offset) for offset in range(3)]
    tracker.add_many(coords)
    outbox = Outbox(producer, tracker)  # type: ignore[arg-type]
    acknowledged: list[list[int]] = []
    outbox.on_acknowledged = lambda _topic, timestamps: acknowledged.append(timestamps)
    sent = outbox.send_batch(
        [None] * 3,  # type: ignore[list-item]
        "out",
        [b"a", b"b", b"c"],
        [None] * 3,
        keys=[b"k"] * 3,
        coords=coords,
        timestamps=[1, 2, 3],
        timed=True,
    )
    assert sent == 0
    if not at_once:
        assert tracker.in_flight() == 3 and acknowledged == []  # nothing done before its acknowledgements
        producer.acknowledge()
    assert tracker.in_flight() == 0 and acknowledged == [[1, 2, 3]]
    assert outbox.timeline.summary()["stages_ms"]["acknowledge"]["count"] == 1


@pytest.mark.integration
def test_an_output_for_a_partition_the_output_topic_lacks_fails_saying_why(bootstrap: str, topics: Topics) -> None:
    """An input partition added while ``--output-partitioning input`` runs has no counterpart in the
    output topic (the start check saw fewer): its output fails, retriable (the restart's start check
    then stops the run with exit 2, or goes on if the output topic grew), saying what to do."""
    (out,) = topics("out", partitions=2)
    producer, tracker = Producer({"bootstrap.servers": bootstrap}), OffsetTracker()
    coords = [(("in", 1), 0), (("in", 3), 0)]
    tracker.add_many(coords)
    outbox = Outbox(producer, tracker)
    sources: list[Any] = [None] * 2  # the coordinates are given
    outbox.send_batch(sources, out, [b"a", b"b"], [None] * 2, [None] * 2, coords, [1, 2], to_input_partitions=True)
    outbox.flush(10)
    assert outbox.failure is not None and outbox.failure.retriable
    # refused by produce() itself once the producer has the topic's metadata ("Unable to produce
    # message: Local: Unknown partition"), else by its delivery report ("Local: Unknown partition")
    said = str(outbox.failure)
    assert said.startswith(f"could not deliver a record to topic {out!r} (") and "Local: Unknown partition)" in said
    assert str(outbox.failure).endswith("the output topic needs as many partitions as the input topic")
    assert tracker.in_flight() == 2  # neither done: nothing is committed past a failure
