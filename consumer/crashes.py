"""Inputs that kill their worker: found by the crashes they cause, then set aside.

A TensorFlow kernel's failed check aborts the process (SIGABRT), a bad input can make one read out
of bounds (SIGSEGV) or allocate until the OOM killer comes (SIGKILL). No exception is raised, so
the one-by-one retry that catches a failing input cannot; the worker dies, its successor reads the
same inputs again and dies too, and the partition never moves on.

So each worker writes down which inputs its pipeline may hold (``FlightRecorder``: per partition,
from the lowest not yet done to past the highest fetched), in a file whose writes outlive the
process (the page cache). When a ready worker dies of a signal, its supervisor reads that file
(``Suspects.crashed``): those inputs become suspects, which every worker of that supervisor then
runs one at a time, alone in its pipeline, the file naming only that input. A suspect that kills a
worker alone is quarantined: it goes to the dead letters (``WorkerCrashError``) and is not run again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from consumer.offsets import Partition

SUSPECTS_FILE = "suspects.json"
#: Most suspect ranges kept per partition (the oldest go first): a crash adds one per partition.
MAX_RANGES = 100
#: How many full batches past the highest fetched inputs a flight record claims, shared among the
#: partitions with inputs pending: a write about every other batch (6-15 µs each, measured), not
#: every one, for at most about that many inputs run alone after a death that were never in flight.
CLAIM_BATCHES = 2


def flight_path(folder: str, slot: int) -> str:
    return os.path.join(folder, f"flight-{slot}.json")


def suspects_path(folder: str) -> str:
    return os.path.join(folder, SUSPECTS_FILE)


class FlightRecorder:
    """Writes which inputs a worker's pipeline may hold, so that its supervisor knows after a crash.

    ``pending()`` gives each partition's lowest and highest input fetched and not yet done. A write
    is one ``pwrite`` of a few hundred bytes; to keep them rare, each partition is claimed past its
    highest, by its share of ``headroom``, and written again only once a batch passes that claim (the
    lowest offsets are then as of the last write: lower than now, which only widens the ranges)."""

    def __init__(self, path: str, headroom: int, pending: Callable[[], dict[Partition, tuple[int, int]]]) -> None:
        self.headroom, self._pending = headroom, pending
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._claimed: dict[Partition, int] = {}
        self._written = 0

    def entering(self) -> None:
        """A batch is about to enter the pipeline: call before it does."""
        pending, claimed = self._pending(), self._claimed
        if all(claimed.get(partition, -1) >= high for partition, (_, high) in pending.items()):
            return
        share = max(1, self.headroom // len(pending))
        for partition, (_, high) in pending.items():
            claimed[partition] = max(claimed.get(partition, -1), high + share)
        self._write_ranges(pending)

    def ranges(self) -> None:
        """Write the ranges the pipeline may hold (again, after ``alone``)."""
        self._write_ranges(self._pending())

    def _write_ranges(self, pending: dict[Partition, tuple[int, int]]) -> None:
        # JSON written by hand (here and in ``alone``), at a third of ``json.dumps``'s cost: a topic's
        # name is made of [a-zA-Z0-9._-] only
        ranges = ",".join(
            f'["{topic}",{partition},{pending[(topic, partition)][0]},{high}]'
            for (topic, partition), high in self._claimed.items()
            if (topic, partition) in pending
        )
        self._write(f'{{"ranges":[{ranges}]}}')

    def alone(self, partition: Partition, offset: int) -> None:
        """The pipeline holds this one input and nothing else."""
        topic, number = partition
        self._write(f'{{"alone":["{topic}",{number},{offset}]}}')

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
    if isinstance(record, dict) and (_coordinates(record.get("alone"), 3) or _all_ranges(record.get("ranges"))):
        return record
    return None


def _coordinates(value: Any, length: int) -> bool:
    """``[topic, partition, offset...]``, ``length`` long."""
    return (
        isinstance(value, list)
        and len(value) == length
        and isinstance(value[0], str)
        and all(isinstance(number, int) for number in value[1:])
    )


def _all_ranges(value: Any) -> bool:
    return isinstance(value, list) and all(_coordinates(item, 4) for item in value)


class Verdict(Enum):
    RUN = "run"
    ALONE = "alone"
    QUARANTINED = "quarantined"


@dataclass
class Suspects:
    """Inputs that were in a worker's pipeline when it died (run alone), and those that killed one
    alone (quarantined), per partition."""

    ranges: dict[Partition, list[tuple[int, int]]] = field(default_factory=dict)
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
        if any(low <= offset <= high for low, high in self.ranges.get(partition, ())):
            return Verdict.ALONE
        return Verdict.RUN

    def passed(self, partition: Partition, offset: float) -> None:
        """A worker read ``partition`` up to ``offset`` (``math.inf``: to its end): what is below it is
        behind it (a worker reading again from further back loads them again)."""
        left = [(low, high) for low, high in self.ranges.get(partition, ()) if high > offset]
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
        alone, now quarantined, or how many inputs became suspects."""
        if "alone" in flight:
            topic, partition, offset = flight["alone"]
            self.quarantined.setdefault((topic, partition), {})[offset] = death
            return (topic, partition), offset
        count = 0
        for topic, partition, low, high in flight.get("ranges", ()):
            self.ranges[(topic, partition)] = [*self.ranges.get((topic, partition), []), (low, high)][-MAX_RANGES:]
            count += high - low + 1
        return count

    def save(self, path: str) -> None:
        record = {
            "ranges": [[*p, low, high] for p, ranges in self.ranges.items() for low, high in ranges],
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
        for topic, partition, low, high in record["ranges"]:
            suspects.ranges.setdefault((topic, partition), []).append((low, high))
        for topic, partition, offset, death in record["quarantined"]:
            suspects.quarantined.setdefault((topic, partition), {})[offset] = death
        return suspects
