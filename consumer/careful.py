"""The fetch loop's side of ``consumer.crashes``: what a worker does about inputs that kill workers.

``CrashGuard`` keeps the worker's flight record up to date as batches enter the pipeline. After a
worker of its supervisor died, it runs the suspects of the worker's partitions through the
pipeline apart from every other input (one at a time, or in small groups of one partition's, as
their ranges allow), and sends the quarantined ones to the dead letters without running them;
every other input is batched as usual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from consumer.batcher import Batcher
from consumer.crashes import (
    ALONE_MAX,
    ALONE_SECONDS,
    CLAIM_BATCHES,
    FlightRecorder,
    Suspects,
    Verdict,
    flight_path,
    named,
    suspects_path,
)
from consumer.dead_lettering import DeadLetters
from consumer.delivery import wait_until
from consumer.errors import WorkerCrashError
from consumer.offsets import OffsetTracker, Partition
from consumer.pipeline import Pipeline
from consumer.timing import moving_average

#: How often a suspect's run checks whether the pipeline is through.
IDLE_CHECK_SECONDS = 0.001
#: Runs of suspects per turn of the fetch loop, at most: so that it still polls every second or so
#: with a model that takes tens of ms for one input.
RUNS_PER_TURN = 16


@dataclass(frozen=True)
class Feed:
    """What the guard uses of its worker's fetch loop."""

    batcher: Batcher
    pipeline: Pipeline
    dead_letters: DeadLetters
    #: hand every batch in the batcher to the pipeline
    flush: Callable[[], None]
    #: the outputs cannot be delivered, or the predict thread died: the loop is about to raise
    failed: Callable[[], bool]
    stopping: Callable[[], bool]
    #: what the loop does between suspects (its periodic commit)
    between: Callable[[], None]


class CrashGuard:
    """Records what a worker's pipeline may hold; past a death, runs suspects alone and sets
    quarantined inputs aside."""

    def __init__(self, folder: str, slot: int, tracker: OffsetTracker, feed: Feed, log: Any) -> None:
        headroom = CLAIM_BATCHES * feed.batcher.max_batch_size
        self.flight = FlightRecorder(flight_path(folder, slot), headroom, tracker.pending_ranges)
        self.feed, self.log = feed, log
        self._suspects_file = suspects_path(folder)
        #: the deaths' suspects and quarantined inputs in the worker's partitions
        self.suspects = Suspects()
        self._assigned: set[Partition] = set()
        self._ran_alone, self._groups, self._in_groups, self._since = 0, 0, 0, 0.0
        #: how long a suspect's run alone takes, on average (0 before the first)
        self._lone_run_seconds = 0.0

    def entering(self, coords: list[tuple[Partition, int]]) -> None:
        """A batch is about to enter the pipeline: its inputs' coordinates, each partition's in order."""
        self.flight.entering(dict(coords))  # each partition's last: its highest

    def release(self, partitions: Collection[Partition]) -> None:
        """Partitions taken from the worker."""
        self.flight.forget(partitions)
        self._assigned.difference_update(partitions)
        self.suspects = self.suspects.of(self._assigned)

    def rewound(self, partitions: Collection[Partition]) -> None:
        """The worker reads these partitions again from their last commits: what it had passed in them
        may come again."""
        self.flight.forget(partitions)
        self.load(self._assigned)

    def load(self, assigned: set[Partition]) -> None:
        """What workers of the supervisor died with in the ``assigned`` partitions, as it stands now
        (an assignment may be the one a death caused). The worker's view drops what it reads past."""
        self._assigned = set(assigned)
        self.suspects = Suspects.load(self._suspects_file).of(assigned)
        self._ran_alone, self._groups, self._in_groups, self._since = 0, 0, 0, time.monotonic()
        if self.suspects.ranges:  # quarantined inputs alone are said when met (and are mostly behind)
            self.log.warning(
                "a worker died with inputs in flight: they run apart, and those that killed a worker alone go to "
                "the dead letters",
                suspect_ranges=sum(map(len, self.suspects.ranges.values())),
                quarantined=sum(map(len, self.suspects.quarantined.values())),
            )

    @property
    def alone_max(self) -> int:
        """How many suspects of a range run one at a time, at most: as many as run so in ``ALONE_SECONDS``
        at the pace of the lone runs so far (``ALONE_MAX`` at most, and before the first has run)."""
        if not self._lone_run_seconds:
            return ALONE_MAX
        return max(1, min(ALONE_MAX, int(ALONE_SECONDS / self._lone_run_seconds)))

    def chunk(self) -> int:
        """How many inputs to fetch in one turn of the loop while there are suspects."""
        return RUNS_PER_TURN * min(self.suspects.smallest_group(self.alone_max), self.feed.batcher.max_batch_size)

    def add(self, messages: list[Message], coords: list[tuple[Partition, int]], timestamps: list[int]) -> None:
        """Fetched inputs, in order: suspects run apart, quarantined inputs go to the dead letters, the
        rest to the batcher. Stopping, suspects are batched too."""
        batcher, start, index = self.feed.batcher, 0, 0
        while index < len(coords):
            verdict = self.suspects.verdict(*coords[index])
            if verdict is Verdict.RUN or (verdict is Verdict.SUSPECT and self.feed.stopping()):
                index += 1
                continue
            batcher.add(messages[start:index], coords[start:index], timestamps[start:index])
            if verdict is Verdict.QUARANTINED:
                self._set_aside(messages[index], coords[index])
                start = index = index + 1
                continue
            start, index = index, self._group_end(coords, index)
            self._run_apart(messages[start:index], coords[start:index], timestamps[start:index])
            start = index
        batcher.add(messages[start:], coords[start:], timestamps[start:])
        self._passed(dict(coords))

    def _group_end(self, coords: list[tuple[Partition, int]], first: int) -> int:
        """Where the group of suspects that starts at ``first`` ends: the suspects of its partition that
        follow it, at higher offsets (a gap, as compaction leaves, does not cut it), as many as every
        one's ranges allow."""
        partition, alone_max = coords[first][0], self.alone_max
        size = min(self.suspects.group_size(*coords[first], alone_max), self.feed.batcher.max_batch_size)
        end = first + 1
        while (
            end < len(coords)
            and end - first < size
            and coords[end][0] == partition
            and coords[end][1] > coords[end - 1][1]
            and self.suspects.verdict(*coords[end]) is Verdict.SUSPECT
            and self.suspects.group_size(*coords[end], alone_max) >= size
        ):
            end += 1
        return end

    def reached_end(self, partition: Partition) -> None:
        """At a partition's end every suspect of it has run: what comes after it was never fetched by
        the worker that died (its ranges claim past what it handed to its pipeline)."""
        if self.suspects:
            self._passed({partition: math.inf})

    def _passed(self, reached: dict[Partition, float]) -> None:
        suspected = bool(self.suspects.ranges)
        for partition, offset in reached.items():
            self.suspects.passed(partition, offset)
        if suspected and not self.suspects.ranges:
            self.log.info(
                "every input a worker died with has run",
                ran_alone=self._ran_alone,
                groups=self._groups,
                in_groups=self._in_groups,
                alone_max=self.alone_max,
                seconds=round(time.monotonic() - self._since, 1),
            )

    def _run_apart(self, messages: list[Message], coords: list[tuple[Partition, int]], timestamps: list[int]) -> None:
        """Once what came before them is through, suspects of one partition go through the pipeline
        alone, the flight record naming them only. A failure meanwhile leaves them undone, to be read
        again."""
        feed = self.feed
        feed.flush()
        if not self._wait_until_through():
            return
        (partition, low), high = coords[0], coords[-1][1]
        self.flight.only(partition, low, high)
        started = time.monotonic()
        feed.pipeline.put((messages, coords, timestamps), started)
        through = self._wait_until_through()
        if len(coords) > 1:
            self._groups, self._in_groups = self._groups + 1, self._in_groups + len(coords)
        else:
            self._ran_alone += 1
            if through:  # a slow model runs fewer alone (the rest of its range, and later deaths')
                self._lone_run_seconds = moving_average(self._lone_run_seconds, time.monotonic() - started)
        self.flight.ranges()
        feed.between()

    def _wait_until_through(self) -> bool:
        """Wait until every batch put in the pipeline is through; False if the loop is failing."""
        feed = self.feed
        wait_until(lambda: feed.pipeline.idle() or feed.failed(), math.inf, lambda: time.sleep(IDLE_CHECK_SECONDS))
        return not feed.failed()

    def _set_aside(self, message: Message, coords: tuple[Partition, int]) -> None:
        """A quarantined input: to the dead letters, without running it."""
        death = self.suspects.death(*coords)
        self.log.warning("input set aside: it killed a worker alone", input=named(*coords), death=death)
        error = WorkerCrashError(
            f"a worker was {death} twice with this input in its pipeline, the second time with it alone: "
            "set aside without running it again"
        )
        self.feed.dead_letters.send(message, error)
