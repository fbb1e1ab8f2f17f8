"""A batch the model failed, run in parts to find the inputs it fails on: each half run as a whole,
a failing half halved again, a row failing alone a failure. One failing input among 1,024 takes
about 20 runs of the model, not 1,024 (until 2026-12-05 each input was run alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from consumer.pipeline import Inputs, padded_rows
from consumer.predictor import MODEL_FAILURES

#: one call of the model: padded inputs and their row count → outputs by name
Run = Callable[[Inputs, int], dict[str, Any]]
#: a part of the rows and the model's outputs for it, or one row and what the model raised on it
Part = tuple[list[int], dict[str, Any] | Exception]


def run_apart(run: Run, bucket_for: Callable[[int], int], inputs: Inputs, rows: list[int]) -> Iterator[Part]:
    """``rows`` of ``inputs`` through the model in parts, in row order (none for no rows)."""
    if len(rows) <= 1:
        yield from (_run_part(run, bucket_for, inputs, rows),) if rows else ()
        return
    for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        part = _run_part(run, bucket_for, inputs, half)
        if isinstance(part[1], Exception):
            yield from run_apart(run, bucket_for, inputs, half)
        else:
            yield part


def _run_part(run: Run, bucket_for: Callable[[int], int], inputs: Inputs, rows: list[int]) -> Part:
    size = bucket_for(len(rows))
    try:
        outputs = run(padded_rows(inputs, rows, size), size)
    except MODEL_FAILURES as exc:
        return rows, exc
    return rows, {name: value[: len(rows)] for name, value in outputs.items()}
