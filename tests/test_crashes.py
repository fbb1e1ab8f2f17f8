"""What a worker's flight record says after it died, what its supervisor makes of it, and how its
successors run the suspects."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import structlog

from consumer.batcher import Batcher
from consumer.careful import CrashGuard, Feed
from consumer.crashes import (
    ALONE_MAX,
    ALONE_SECONDS,
    MAX_RANGES,
    FlightRecorder,
    Range,
    Suspects,
    Verdict,
    read_flight,
    suspects_path,
)
from consumer.offsets import OffsetTracker

A, B = ("in", 0), ("in", 1)


Pending = dict[tuple[str, int], tuple[int, int]]


def _recorder(path: Path, pending: Pending) -> FlightRecorder:
    return FlightRecorder(str(path), headroom=10, pending=lambda: dict(pending))


def test_the_flight_record_covers_every_input_handed_to_the_pipeline_not_yet_done(tmp_path: Path) -> None:
    path, pending = tmp_path / "flight", {A: (5, 20), B: (0, 9)}
    _recorder(path, pending).entering({A: 7, B: 0})  # each of the two claimed past its highest by half the headroom
    assert read_flight(str(path)) == {"ranges": [["in", 0, 5, 12], ["in", 1, 0, 5]]}


def test_a_claim_stops_at_the_highest_input_fetched(tmp_path: Path) -> None:
    """Inputs not fetched yet were in no pipeline: caught up, the record names what was fetched only
    (and a batch past it writes again)."""
    path, pending = tmp_path / "flight", {A: (5, 8)}
    recorder = _recorder(path, pending)
    recorder.entering({A: 8})
    assert read_flight(str(path)) == {"ranges": [["in", 0, 5, 8]]}
    pending[A] = (5, 9)
    recorder.entering({A: 9})
    assert read_flight(str(path)) == {"ranges": [["in", 0, 5, 9]]}


def test_inputs_fetched_but_never_handed_to_the_pipeline_are_left_out(tmp_path: Path) -> None:
    """The batcher's inputs are never decoded or predicted: they cannot kill a worker. Read ahead of
    a slow model, they were most of a death's suspects (hundreds, each run apart)."""
    path, pending = tmp_path / "flight", {A: (0, 900), B: (40, 60)}  # B's in the batcher only
    recorder = _recorder(path, pending)
    recorder.entering({A: 7})
    assert read_flight(str(path)) == {"ranges": [["in", 0, 0, 12]]}
    pending[A] = (20, 900)  # every input of A handed to the pipeline is done: the batcher holds the rest
    recorder.ranges()
    assert read_flight(str(path)) == {"ranges": []}


def test_batches_within_the_claimed_headroom_write_nothing_and_one_past_it_writes_again(tmp_path: Path) -> None:
    path, pending = tmp_path / "flight", {A: (0, 30)}
    recorder = _recorder(path, pending)
    recorder.entering({A: 0})
    pending[A] = (8, 30)
    recorder.entering({A: 10})  # within 0 + 10: the record still says 0-10
    assert read_flight(str(path)) == {"ranges": [["in", 0, 0, 10]]}
    recorder.entering({A: 11})
    assert read_flight(str(path)) == {"ranges": [["in", 0, 8, 21]]}


def test_a_partition_with_nothing_pending_is_left_out_and_a_forgotten_one_is_claimed_afresh(tmp_path: Path) -> None:
    path, pending = tmp_path / "flight", {A: (3, 20), B: (7, 20)}
    recorder = _recorder(path, pending)
    recorder.entering({A: 3, B: 7})
    del pending[B]  # B's inputs all done
    recorder.ranges()
    assert read_flight(str(path)) == {"ranges": [["in", 0, 3, 8]]}
    recorder.forget([A])
    pending[A] = (1, 20)  # read again from an earlier commit
    recorder.entering({A: 1})
    assert read_flight(str(path)) == {"ranges": [["in", 0, 1, 11]]}


def test_a_shorter_record_after_a_longer_one_reads_whole(tmp_path: Path) -> None:
    path = tmp_path / "flight"
    pending = {("a-long-topic-name", p): (0, 0) for p in range(20)}
    recorder = _recorder(path, pending)
    recorder.entering(dict.fromkeys(pending, 0))
    recorder.only(A, 42, 50)
    assert read_flight(str(path)) == {"only": ["in", 0, 42, 50]}
    recorder.close()


def test_a_missing_or_torn_flight_record_reads_as_none(tmp_path: Path) -> None:
    assert read_flight(str(tmp_path / "none")) is None
    (tmp_path / "torn").write_bytes(b'{"ranges": [["in", 0, 1')
    assert read_flight(str(tmp_path / "torn")) is None
    (tmp_path / "empty").write_bytes(b"")
    assert read_flight(str(tmp_path / "empty")) is None
    for other in (b'{"only": ["in", 0, 1]}', b'{"only": ["in", 0, 2, 1]}', b'{"ranges": [["in", "0", 1, 2]]}', b"[1]"):
        (tmp_path / "other").write_bytes(other)
        assert read_flight(str(tmp_path / "other")) is None, other


def test_inputs_in_flight_at_a_death_run_alone_and_one_that_dies_alone_is_quarantined(tmp_path: Path) -> None:
    suspects = Suspects()
    assert not suspects and suspects.verdict(A, 5) is Verdict.RUN
    assert suspects.crashed({"ranges": [["in", 0, 5, 9]]}, "killed by SIGABRT") == 5
    run, suspect = Verdict.RUN, Verdict.SUSPECT
    assert [suspects.verdict(A, o) for o in (4, 5, 9, 10)] == [run, suspect, suspect, run]
    assert suspects.verdict(B, 5) is Verdict.RUN and suspects.group_size(A, 5) == 1
    assert suspects.crashed({"only": ["in", 0, 7, 7]}, "killed by SIGSEGV") == (A, 7)
    assert suspects.verdict(A, 7) is Verdict.QUARANTINED and suspects.death(A, 7) == "killed by SIGSEGV"
    path = str(tmp_path / "suspects.json")
    suspects.save(path)
    assert Suspects.load(path) == suspects
    assert not Suspects.load(str(tmp_path / "never-saved.json"))


def test_what_a_worker_read_past_leaves_its_view(tmp_path: Path) -> None:
    suspects = Suspects()
    suspects.crashed({"ranges": [["in", 0, 0, 9], ["in", 1, 0, 3]]}, "killed by SIGKILL")
    suspects.crashed({"ranges": [["in", 0, 20, 29]]}, "killed by SIGKILL")
    suspects.crashed({"only": ["in", 0, 4, 4]}, "killed by SIGKILL")
    suspects.passed(A, 3)
    assert suspects.verdict(A, 4) is Verdict.QUARANTINED
    suspects.passed(A, 9)
    assert suspects.ranges == {A: [Range(20, 29, False)], B: [Range(0, 3, False)]} and suspects.quarantined == {}
    assert suspects.of({B}) == Suspects({B: [Range(0, 3, False)]}, {})
    suspects.passed(A, 29)
    suspects.passed(B, math.inf)  # its end
    assert not suspects


def test_each_partition_keeps_its_latest_ranges_only() -> None:
    suspects = Suspects()
    for death in range(MAX_RANGES + 5):
        suspects.crashed({"ranges": [["in", 0, death * 10, death * 10 + 1]]}, "killed by SIGKILL")
    assert len(suspects.ranges[A]) == MAX_RANGES and suspects.ranges[A][0] == Range(50, 51, False)


def test_a_backlog_of_suspects_runs_in_groups_and_a_group_that_dies_runs_one_at_a_time(tmp_path: Path) -> None:
    """Up to ALONE_MAX suspects in a partition run one at a time; a death in a backlog leaves far more,
    which run in groups of about the square root of their number. A group alone in a pipeline that
    died makes its inputs suspects to run one at a time, where they overlap the first ones too."""
    suspects = Suspects()
    suspects.crashed({"ranges": [["in", 0, 0, ALONE_MAX - 1], ["in", 1, 0, 12_549]]}, "killed by SIGKILL")
    assert suspects.group_size(A, 0) == 1 and suspects.group_size(B, 0) == 113  # 112² < 12,550 <= 113²
    assert suspects.smallest_group() == 1 and suspects.of({B}).smallest_group() == 113
    assert suspects.crashed({"only": ["in", 1, 226, 338]}, "killed by SIGABRT") == 113
    assert [suspects.group_size(B, o) for o in (225, 226, 338, 339)] == [113, 1, 1, 113]
    path = str(tmp_path / "suspects.json")
    suspects.save(path)
    assert Suspects.load(path) == suspects
    suspects.crashed({"only": ["in", 1, 300, 300]}, "killed by SIGABRT")
    assert suspects.verdict(B, 300) is Verdict.QUARANTINED and suspects.verdict(B, 301) is Verdict.SUSPECT


def test_a_model_slow_for_one_input_runs_fewer_suspects_one_at_a_time() -> None:
    """Suspects run alone only while that takes at most ALONE_SECONDS; past it, in groups."""
    suspects = Suspects()
    suspects.crashed({"ranges": [["in", 0, 0, 299]]}, "killed by SIGKILL")
    assert suspects.group_size(A, 0) == 1  # 300 <= ALONE_MAX
    alone_max = int(ALONE_SECONDS / 0.1)  # 100 at 100 ms each
    assert suspects.group_size(A, 0, alone_max) == 18 and suspects.smallest_group(alone_max) == 18  # 17² < 300 <= 18²


class _Message:
    def __init__(self, partition: tuple[str, int], offset: int) -> None:
        self._at = partition, offset

    def topic(self) -> str:
        return self._at[0][0]

    def partition(self) -> int:
        return self._at[0][1]

    def offset(self) -> int:
        return self._at[1]


class _Through:
    """A pipeline through at once, and dead letters kept: what a guard handed them, in order, with
    what the flight record said while each run was in the pipeline."""

    def __init__(self, flight: Path, run_seconds: float = 0.0) -> None:
        self.flight, self.run_seconds, self.handed = flight, run_seconds, []  # type: list[tuple[str, Any, Any]]

    def put(self, batch: tuple[list[Any], ...], opened_at: float) -> None:
        self.handed.append(("run", [m.offset() for m in batch[0]], read_flight(str(self.flight))))
        time.sleep(self.run_seconds)

    def idle(self) -> bool:
        return True

    def send(self, message: _Message, error: Exception) -> None:
        self.handed.append(("dead letter", message.offset(), type(error).__name__))


def _guard(folder: Path, through: _Through) -> tuple[CrashGuard, Callable[[], None]]:
    """A guard over a real batcher (batches of 64 at most) and ``through``; and its flush."""
    batcher = Batcher(max_batch_size=64, max_wait_ms=10)

    def flush() -> None:
        if len(batcher):
            through.handed.append(("batch", [m.offset() for m in batcher.take()[0]], None))

    feed = Feed(batcher, cast(Any, through), cast(Any, through), flush, lambda: False, lambda: False, lambda: None)
    return CrashGuard(str(folder), 0, OffsetTracker(), feed, structlog.get_logger()), flush


def run(partition: tuple[str, int], low: int, high: int) -> tuple[str, list[int], dict[str, Any]]:
    """A run of suspects as ``_Through`` records it."""
    return "run", list(range(low, high + 1)), {"only": [*partition, low, high]}


def test_a_guard_runs_suspects_apart_in_groups_of_one_partition_and_batches_the_rest(tmp_path: Path) -> None:
    """Non-suspects go to the batcher, each suspect run starts once what came before it is through,
    a group holds one partition's consecutive suspects up to its ranges' size and the batch size, and
    the flight record names exactly the run in the pipeline."""
    suspects = Suspects()  # A: 1,600 suspects, groups of 40; B: two that a group died with, one at a time
    suspects.crashed({"ranges": [["in", 0, 0, 1599]]}, "killed by SIGKILL")
    suspects.crashed({"only": ["in", 1, 10, 11]}, "killed by SIGKILL")
    suspects.crashed({"only": ["in", 0, 50, 50]}, "killed by SIGSEGV")
    suspects.save(suspects_path(str(tmp_path)))
    through = _Through(tmp_path / "flight-0.json")
    guard, flush = _guard(tmp_path, through)
    guard.load({A, B})
    assert guard.chunk() == 16  # B's run one at a time
    coords = [(A, o) for o in range(0, 45)] + [(B, o) for o in range(9, 13)] + [(A, o) for o in range(45, 100)]
    coords += [(A, o) for o in range(1590, 1600)] + [(A, 1595), (A, 1596), (A, 1600), (A, 1601)]  # read again
    guard.add([_Message(*c) for c in coords], coords, [0] * len(coords))
    flush()

    assert through.handed == [
        run(A, 0, 39),
        run(A, 40, 44),  # B's inputs next: the group is cut
        ("batch", [9], None),
        run(B, 10, 10),
        run(B, 11, 11),
        ("batch", [12], None),
        run(A, 45, 49),
        ("dead letter", 50, "WorkerCrashError"),
        run(A, 51, 90),
        # a gap in offsets does not cut a group (compaction leaves them), a lower offset does
        ("run", [*range(91, 100), *range(1590, 1600)], {"only": [*A, 91, 1599]}),
        run(A, 1595, 1596),
        ("batch", [1600, 1601], None),
    ]
    assert not guard.suspects  # read past: the plain path again


def test_a_guard_that_timed_a_slow_lone_run_runs_the_rest_of_its_range_in_groups(tmp_path: Path) -> None:
    """300 suspects run alone at first (at most ALONE_MAX); one run of 50 ms or more says they would take
    over ALONE_SECONDS so: the rest go in groups of about the square root of their number."""
    Suspects(ranges={A: [Range(0, 299, False)]}).save(suspects_path(str(tmp_path)))
    through = _Through(tmp_path / "flight-0.json", run_seconds=0.05)
    guard, _ = _guard(tmp_path, through)
    guard.load({A})
    assert guard.chunk() == 16
    coords = [(A, o) for o in range(0, 45)]
    guard.add([_Message(*c) for c in coords], coords, [0] * len(coords))
    assert through.handed == [run(A, 0, 0), run(A, 1, 18), run(A, 19, 36), run(A, 37, 44)]
    assert guard.alone_max <= ALONE_SECONDS / 0.05 and guard.chunk() == 16 * 18
    guard.load({A})  # read again (a rewind): what it timed holds for the next death's suspects too
    assert guard.suspects.group_size(A, 0, guard.alone_max) == 18
