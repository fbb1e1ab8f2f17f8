"""A batch the model failed, run in halves to find the inputs it fails on (``halves.in_halves``):
one failing input among 1,024 takes 11 to 20 runs of the model, not 1,024 (until 2026-12-05 each
input was run alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from consumer.halves import in_halves
from consumer.pipeline import Inputs, padded_rows
from consumer.predictor import MODEL_FAILURES

#: one call of the model: padded inputs and their row count → outputs by name
Run = Callable[[Inputs, int], dict[str, Any]]
#: a part of the rows and the model's outputs for it, or one row and what the model raised on it
Part = tuple[list[int], dict[str, Any] | Exception]


def run_apart(run: Run, bucket_for: Callable[[int], int], inputs: Inputs, rows: list[int]) -> Iterator[Part]:
    """``rows`` of ``inputs`` through the model in parts, in row order (``in_halves``; none for no rows)."""

    def part(rows: list[int]) -> dict[str, Any] | Exception:
        return _run_part(run, bucket_for, inputs, rows)

    return in_halves(rows, part, part)


def _run_part(
    run: Run, bucket_for: Callable[[int], int], inputs: Inputs, rows: list[int]
) -> dict[str, Any] | Exception:
    size = bucket_for(len(rows))
    try:
        outputs = run(padded_rows(inputs, rows, size), size)
    except MODEL_FAILURES as exc:
        return exc
    return {name: value[: len(rows)] for name, value in outputs.items()}
