"""A worker waiting for its group's first assignment says so now and then (``consumer.joining``)."""

from __future__ import annotations

import structlog

from consumer import joining
from consumer.joining import JOIN_EVENT, JoinWait


def test_the_wait_is_said_after_ten_seconds_then_every_thirty_until_the_worker_joins() -> None:
    now = [100.0]
    with structlog.testing.capture_logs() as captured:
        wait = JoinWait(structlog.get_logger(), "g", clock=lambda: now[0])
        for at in (5, 9.9, 10, 12, 39, 40.5, 41, 71):
            now[0] = 100.0 + at
            wait.check(joined=False)
        now[0] = 180.0
        assert wait.joined() == 80.0 and wait.joined() is None  # said once, on the first assignment
        now[0] = 300.0
        wait.check(joined=False)  # a later rebalance is not a join to wait for
    assert [e["waited_s"] for e in captured] == [10.0, 40.5, 71.0]
    assert all(e["event"] == JOIN_EVENT and e["group"] == "g" and e["log_level"] == "info" for e in captured)
    assert "session.timeout.ms" in captured[0]["advice"]


def test_a_joined_worker_says_nothing() -> None:
    now = [0.0]
    with structlog.testing.capture_logs() as captured:
        wait = JoinWait(structlog.get_logger(), "g", clock=lambda: now[0])
        now[0] = joining.JOIN_NOTICE_AFTER_SECONDS + 1
        wait.check(joined=True)
    assert captured == []
