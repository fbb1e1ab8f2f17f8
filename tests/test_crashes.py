"""What a worker's flight record says after it died, and what its supervisor makes of it."""

from __future__ import annotations

import math
from pathlib import Path

from consumer.crashes import MAX_RANGES, FlightRecorder, Suspects, Verdict, read_flight

A, B = ("in", 0), ("in", 1)


Pending = dict[tuple[str, int], tuple[int, int]]


def _recorder(path: Path, pending: Pending) -> FlightRecorder:
    return FlightRecorder(str(path), headroom=10, pending=lambda: dict(pending))


def test_the_flight_record_covers_every_fetched_input_not_yet_done(tmp_path: Path) -> None:
    path, pending = tmp_path / "flight", {A: (5, 7), B: (0, 0)}
    _recorder(path, pending).entering()  # each of the two claimed past its highest by half the headroom
    assert read_flight(str(path)) == {"ranges": [["in", 0, 5, 12], ["in", 1, 0, 5]]}


def test_batches_within_the_claimed_headroom_write_nothing_and_one_past_it_writes_again(tmp_path: Path) -> None:
    path, pending = tmp_path / "flight", {A: (0, 0)}
    recorder = _recorder(path, pending)
    recorder.entering()
    pending[A] = (8, 10)
    recorder.entering()  # within 0 + 10: the record still says 0-10
    assert read_flight(str(path)) == {"ranges": [["in", 0, 0, 10]]}
    pending[A] = (8, 11)
    recorder.entering()
    assert read_flight(str(path)) == {"ranges": [["in", 0, 8, 21]]}


def test_a_partition_with_nothing_pending_is_left_out_and_a_forgotten_one_is_claimed_afresh(tmp_path: Path) -> None:
    path, pending = tmp_path / "flight", {A: (3, 3), B: (7, 7)}
    recorder = _recorder(path, pending)
    recorder.entering()
    del pending[B]  # B's inputs all done
    recorder.ranges()
    assert read_flight(str(path)) == {"ranges": [["in", 0, 3, 8]]}
    recorder.forget([A])
    pending[A] = (1, 1)  # read again from an earlier commit
    recorder.entering()
    assert read_flight(str(path)) == {"ranges": [["in", 0, 1, 11]]}


def test_a_shorter_record_after_a_longer_one_reads_whole(tmp_path: Path) -> None:
    path = tmp_path / "flight"
    recorder = _recorder(path, {("a-long-topic-name", p): (0, 0) for p in range(20)})
    recorder.entering()
    recorder.alone(A, 42)
    assert read_flight(str(path)) == {"alone": ["in", 0, 42]}
    recorder.close()


def test_a_missing_or_torn_flight_record_reads_as_none(tmp_path: Path) -> None:
    assert read_flight(str(tmp_path / "none")) is None
    (tmp_path / "torn").write_bytes(b'{"ranges": [["in", 0, 1')
    assert read_flight(str(tmp_path / "torn")) is None
    (tmp_path / "empty").write_bytes(b"")
    assert read_flight(str(tmp_path / "empty")) is None
    for other in (b'{"alone": ["in", 0]}', b'{"ranges": [["in", "0", 1, 2]]}', b"[1]", b'{"other": 1}'):
        (tmp_path / "other").write_bytes(other)
        assert read_flight(str(tmp_path / "other")) is None, other


def test_inputs_in_flight_at_a_death_run_alone_and_one_that_dies_alone_is_quarantined(tmp_path: Path) -> None:
    suspects = Suspects()
    assert not suspects and suspects.verdict(A, 5) is Verdict.RUN
    assert suspects.crashed({"ranges": [["in", 0, 5, 9]]}, "killed by SIGABRT") == 5
    assert [suspects.verdict(A, o) for o in (4, 5, 9, 10)] == [Verdict.RUN, Verdict.ALONE, Verdict.ALONE, Verdict.RUN]
    assert suspects.verdict(B, 5) is Verdict.RUN
    assert suspects.crashed({"alone": ["in", 0, 7]}, "killed by SIGSEGV") == (A, 7)
    assert suspects.verdict(A, 7) is Verdict.QUARANTINED and suspects.death(A, 7) == "killed by SIGSEGV"
    path = str(tmp_path / "suspects.json")
    suspects.save(path)
    assert Suspects.load(path) == suspects
    assert not Suspects.load(str(tmp_path / "never-saved.json"))


def test_what_a_worker_read_past_leaves_its_view(tmp_path: Path) -> None:
    suspects = Suspects()
    suspects.crashed({"ranges": [["in", 0, 0, 9], ["in", 1, 0, 3]]}, "killed by SIGKILL")
    suspects.crashed({"ranges": [["in", 0, 20, 29]]}, "killed by SIGKILL")
    suspects.crashed({"alone": ["in", 0, 4]}, "killed by SIGKILL")
    suspects.passed(A, 3)
    assert suspects.verdict(A, 4) is Verdict.QUARANTINED
    suspects.passed(A, 9)
    assert suspects.ranges == {A: [(20, 29)], B: [(0, 3)]} and suspects.quarantined == {}
    assert suspects.of({B}) == Suspects({B: [(0, 3)]}, {})
    suspects.passed(A, 29)
    suspects.passed(B, math.inf)  # its end
    assert not suspects


def test_each_partition_keeps_its_latest_ranges_only() -> None:
    suspects = Suspects()
    for death in range(MAX_RANGES + 5):
        suspects.crashed({"ranges": [["in", 0, death * 10, death * 10 + 1]]}, "killed by SIGKILL")
    assert len(suspects.ranges[A]) == MAX_RANGES and suspects.ranges[A][0] == (50, 51)
