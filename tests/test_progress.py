"""The supervisor's progress line: totals across workers and restarts, rates since the last line."""

from __future__ import annotations

import json

from consumer.kafka_io import partition_lags
from consumer.progress import Progress, lag_and_eta, total_lag


def test_totals_add_each_worker_s_new_counts_and_a_restart_starts_again_from_zero() -> None:
    progress = Progress(interval_s=10, now=0.0)
    progress.update(0, {"consumed": 100, "predicted": 90})
    progress.update(1, {"consumed": 50, "predicted": 50, "dead_lettered": 2})
    progress.update(0, {"consumed": 150, "predicted": 140})
    assert progress.line(now=9.9) is None  # not due yet
    line = progress.line(now=10.0)
    assert line == {
        "consumed": 200,
        "predicted": 190,
        "dead_lettered": 2,
        "skipped": 0,
        "consumed_per_s": 20.0,
        "predicted_per_s": 19.0,
    }
    progress.update(0, {"consumed": 30, "predicted": 25})  # worker 0 restarted: its counts begin again
    line = progress.line(now=15.0)
    assert line is None
    line = progress.line(now=20.0)
    assert line is not None and (line["consumed"], line["predicted"]) == (230, 215)
    assert (line["consumed_per_s"], line["predicted_per_s"]) == (3.0, 2.5)


def test_an_interval_of_zero_logs_nothing() -> None:
    progress = Progress(interval_s=0, now=0.0)
    progress.update(0, {"consumed": 5})
    assert progress.line(now=1e9) is None


def test_the_lag_is_known_once_every_worker_knows_its_own_and_a_bounded_run_gets_an_eta() -> None:
    progress = Progress(interval_s=10, now=0.0)
    progress.update(0, {"consumed": 900, "predicted": 150, "dead_lettered": 30, "skipped": 20})
    assert progress.line(now=10.0) is not None and progress.done_per_s == 20.0  # done, not merely read
    assert lag_and_eta([400, None], progress.done_per_s, bounded=True) == {"lag": None, "eta_s": None}
    assert lag_and_eta([400, 600], progress.done_per_s, bounded=True) == {"lag": 1000, "eta_s": 50}
    assert lag_and_eta([400, 600], 0.0, bounded=True) == {"lag": 1000, "eta_s": None}  # nothing done lately
    assert lag_and_eta([400, 600], progress.done_per_s, bounded=False) == {"lag": 1000}


def test_a_partition_lag_runs_from_its_committed_offset_to_its_end_and_is_unknown_without_one() -> None:
    """The shape of librdkafka 2.16's statistics (measured on the embedded broker): a partition read
    from but not committed yet has ``committed_offset`` -1001 (and ``consumer_lag`` -1), whatever
    the application has read; ``ls_offset`` is the end when reading committed records."""
    stats = {
        "topics": {
            "in": {
                "partitions": {
                    "0": {"committed_offset": 1, "hi_offset": 199, "ls_offset": 199, "consumer_lag": 198},
                    "1": {"committed_offset": -1001, "hi_offset": 120, "ls_offset": 120, "app_offset": 90},
                    "2": {"committed_offset": 3, "hi_offset": 10, "ls_offset": 8},  # an open transaction at 8
                    "3": {"committed_offset": -1001, "hi_offset": -1001, "ls_offset": -1001},  # not fetched yet
                    "-1": {"consumer_lag": -1},  # librdkafka's bucket for records without a partition
                }
            }
        }
    }
    text = json.dumps(stats)
    assert partition_lags(text, {}) == {("in", 0): 198, ("in", 1): None, ("in", 2): 5, ("in", 3): None}
    assert partition_lags(text, {}, read_committed=False)[("in", 2)] == 7
    # the worker's own commits count first: exactly once, librdkafka never sees them
    mine = {("in", 0): 150, ("in", 1): 100, ("in", 3): 5}
    assert partition_lags(text, mine) == {("in", 0): 49, ("in", 1): 20, ("in", 2): 5, ("in", 3): None}


def test_a_worker_s_lag_is_over_the_partitions_it_owns_and_unknown_while_one_of_them_is() -> None:
    lags = {("in", 0): 198, ("in", 1): 32, ("in", 2): None}
    assert total_lag(lags, {("in", 0), ("in", 1)}) == 230
    assert total_lag(lags, {("in", 0), ("in", 2)}) is None  # no committed offset yet
    assert total_lag(lags, {("in", 0), ("in", 3)}) is None  # not in the statistics yet
    assert total_lag(lags, set()) == 0  # in the group without partitions: nothing behind
    assert total_lag({}, None) is None  # not joined yet, or amid an eager rebalance
