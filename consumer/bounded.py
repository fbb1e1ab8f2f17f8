"""A bounded run's end (``--stop-at-end``), for one worker: when it is done, and how it leaves.

A worker alone leaves the group once done. The workers of one supervisor are *held*: a worker at
its end commits, says so, and reads on in the group until its supervisor stops them all at once.
A rebalance callback takes a held worker off its end, and it says so at once. Under cooperative
rebalancing, partitions given up short of their end are awaited (``positions.Handovers``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.offsets import OffsetTracker, Partition
from consumer.positions import EndOfInput, Handover, Handovers

#: How often a worker otherwise done reads the group's commits of the partitions it gave up.
HANDOVER_CHECK_SECONDS = 1.0
#: How long it waits for the broker's answer to that.
COMMITTED_TIMEOUT_SECONDS = 5.0


class BoundedRun:
    """The end of a bounded run for one worker; off (``enabled`` False) for an endless one."""

    def __init__(self, enabled: bool, ends: EndOfInput, tracker: OffsetTracker, log: Any) -> None:
        self.enabled, self.ends, self.tracker, self.log = enabled, ends, tracker, log
        #: a bounded run's worker with siblings: at its end it reads on, in the group, calls
        #: ``on_end_reached``, and leaves when stopped (its supervisor stops them all at once)
        self.hold = False
        self.on_end_reached: Callable[[], object] | None = None
        #: sends the worker's status at once (its supervisor's ``_stop_if_all_at_end``)
        self.report_status: Callable[[], object] | None = None
        self.said_at_end = False  # held: its status says it is at its end
        #: partitions a cooperative rebalance took short of their end (``Handovers``)
        self.handovers = Handovers(timeout_s=math.inf)
        self._handovers_checked = -math.inf

    def done(self) -> bool:
        return self.enabled and self._held_partitions_done() and not self.handovers.pending

    def _held_partitions_done(self) -> bool:
        """Every partition it holds read to its end, and every input of them done."""
        return self.ends.finished() and self.tracker.in_flight() == 0

    def at_end(self) -> bool:
        """For the worker's status (any thread): held, only once its end is committed (``leaves``)."""
        return self.said_at_end if self.hold else self.done()

    def leaves(self, consumer: Consumer, commit: Callable[[], None]) -> bool:
        """The run is done: leave, or, held, say so once and read on until stopped. A worker leaving
        alone makes the group rebalance under the others still reading: each stops for the rejoin
        (3.4 s on the embedded broker, where it halved a bench drain in about a third of the runs),
        so the workers of one supervisor leave together (two supervisors on one host do not wait for
        each other). A held worker commits its end before it says so, so that the supervisor stops
        workers whose work is committed: their drains' commits would come after the first of them
        left, during the rebalance its leaving starts, which a broker may refuse
        (``REBALANCE_IN_PROGRESS``), and the inputs would be read again by the next run."""
        self._settle_handovers(consumer)
        done = self.done()
        if not self.hold:
            return done
        if done and not self.said_at_end:
            commit()
            self.said_at_end = True  # only now does its status say so
            self.log.info("reached the end of its partitions; waiting to leave with the other workers")
            if self.on_end_reached is not None:
                self.on_end_reached()
        self.said_at_end = done
        return False

    def off_end(self) -> None:
        """A rebalance callback: a held worker is not at its end until ``leaves`` finds it so again,
        and says so at once (a status saying it still was let its supervisor stop a run mid-rebalance)."""
        if self.hold and self.said_at_end:
            self.said_at_end = False
            if self.report_status is not None:
                self.report_status()

    def assigned(self, partitions: set[Partition]) -> None:
        self.handovers.assigned(partitions)
        self.off_end()

    def gave_up(self, consumer: Consumer, revoked: set[Partition]) -> None:
        """A cooperative revoke, after its drain and commit, before the partitions are forgotten:
        those not read to their end, or read but not all done (what was left in the batcher), are
        awaited, each from the group's commit of it now."""
        if not self.enabled:
            return
        short = {p for p in revoked if p not in self.ends.at_end or self.tracker.in_flight([p])}
        if short:
            commits = self._commits(consumer, short, "the partitions revoked")
            handovers = {p: Handover(commits.get(p), self.ends.bounds.get(p)) for p in short}
            self.handovers.revoked(handovers, time.monotonic())

    def _settle_handovers(self, consumer: Consumer) -> None:
        """Once a second, while the worker is otherwise done: see which partitions it gave up were
        taken up since; past the wait's timeout, stop waiting for the rest."""
        now = time.monotonic()
        if not self.handovers.pending or now - self._handovers_checked < HANDOVER_CHECK_SECONDS:
            return
        self._handovers_checked = now
        if self._held_partitions_done():
            self.handovers.settle(self._commits(consumer, set(self.handovers.pending), "the partitions it gave up"))
        if self.handovers.overdue(now):
            self.log.warning(
                "partitions it gave up in a cooperative rebalance, short of their end, were not taken up: "
                "counting the run done without them; run it again to finish them",
                partitions=sorted(self.handovers.pending),
                waited_s=self.handovers.timeout_s,
            )
            self.handovers.pending.clear()

    def _commits(self, consumer: Consumer, partitions: set[Partition], what: str) -> dict[Partition, int]:
        """The group's commits of ``partitions`` (those it has); none, with a warning, if the broker
        cannot say."""
        try:
            answer = consumer.committed([TopicPartition(*p) for p in partitions], timeout=COMMITTED_TIMEOUT_SECONDS)
        except KafkaException as exc:
            self.log.warning(f"could not read the group's commits of {what}", error=str(exc))
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in answer if tp.error is None and tp.offset >= 0}
