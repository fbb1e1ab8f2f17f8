"""Inputs that kill their worker: found by the crashes they cause, then set aside.

A TensorFlow kernel's failed check aborts the process (SIGABRT), a bad input can make one read out
of bounds (SIGSEGV) or allocate until the OOM killer comes (SIGKILL). No exception is raised, so
the one-by-one retry that catches a failing input cannot; the worker dies, its successor reads the
same inputs again and dies too, and the partition never moves on.

So each worker writes down which inputs its pipeline may hold (``FlightRecorder``: per partition,
from the lowest not yet done to past the highest handed to the pipeline; what the batcher holds is
never decoded or predicted, so it cannot kill), in a file whose writes outlive the process (the
page cache). When a ready worker dies of a signal, its supervisor reads that file
(``Suspects.crashed``): those inputs become suspects, which every worker of that supervisor then
runs apart from the others, alone in its pipeline, the file naming only them: one at a time, or, when
a death left many (a backlog's worth, or more than a slow model runs alone in seconds), in small
groups first. A group that kills a worker makes its inputs suspects to run one at a time. A suspect
that kills a worker alone is quarantined: it goes to the dead letters (``WorkerCrashError``) and is
not run again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from consumer.offsets import Partition

SUSPECTS_FILE = "suspects.json"
#: Most suspect ranges kept per partition (the oldest go first): a crash adds one per partition.
MAX_RANGES = 100
#: How many full batches past the highest inputs handed to the pipeline a flight record claims (within
#: what was fetched), shared among the partitions with inputs pending: a write about every other batch
#: (6-15 µs each, measured) while the fetch loop reads ahead, not every one, for at most about that
#: many inputs run apart after a death that were never in flight.
CLAIM_BATCHES = 2
#: A death's suspects in one partition run one at a time if they are this many at most, and running
#: them so takes at most ``ALONE_SECONDS`` (as the worker timed its lone runs so far): one input that
#: kills then costs two deaths. More (a death in a backlog: 12,550 after a SIGKILL mid-drain at batch
#: 1024, measured; or fewer, of a model slow for one input) run in groups of about the square root of
#: their number, the fewest runs in all should one group die and its inputs then run alone; an input
#: that kills then costs three deaths. On the test MLP a lone run takes about 5 ms: 1,000 in 5 s.
ALONE_MAX = 1000
#: About what a death costs (a restart, its model loaded, its group rejoined; more on the embedded
#: broker): suspects that would take longer to run one at a time run in groups.
ALONE_SECONDS = 10.0


def flight_path(folder: str, slot: int) -> str:
    return os.path.join(folder, f"flight-{slot}.json")


def suspects_path(folder: str) -> str:
    return os.path.join(folder, SUSPECTS_FILE)


def named(partition: Partition, offset: int) -> str:
    """An input as the log lines name it: ``topic[partition]@offset``."""
    topic, number = partition
    return f"{topic}[{number}]@{offset}"


class FlightRecorder:
    """Writes which inputs a worker's pipeline may hold, so that its supervisor knows after a crash.

    ``pending()`` gives each partition's lowest and highest input fetched and not yet done; the
    batches entering the pipeline give the highest it was handed. A write is one ``pwrite`` of a few
    hundred bytes; to keep them rare, each partition is claimed past the highest handed, by its share
    of ``headroom`` but no further than the highest fetched (inputs not fetched yet were in no
    pipeline), and written again only once a batch passes that claim (the lowest offsets are then as
    of the last write: lower than now, which only widens the ranges). Read ahead, a write is due
    about every other batch; caught up, at every batch."""

    def __init__(self, path: str, headroom: int, pending: Callable[[], dict[Partition, tuple[int, int]]]) -> None:
        self.headroom, self._pending = headroom, pending
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._claimed: dict[Partition, int] = {}
        self._written = 0

    def entering(self, highest: dict[Partition, int]) -> None:
        """A batch is about to enter the pipeline, with these highest offsets per partition: call
        before it does."""
        claimed = self._claimed
        if all(claimed.get(partition, -1) >= high for partition, high in highest.items()):
            return
        pending = self._pending()
        share = max(1, self.headroom // max(1, len(pending)))
        for partition, high in highest.items():
            fetched = pending[partition][1] if partition in pending else high
            claimed[partition] = max(claimed.get(partition, -1), min(high + share, fetched))
        self._write_ranges(pending)

    def ranges(self) -> None:
        """Write the ranges the pipeline may hold (again, after ``only``)."""
        self._write_ranges(self._pending())

    def _write_ranges(self, pending: dict[Partition, tuple[int, int]]) -> None:
        # JSON written by hand (here and in ``only``), at a third of ``json.dumps``'s cost: a topic's
        # name is made of [a-zA-Z0-9._-] only
        ranges = ",".join(
            f'["{topic}",{partition},{pending[(topic, partition)][0]},{high}]'
            for (topic, partition), high in self._claimed.items()
            if (topic, partition) in pending and pending[(topic, partition)][0] <= high
        )
        self._write(f'{{"ranges":[{ranges}]}}')

    def only(self, partition: Partition, low: int, high: int) -> None:
        """The pipeline holds inputs of ``partition`` from ``low`` to ``high`` and nothing else."""
        topic, number = partition
        self._write(f'{{"only":["{topic}",{number},{low},{high}]}}')

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions released, or read again from an earlier offset: claimed afresh at their next batch."""
        for partition in partitions:
            self._claimed.pop(partition, None)

    def close(self) -> None:
        os.close(self._fd)

    def _write(self, record: str) -> None:
        # padded to the longest write yet, so that no tail of an older one is left after it
        data = record.encode().ljust(self._written)
        os.pwrite(self._fd, data, 0)
        self._written = len(data)


def read_flight(path: str) -> dict[str, Any] | None:
    """A dead worker's flight record, or None if there is none or it cannot be read (torn)."""
    try:
        with open(path, "rb") as file:
            record = json.loads(file.read() or b"null")
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and (_is_range(record.get("only")) or _all_ranges(record.get("ranges"))):
        return record
    return None


def _is_range(value: Any) -> bool:
    """``[topic, partition, low, high]``."""
    return (
        isinstance(value, list)
        and len(value) == 4
        and isinstance(value[0], str)
        and all(isinstance(number, int) for number in value[1:])
        and value[2] <= value[3]
    )


def _all_ranges(value: Any) -> bool:
    return isinstance(value, list) and all(_is_range(item) for item in value)


class Verdict(Enum):
    RUN = "run"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"


class Range(NamedTuple):
    """Suspects from ``low`` to ``high``: in flight at a death (``alone`` False), or in a group that
    was alone in a pipeline at one (True)."""

    low: int
    high: int
    alone: bool

    def group_size(self, alone_max: int = ALONE_MAX) -> int:
        """How many of them may run together, at most, if up to ``alone_max`` run one at a time."""
        count = self.high - self.low + 1
        return 1 if self.alone or count <= alone_max else math.isqrt(count - 1) + 1


@dataclass
class Suspects:
    """Inputs that were in a worker's pipeline when it died (run apart), and those that killed one
    alone (quarantined), per partition."""

    ranges: dict[Partition, list[Range]] = field(default_factory=dict)
    #: offset: how the worker that held it alone died ("killed by SIGABRT")
    quarantined: dict[Partition, dict[int, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ranges or self.quarantined)

    def death(self, partition: Partition, offset: int) -> str:
        """How the worker that held a quarantined input alone died."""
        return self.quarantined[partition][offset]

    def verdict(self, partition: Partition, offset: int) -> Verdict:
        if offset in self.quarantined.get(partition, ()):
            return Verdict.QUARANTINED
        if any(r.low <= offset <= r.high for r in self.ranges.get(partition, ())):
            return Verdict.SUSPECT
        return Verdict.RUN

    def group_size(self, partition: Partition, offset: int, alone_max: int = ALONE_MAX) -> int:
        """How many suspects a suspect may run with, at most (itself included): the least its ranges
        allow, if up to ``alone_max`` of a range run one at a time (fewer for a model slow for one input)."""
        return min(r.group_size(alone_max) for r in self.ranges[partition] if r.low <= offset <= r.high)

    def smallest_group(self, alone_max: int = ALONE_MAX) -> int:
        """The least any range allows (1 with none)."""
        return min((r.group_size(alone_max) for ranges in self.ranges.values() for r in ranges), default=1)

    def passed(self, partition: Partition, offset: float) -> None:
        """A worker read ``partition`` up to ``offset`` (``math.inf``: to its end): what is below it is
        behind it (a worker reading again from further back loads them again)."""
        left = [r for r in self.ranges.get(partition, ()) if r.high > offset]
        if left:
            self.ranges[partition] = left
        else:
            self.ranges.pop(partition, None)
        ahead = {at: death for at, death in self.quarantined.get(partition, {}).items() if at > offset}
        if ahead:
            self.quarantined[partition] = ahead
        else:
            self.quarantined.pop(partition, None)

    def of(self, partitions: set[Partition]) -> Suspects:
        """Those of ``partitions`` only (a worker's assignment)."""
        return Suspects(
            {p: r for p, r in self.ranges.items() if p in partitions},
            {p: q for p, q in self.quarantined.items() if p in partitions},
        )

    def crashed(self, flight: dict[str, Any], death: str) -> tuple[Partition, int] | int:
        """A worker died (``death``: "killed by SIGABRT") with this flight record: the input it held
        alone, now quarantined, or how many inputs became suspects (to run one at a time, if the
        pipeline held them only)."""
        if "only" in flight:
            topic, partition, low, high = flight["only"]
            if low == high:
                self.quarantined.setdefault((topic, partition), {})[low] = death
                return (topic, partition), low
            return self._add((topic, partition), Range(low, high, alone=True))
        return sum(
            self._add((topic, partition), Range(low, high, False)) for topic, partition, low, high in flight["ranges"]
        )

    def _add(self, partition: Partition, suspects: Range) -> int:
        """Keep ``suspects``; how many they are."""
        self.ranges[partition] = [*self.ranges.get(partition, []), suspects][-MAX_RANGES:]
        return suspects.high - suspects.low + 1

    def save(self, path: str) -> None:
        record = {
            "ranges": [[*p, *r] for p, ranges in self.ranges.items() for r in ranges],
            "quarantined": [[*p, offset, death] for p, by in self.quarantined.items() for offset, death in by.items()],
        }
        temporary = f"{path}.new"
        with open(temporary, "w") as file:
            json.dump(record, file)
        os.replace(temporary, path)  # a worker reading it sees the old record or the new, whole

    @classmethod
    def load(cls, path: str) -> Suspects:
        """What the supervisor saved; none if it saved nothing (no worker died of a signal)."""
        try:
            with open(path) as file:
                record = json.load(file)
        except FileNotFoundError:
            return cls()
        suspects = cls()
        for topic, partition, low, high, alone in record["ranges"]:
            suspects.ranges.setdefault((topic, partition), []).append(Range(low, high, alone))
        for topic, partition, offset, death in record["quarantined"]:
            suspects.quarantined.setdefault((topic, partition), {})[offset] = death
        return suspects
