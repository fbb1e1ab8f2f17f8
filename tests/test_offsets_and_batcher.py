"""Contiguous commit points under out-of-order acknowledgements, and batch closing rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.batcher import Batcher
from consumer.offsets import OffsetTracker

P = ("in", 0)


def test_commit_point_waits_for_the_oldest_unacknowledged_offset() -> None:
    tracker = OffsetTracker()
    for offset in range(10, 15):
        tracker.add(P, offset)
    assert tracker.committable() == {P: 10}  # where the partition starts, before anything is done
    tracker.mark_committed({P: 10})
    tracker.done(P, 12)
    tracker.done(P, 11)
    assert tracker.committable() == {}
    tracker.done(P, 10)
    assert tracker.committable() == {P: 13}
    tracker.mark_committed({P: 13})
    assert tracker.committable() == {} and tracker.in_flight() == 2


@given(st.permutations(list(range(30))), st.integers(0, 30))
def test_commit_point_is_always_below_every_unacknowledged_offset(order: list[int], acked: int) -> None:
    tracker = OffsetTracker()
    for offset in range(30):
        tracker.add(P, offset)
    for offset in order[:acked]:
        tracker.done(P, offset)
    point = tracker.committable().get(P, 0)
    assert all(o in order[:acked] for o in range(point))
    assert point == 30 or point not in order[:acked]


def test_uncommitted_counts_what_is_read_again_after_the_last_commit() -> None:
    """Done past the last commit and still in flight alike: the next owner reads them again."""
    tracker, other = OffsetTracker(), ("in", 1)
    for offset in range(10, 20):
        tracker.add(P, offset)
    tracker.add(other, 0)
    assert tracker.uncommitted() == 11
    for offset in range(10, 16):
        tracker.done(P, offset)
    assert tracker.uncommitted() == 11  # done, but not committed
    tracker.mark_committed(tracker.committable())
    assert tracker.uncommitted() == 5  # 16..19 in flight, and the other partition's one
    tracker.done_many([(P, o) for o in range(16, 20)] + [(other, 0)])
    tracker.mark_committed(tracker.committable())
    assert tracker.uncommitted() == 0


def test_a_partition_start_is_committable_once_fetched_or_found_empty() -> None:
    """So that a worker dying before its first done offset leaves its successor a place to resume
    from, not the latest offset (which skips what it had fetched and what arrived since)."""
    tracker, empty = OffsetTracker(), ("in", 1)
    assert tracker.add_many([(P, 7), (P, 8)]) == {P} and tracker.add_many([(P, 9)]) == set()
    assert tracker.start_at(empty, 42) and not tracker.start_at(empty, 43) and not tracker.start_at(P, 0)
    assert tracker.committable() == {P: 7, empty: 42}
    tracker.mark_committed(tracker.committable())
    assert tracker.committable() == {} and tracker.uncommitted() == 3
    tracker.add(empty, 42)
    tracker.done(empty, 42)
    assert tracker.committable() == {empty: 43}


def test_forgotten_partitions_ignore_late_acknowledgements() -> None:
    tracker = OffsetTracker()
    tracker.add(P, 0)
    tracker.forget([P])
    tracker.done(P, 0)
    assert tracker.committable() == {} and tracker.in_flight() == 0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_batch_closes_when_full() -> None:
    batcher = Batcher(max_batch_size=3, max_wait_ms=1000, clock=Clock())
    batcher.add([1, 2])
    assert not batcher.ready() and batcher.space() == 1
    batcher.add([3, 4])
    assert batcher.ready() and batcher.take() == ([1, 2, 3],) and len(batcher) == 1


def test_batch_closes_when_its_oldest_message_waited_max_wait() -> None:
    clock = Clock()
    batcher = Batcher(max_batch_size=100, max_wait_ms=10, clock=clock)
    assert batcher.seconds_left() is None
    batcher.add([1])
    clock.now = 0.009
    batcher.add([2])
    assert not batcher.ready()
    clock.now = 0.010
    assert batcher.ready() and batcher.take() == ([1, 2],) and batcher.seconds_left() is None


def test_a_bounded_run_is_not_done_between_a_revoke_and_the_next_assignment() -> None:
    from consumer.positions import EndOfInput

    ends = EndOfInput()
    assert not ends.finished()  # nothing assigned yet
    ends.assign({("t", 0), ("t", 1)})
    ends.reached_eof(("t", 0))
    ends.reached_eof(("t", 1))
    assert ends.finished()
    ends.revoke({("t", 0), ("t", 1)})  # an eager rebalance: everything goes first
    assert not ends.finished()
    ends.assign({("t", 1)})
    assert not ends.finished()  # its end must be reached again under the new assignment
    ends.reached_eof(("t", 1))
    assert ends.finished()
    ends.revoke({("t", 1)})
    ends.assign(set())  # more workers than partitions: an empty assignment is a finished one
    assert ends.finished()


def test_a_partition_given_up_short_of_its_end_is_awaited_until_taken_up_read_to_its_bound_or_given_back() -> None:
    """``Handovers``: a cooperative rebalance's revoke, in a bounded run."""
    from consumer.positions import Handover, Handovers

    handovers = Handovers(timeout_s=60)
    handovers.revoked({("t", 0): Handover(10, None), ("t", 1): Handover(8, 8), ("t", 2): Handover(None, None)}, now=100)
    handovers.revoked({("t", 3): Handover(7, None)}, now=130)
    handovers.settle({("t", 0): 10, ("t", 1): 8})  # t2 has no commit yet
    assert set(handovers.pending) == {("t", 0), ("t", 2), ("t", 3)}  # only t1 is done: at its bound
    handovers.settle({("t", 0): 11, ("t", 2): 0})
    assert set(handovers.pending) == {("t", 3)}  # taken up: a commit moved, a first commit made
    assert not handovers.overdue(now=189) and handovers.overdue(now=190)  # from the last revoke
    handovers.assigned({("t", 3), ("t", 4)})
    assert not handovers.pending and not handovers.overdue(now=1000)


def test_a_held_worker_says_its_end_once_committed_and_a_rebalance_takes_it_off_its_end_at_once() -> None:
    """``BoundedRun`` held (the workers of one supervisor leave together): at its end it commits,
    then says so, and never leaves by itself; a rebalance callback takes it off its end and says so
    at once, before its loop looks again."""
    from consumer.bounded import BoundedRun
    from consumer.logs import get_logger
    from consumer.positions import EndOfInput

    ends, tracker = EndOfInput(), OffsetTracker()
    run = BoundedRun(True, ends, tracker, get_logger("test"))
    run.hold = True
    said: list[object] = []
    run.on_end_reached = lambda: said.append(("end", run.at_end()))
    run.report_status = lambda: said.append(run.at_end())

    def leaves() -> bool:  # no partition given up: the consumer is not asked for anything
        return run.leaves(None, commit=lambda: said.append("commit"))  # type: ignore[arg-type]

    ends.assign({P})
    tracker.add_many([(P, 0)])
    ends.reached_eof(P)
    assert not leaves() and not run.at_end() and said == []  # offset 0 not done yet
    tracker.done_many([(P, 0)])
    assert not leaves() and said == ["commit", ("end", True)]
    assert not leaves() and said == ["commit", ("end", True)]  # said once
    run.assigned({("in", 1)})  # a rebalance callback, before the loop's next look
    assert said[-1] is False and not run.at_end()
    ends.assign({("in", 1)})
    assert not leaves() and not run.at_end()  # partition 1 not read to its end
    run.hold = False
    ends.reached_eof(("in", 1))
    assert leaves()  # alone, a worker leaves once done


def test_batches_cut_across_fetched_chunks_keep_order_weight_and_columns_together() -> None:
    batcher = Batcher(max_batch_size=4, max_wait_ms=1000, clock=Clock(), weigh=lambda chunk: sum(map(len, chunk)))
    batcher.add([b"a", b"bb", b"ccc"], [1, 2, 3])
    batcher.add([], [])
    batcher.add([b"dddd", b"e", b"ff"], [4, 5, 6])
    assert len(batcher) == 6 and batcher.bytes == 13
    assert batcher.take() == ([b"a", b"bb", b"ccc", b"dddd"], [1, 2, 3, 4]) and batcher.bytes == 3
    batcher.add([b"g"], [7])
    batcher.drop(lambda value, number: number != 5)
    assert len(batcher) == 2 and batcher.bytes == 3 and batcher.take() == ([b"ff", b"g"], [6, 7])
    assert len(batcher) == 0 and batcher.bytes == 0 and batcher.seconds_left() is None
    batcher.add([b"h", b"i"], [8, 9])
    batcher.drop(lambda *_: False)
    assert len(batcher) == 0 and batcher.bytes == 0 and batcher.seconds_left() is None


def test_a_late_commit_result_does_not_move_the_committed_offset_back() -> None:
    """An asynchronous commit's result can be served after a later, synchronous commit's: the broker
    applied them in order, so the later offset holds (else the worker would commit again, count too
    many uncommitted inputs at its stop, and rewind too far)."""
    tracker = OffsetTracker()
    tracker.add_many([(P, o) for o in range(10)])
    tracker.done_many([(P, o) for o in range(10)])
    tracker.mark_committed({P: 10})
    tracker.mark_committed({P: 4})  # the late result of an earlier commit
    assert tracker.committable() == {} and tracker.uncommitted() == 0 and tracker.rewind_points() == {P: 10}


def test_a_partition_may_be_new_to_the_topic_once_the_group_has_run_or_past_the_partitions_it_started_with() -> None:
    """Only partitions without a commit at the worker's start are looked at again at a rebalance:
    a group that had committed them all asks the broker for nothing more than before."""
    from consumer.positions import GroupHistory

    first_run = GroupHistory(committed=frozenset(), partitions=4)
    assert [first_run.may_be_added(p) for p in (0, 3, 4, 7)] == [False, False, True, True]
    has_run = GroupHistory(committed=frozenset({0, 1, 2}), partitions=4)
    assert [has_run.may_be_added(p) for p in (0, 2, 3, 4)] == [False, False, True, True]
