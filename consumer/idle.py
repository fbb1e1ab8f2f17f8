"""A worker the group gives no partition: say why, once, where a deployment has more members than
the input topic has partitions (the extra workers sit idle, each holding its model, and a GPU
worker its GPU, for nothing).

Under Kafka's default eager assignors (``range``, ``roundrobin``) a member of a group whose members
all read one topic is given no partition only when the group has more members than the topic has
partitions. Under cooperative rebalancing (``cooperative-sticky``) an empty assignment proves
nothing alone: a joining member gets nothing in the first round, while the partitions it will own
are revoked from their owners. So the worker also asks the broker how many members the group has;
where the broker lists them (Kafka does; the embedded broker lists none), that count decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

IDLE_EVENT = "no partition for this worker: the group has more members than the input topic has partitions"

#: how long each request to the broker may take; the worker holds no partition meanwhile
REQUEST_SECONDS = 5.0


def more_members_than_partitions(eager: bool, members: int, partitions: int) -> bool:
    """Whether a worker left without a partition is one of the group's surplus. ``members``: as the
    broker lists them, 0 where it lists none."""
    if members:
        return members > partitions
    return eager


class IdleCheck:
    """Fed by the rebalance callbacks (``assigned``), checked by the fetch loop (``check``), where a
    blocking request to the broker does not hold up a rebalance."""

    def __init__(self, admin: Callable[[], AdminClient], group: str, topic: str, eager: bool, log: Any) -> None:
        self.admin, self.group, self.topic, self.eager, self.log = admin, group, topic, eager, log
        self._pending = False
        self._warned = False
        self._client: AdminClient | None = None

    def assigned(self, holds_any: bool) -> None:
        """After each assignment (and a cooperative revocation): whether the worker holds a partition now."""
        self._pending = not holds_any and not self._warned
        if holds_any:
            self._warned = False  # a later stretch without a partition is worth its own line

    def check(self) -> None:
        """Cheap unless an assignment just left the worker without a partition."""
        if not self._pending:
            return
        self._pending = False
        counted = self._count()
        if counted is None or not more_members_than_partitions(self.eager, *counted):
            return
        members, partitions = counted
        self._warned = True
        listed = {"members": members} if members else {}
        grow_to = f" --partitions {members}" if members else ""
        self.log.warning(
            IDLE_EVENT,
            group=self.group,
            topic=self.topic,
            partitions=partitions,
            **listed,
            advice=f"add partitions to {self.topic!r} (kafka-topics.sh --alter{grow_to}) or run fewer workers; "
            "until then this worker holds its device and reads nothing",
        )

    def _count(self) -> tuple[int, int] | None:
        """The group's members (0 where the broker lists none) and the topic's partitions, now."""
        try:
            self._client = self._client or self.admin()
            described = self._client.describe_consumer_groups([self.group], request_timeout=REQUEST_SECONDS)
            members = len(described[self.group].result(timeout=REQUEST_SECONDS).members)
            topic = self._client.list_topics(self.topic, timeout=REQUEST_SECONDS).topics[self.topic]
            return members, len(topic.partitions)
        except (KafkaException, TimeoutError, ValueError, KeyError):
            return None  # only a notice: the run does not depend on it
