from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from consumer.delivery import Outbox
from consumer.offsets import OffsetTracker

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
