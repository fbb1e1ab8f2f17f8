"""``consumer.halves.in_halves``: the rows of a batch that failed together, found by halving."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from consumer.halves import in_halves

Run = Callable[[list[int]], str | Exception]


def counted(fails: set[int] | None = None, together: set[int] | None = None) -> tuple[list[int], Run]:
    """A run that fails on any part holding a row of ``fails``, or all of ``together``; and its calls."""
    calls: list[int] = []

    def run(rows: list[int]) -> str | Exception:
        calls.append(len(rows))
        if (fails and fails & set(rows)) or (together and together <= set(rows)):
            return ValueError(rows)
        return f"ok {rows}"

    return calls, run


CASES = st.integers(1, 80).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1)))


@given(CASES)
def test_the_rows_that_fail_alone_are_found_and_the_others_come_back_in_row_order(case: tuple[int, set[int]]) -> None:
    n, bad = case
    calls, run = counted(bad)
    parts = list(in_halves(list(range(n)), run, run))
    assert [row for rows, _ in parts for row in rows] == list(range(n))
    assert [rows for rows, result in parts if isinstance(result, Exception)] == [[row] for row in sorted(bad)]
    assert all(result == f"ok {rows}" for rows, result in parts if not isinstance(result, Exception))
    assert len(calls) <= max(1, 2 * n - 2)  # never more than every part of the halving run once


def test_one_failing_row_takes_a_run_a_level_or_two_and_every_row_failing_takes_2n_minus_2() -> None:
    for bad, runs in (({1023}, 11), ({0}, 20), ({700}, 14)):
        calls, run = counted(bad)
        list(in_halves(list(range(1024)), run, run))
        assert len(calls) == runs, bad
    calls, run = counted(set(range(1024)))
    list(in_halves(list(range(1024)), run, run))
    assert len(calls) == 2 * 1024 - 2


def test_rows_that_fail_only_together_each_pass_alone() -> None:
    """A half inferred to fail (its rows failed with the other half, which passed) is halved, not
    trusted: rows that fail only together pass alone, and nothing is a dead letter."""
    _, run = counted(together={3, 60})
    parts = list(in_halves(list(range(64)), run, run))
    assert not [rows for rows, result in parts if isinstance(result, Exception)]
    assert [row for rows, _ in parts for row in rows] == list(range(64))


def test_no_rows_no_parts_and_a_single_row_is_run_alone() -> None:
    alone: list[list[int]] = []
    assert list(in_halves([], lambda rows: "whole", lambda rows: "alone")) == []
    assert list(in_halves([5], lambda rows: "whole", lambda rows: alone.append(rows) or "alone")) == [([5], "alone")]
    assert alone == [[5]]
