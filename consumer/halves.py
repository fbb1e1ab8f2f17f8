"""Rows run in halves to find those that fail alone: each half run as a whole, a failing half halved
again. One failing row among 1,024 takes 21 runs, not 1,024; where every row fails, 2n - 1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def in_halves(
    rows: list[int], run: Callable[[list[int]], T | Exception], run_alone: Callable[[list[int]], T | Exception]
) -> Iterator[tuple[list[int], T | Exception]]:
    """``rows`` in parts, in row order, each with what ``run`` gave for it; a row that failed in a
    part is run alone through ``run_alone``, whose result (what it gave, or its failure) decides.
    ``run`` and ``run_alone`` return their failure, not raise it. None for no rows."""
    if len(rows) <= 1:
        yield from ((rows, run_alone(rows)),) if rows else ()
        return
    for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        result = run(half)
        if isinstance(result, Exception):
            yield from in_halves(half, run, run_alone)
        else:
            yield half, result
