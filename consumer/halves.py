"""Rows that failed together, run in halves to find those that fail alone: each half run as a
whole, a failing half halved again, a single row run alone (``run_alone`` decides it). A half is
known to fail when its rows failed together and the other half passed: it is halved without being
run whole. One failing row among 1,024 takes 11 to 20 runs (by where it lies), not 1,024; where
every row fails, 2n - 2."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

T = TypeVar("T")
Run = Callable[[list[int]], T | Exception]


def in_halves(rows: list[int], run: Run[T], run_alone: Run[T]) -> Iterator[tuple[list[int], T | Exception]]:
    """``rows``, which failed together, in parts, in row order, each with what ``run`` gave for it,
    or a single row with what ``run_alone`` gave (its output, or its failure). ``run`` and
    ``run_alone`` return their failure, not raise it. None for no rows."""
    if len(rows) <= 1:
        yield from ((rows, run_alone(rows)),) if rows else ()
        return
    first, second = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    passed = yield from _tried(first, run, run_alone)
    if passed:  # the failure is in the second half (or shows only with the first: then its halves pass)
        yield from in_halves(second, run, run_alone)
    else:
        yield from _tried(second, run, run_alone)


def _tried(part: list[int], run: Run[T], run_alone: Run[T]) -> Generator[tuple[list[int], T | Exception], None, bool]:
    """``part`` run whole (a single row alone) and, if it failed, halved; returns whether it passed whole."""
    result = run_alone(part) if len(part) == 1 else run(part)
    if isinstance(result, Exception) and len(part) > 1:
        yield from in_halves(part, run, run_alone)
        return False
    yield part, result
    return not isinstance(result, Exception)
