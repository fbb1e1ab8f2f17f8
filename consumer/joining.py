"""While a worker waits for its group's first assignment, say so now and then: a join can take a
while (on Kafka, until every member has rejoined; on the embedded broker with librdkafka's default
timeouts, about 20 s), and a worker that says nothing after ``worker ready`` looks hung."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: the first line after this long without an assignment, then one every ``JOIN_NOTICE_EVERY_SECONDS``
JOIN_NOTICE_AFTER_SECONDS = 10.0
JOIN_NOTICE_EVERY_SECONDS = 30.0

JOIN_EVENT = "still waiting for the group to assign partitions"
JOIN_ADVICE = (
    "a join ends once every member of the group has rejoined; a member busy in a long batch holds it up to "
    "max.poll.interval.ms, and a broker with long session timeouts answers late (the embedded broker takes ~20 s "
    "with librdkafka's defaults: lower session.timeout.ms under [kafka.consumer] for development, and where "
    "an earlier run's members left one after another it can hang in the join for minutes: use a new --group)"
)


class JoinWait:
    """Checked by the fetch loop each turn: costs one comparison once the worker has joined."""

    def __init__(self, log: Any, group: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.group, self.clock = log, group, clock
        self.since = clock()
        self._next: float | None = JOIN_NOTICE_AFTER_SECONDS

    def check(self, joined: bool) -> None:
        if joined or self._next is None:
            return
        waited = self.clock() - self.since
        if waited < self._next:
            return
        self.log.info(JOIN_EVENT, group=self.group, waited_s=round(waited, 1), advice=JOIN_ADVICE)
        self._next = waited + JOIN_NOTICE_EVERY_SECONDS

    def joined(self) -> float | None:
        """Seconds the first join took, once; then None."""
        if self._next is None:
            return None
        self._next = None
        return round(self.clock() - self.since, 1)
