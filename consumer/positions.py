"""Where a run starts, which records it keeps, and when a bounded run is finished.

Start flags apply only to partitions the group has never committed, so a restarted or
rebalanced worker resumes where the group left off instead of re-reading history. Without
flags, a partition added to the topic after the group started is read from its first record
(``GroupHistory``), not skipped as Kafka's ``auto.offset.reset=latest`` would.
Timestamps are checked on every record too: ``offsets_for_times`` may be coarse (or, on the
embedded broker, wrong), and the record's own timestamp keeps a time-bounded run exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.offsets import Partition


@dataclass(frozen=True)
class TimeWindow:
    """Records kept: ``from_ms <= timestamp < until_ms`` (either bound optional)."""

    from_ms: int | None = None
    until_ms: int | None = None

    @property
    def bounded(self) -> bool:
        return self.from_ms is not None or self.until_ms is not None

    def keeps(self, timestamp_ms: int) -> bool:
        if self.from_ms is not None and timestamp_ms < self.from_ms:
            return False
        return self.until_ms is None or timestamp_ms < self.until_ms


@dataclass(frozen=True)
class GroupHistory:
    """What the group had committed on the input topic when this worker started.

    A worker commits where each partition it takes starts, at once, so every partition the group
    has owned has a committed offset. A partition without one is therefore new to the group: if the
    group had committed others of the topic, or if its number is past the partitions the topic had
    when this worker started, it was added to the topic since the group started, and all of it was
    written since. It starts at its first record, whatever ``auto.offset.reset`` says: Kafka's
    ``latest`` would skip what producers wrote to it before the group's next metadata refresh
    found it.
    """

    committed: frozenset[int]
    partitions: int

    def may_be_added(self, partition: int) -> bool:
        """Whether ``partition`` may be one added since the group started: it had no commit when the
        worker started (commits are not taken back: a partition that had one needs no second look
        at a rebalance), and the group had committed others, or it is past the partitions there were."""
        if partition in self.committed:
            return False
        return bool(self.committed) or partition >= self.partitions


def group_history(consumer: Consumer, topic: str, partitions: int, timeout: float) -> GroupHistory:
    """Read which of the topic's ``partitions`` the consumer's group has committed."""
    found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=timeout)
    return GroupHistory(frozenset(tp.partition for tp in found if tp.offset >= 0), partitions)


#: ``auto.offset.reset`` values (and librdkafka's aliases) that start a new group at each partition's end
STARTS_AT_END = frozenset({"latest", "largest", "end"})


def skipped_by_new_group(consumer: Consumer, topic: str, history: GroupHistory, reset: str, timeout: float) -> bool:
    """Whether a group that never committed on ``topic`` starts past records already in it: where
    ``auto.offset.reset`` puts it at the end, and some partition holds records (its high watermark
    is past its low one; true on the embedded broker too, whose high watermark counts batches)."""
    if history.committed or reset not in STARTS_AT_END:
        return False
    for partition in range(history.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
        if high > low:
            return True
    return False


def new_group_notice(group: str, topic: str, reset: str) -> str:
    return (
        f"group {group!r} has never committed on {topic!r}: like any new Kafka group it starts at the end "
        f"of each partition (auto.offset.reset={reset}), so the records already in the topic are not read; "
        "to read them, run with --from-beginning or --from-timestamp"
    )


def apply_start_positions(
    consumer: Consumer,
    partitions: list[TopicPartition],
    from_beginning: bool,
    from_ms: int | None,
    log: Any,
    history: GroupHistory | None = None,
) -> bool:
    """Set start offsets on never-committed partitions; True if any offset was changed.

    The start flags place them all; without flags, those ``history`` says were added to the
    topic start at their first record, and the rest where ``auto.offset.reset`` says."""
    flagged = from_beginning or from_ms is not None
    maybe_added = history is not None and any(history.may_be_added(tp.partition) for tp in partitions)
    if not partitions or not (flagged or maybe_added):
        return False
    committed = consumer.committed(partitions, timeout=30)
    fresh = [tp for tp in committed if tp.offset < 0]
    resumed = [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in committed if tp.offset >= 0]
    if resumed and flagged:
        log.info("resuming at committed offsets; start flags apply to new partitions only", resumed=resumed)
    if not flagged:
        fresh = [tp for tp in fresh if history is not None and history.may_be_added(tp.partition)]
        if fresh:
            log.info(
                "partitions added to the topic since the group started: reading them from their first record",
                partitions=[f"{tp.topic}[{tp.partition}]" for tp in fresh],
            )
    if not fresh:
        return False
    if from_ms is not None:
        lookup = [TopicPartition(tp.topic, tp.partition, from_ms) for tp in fresh]
        starts = {(tp.topic, tp.partition): tp.offset for tp in consumer.offsets_for_times(lookup, timeout=30)}
    else:
        starts = {(tp.topic, tp.partition): OFFSET_BEGINNING for tp in fresh}
    for tp in partitions:
        # offsets_for_times answers -1 (the end) where no record is that recent
        tp.offset = starts.get((tp.topic, tp.partition), tp.offset)
    return True


@dataclass
class EndOfInput:
    """For ``--stop-at-end``: every assigned partition read up to where it ended at start. In any
    run, ``assigned`` is the worker's record of what it owns (its lag is counted over it).

    A partition's end is its high watermark as first seen in a fetch response (right on the
    embedded broker, unlike ListOffsets), or partition EOF, whichever comes first.
    """

    assigned: set[Partition] | None = None
    at_end: set[Partition] = field(default_factory=set)
    bounds: dict[Partition, int] = field(default_factory=dict)

    def assign(self, partitions: set[Partition]) -> None:
        self.assigned = (self.assigned or set()) | partitions

    def revoke(self, partitions: set[Partition]) -> None:
        """An eager rebalance revokes everything before it assigns again (a cooperative one, what
        moves): with nothing left, the worker waits for its next assignment (which may be empty)
        instead of counting as done."""
        if self.assigned is not None:
            self.assigned -= partitions
            if not self.assigned:
                self.assigned = None
        self.at_end -= partitions

    def reached_eof(self, partition: Partition) -> None:
        self.at_end.add(partition)

    def within_bound(self, consumer: Consumer, partition: Partition, offset: int) -> bool:
        """False (and the partition is at its end) for a record past the bound."""
        if partition not in self.bounds:
            _, high = consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
            if high is None or high <= offset:
                return True  # no usable watermark yet: rely on EOF
            self.bounds[partition] = high
        if offset >= self.bounds[partition]:
            self.at_end.add(partition)
            return False
        return True

    def reached_bounds(self, consumer: Consumer, fetched: list[tuple[Partition, int]]) -> set[Partition]:
        """The partitions this fetch took to their bound (now at their end; the others are not).
        Offsets ascend within a partition, so each partition's last record decides."""
        last = dict(fetched)  # partition → its last offset here
        past = {p for p, offset in last.items() if not self.within_bound(consumer, p, offset)}
        self.at_end.difference_update(last.keys() - past)
        return past

    def below_bound(self, partition: Partition, offset: int) -> bool:
        """For a partition ``reached_bounds`` returned: whether a record of it is still to be processed."""
        return offset < self.bounds[partition]

    def finished(self) -> bool:
        return self.assigned is not None and self.assigned <= self.at_end


@dataclass(frozen=True)
class Handover:
    """A partition revoked short of its end: the group's commit for it then, and its bound if known."""

    committed: int | None
    bound: int | None


@dataclass
class Handovers:
    """For a bounded run under cooperative rebalancing: partitions this worker gave up short of
    their end. Such a rebalance moves a partition in two rounds (revoked in the first, assigned in
    the second) and the member given it may be gone by then (on the embedded broker a member that
    left was handed it, until its session expired). A worker at the end of what it kept would leave,
    and with it the run, short of those partitions' ends (seen: 288 of 400 inputs, both workers
    exiting 0). So it is done only once each was taken up (the group's commit moved past what it
    was), read to its bound, or assigned back to it; ``timeout_s`` bounds the wait."""

    timeout_s: float
    pending: dict[Partition, Handover] = field(default_factory=dict)
    since: float = 0.0

    def revoked(self, handovers: dict[Partition, Handover], now: float) -> None:
        if handovers:
            self.pending.update(handovers)
            self.since = now

    def assigned(self, partitions: set[Partition]) -> None:
        for partition in partitions:
            self.pending.pop(partition, None)

    def overdue(self, now: float) -> bool:
        return bool(self.pending) and now - self.since >= self.timeout_s

    def settle(self, commits: dict[Partition, int]) -> None:
        """Drop what the group's commits (of the partitions that have one) show taken up."""
        for partition, offset in commits.items():
            handover = self.pending.get(partition)
            if handover is None:
                continue
            moved = handover.committed is None or offset > handover.committed
            if moved or (handover.bound is not None and offset >= handover.bound):
                del self.pending[partition]
