"""When a worker counts as stuck: its batch past ``stuck_batch_s`` (not ready), and a model whose
ordinary batches would pass for stuck (said at start)."""

from __future__ import annotations

import math

#: How many times a full batch's warm-up time ``stuck_batch_s`` and ``stuck_kill_s`` should allow
SLOW_BATCH_MARGIN = 3


def batch_stuck_for(started_at: float | None, now: float, budget_s: float) -> float | None:
    """How long the current batch has run, if that is longer than its budget; else None."""
    if started_at is None or now - started_at <= budget_s:
        return None
    return now - started_at


def slow_batch_warnings(full_batch_s: float, stuck_batch_s: float, stuck_kill_s: float) -> list[str]:
    """A model whose full batch takes near ``stuck_kill_s`` has its workers killed as stuck in the
    normal course, and near ``stuck_batch_s`` called not ready: say so at start, with the fix."""
    needed = SLOW_BATCH_MARGIN * full_batch_s
    took, fix = f"a full batch took {full_batch_s:.3g} s at warm-up", f"{math.ceil(needed)} or more"
    warnings = []
    if stuck_kill_s and stuck_kill_s < needed:
        warnings.append(
            f"{took}, and stuck_kill_s={stuck_kill_s:g} kills a worker whose pipeline moved no batch that long: "
            f"set stuck_kill_s to {fix}"
        )
    if stuck_batch_s < needed:
        warnings.append(
            f"{took}, and stuck_batch_s={stuck_batch_s:g} calls a worker whose batch runs that long not ready "
            f"(/readyz 503): set stuck_batch_s to {fix}"
        )
    return warnings
