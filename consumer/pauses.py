"""The partitions a worker has paused: for back-pressure (its read-ahead budget spent), at a bounded
run's end, or while outputs cannot be delivered. librdkafka keeps a partition paused across revoke
and re-assign, so one given up is resumed as it goes (``release``)."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from consumer.offsets import Partition


class Pauses:
    """Pauses and resumes the consumer's partitions, and remembers which it paused."""

    def __init__(self, consumer: Consumer, finished: Callable[[], set[Partition]]) -> None:
        self.consumer = consumer
        #: partitions a bounded run has read to its end: they stay paused
        self._finished = finished
        self.paused: set[Partition] = set()

    def pause(self, partitions: set[Partition]) -> None:
        if partitions:
            self.consumer.pause([TopicPartition(*p) for p in partitions])
            self.paused |= partitions

    def resume(self, partitions: set[Partition]) -> None:
        if partitions:
            self.consumer.resume([TopicPartition(*p) for p in partitions])
            self.paused -= partitions

    def pause_all(self) -> None:
        self.pause(self.assigned() - self.paused)

    def resume_unfinished(self) -> None:
        self.resume(self.paused - self._finished())

    def resume_assigned(self) -> None:
        """Back-pressure off: the paused partitions still assigned and not finished read again."""
        self.resume((self.paused & self.assigned()) - self._finished())

    def assigned(self) -> set[Partition]:
        """The consumer's assignment (asking for it takes librdkafka's locks: only when needed)."""
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def given(self, partitions: set[Partition]) -> None:
        """Newly assigned partitions start unpaused."""
        self.paused -= partitions

    def release(self, partitions: set[Partition]) -> None:
        """Partitions given up: resumed (a partition paused here and assigned again would never be
        read again) and forgotten."""
        self.consumer.resume([TopicPartition(*p) for p in partitions])
        self.paused -= partitions
