"""Create topics (idempotently) with the AdminClient, and describe what exists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.errors import BrokerError
from producer_tools.clients import admin_client, admin_result

#: ``NewTopic``'s replication factor that lets the broker choose: its ``default.replication.factor``
#: (Kafka 2.4 and later), so that a topic on a cluster is replicated as the cluster's own are.
BROKER_DEFAULT = -1


@dataclass(frozen=True)
class TopicShape:
    partitions: int
    replication_factor: int


def create_topics(
    bootstrap: str | AdminClient,
    names: Iterable[str],
    partitions: int = 1,
    timeout: float = 30.0,
    replication_factor: int = BROKER_DEFAULT,
) -> list[str]:
    """Create each topic that does not exist yet (an existing topic is left as it is); the names created."""
    admin = admin_client({"bootstrap.servers": bootstrap}) if isinstance(bootstrap, str) else bootstrap
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor) for n in dict.fromkeys(names)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            admin_result(future, timeout, f"creating topic {name!r}")
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name!r}: {_reason(exc.args[0])}") from None
    return created


def _reason(error: KafkaError) -> str:
    if error.code() == KafkaError.INVALID_REPLICATION_FACTOR:
        return f"{error.str()}; pass --replication-factor N, at most the number of brokers"
    return str(error.str())


def shapes(admin: AdminClient, names: Iterable[str], timeout: float = 30.0) -> dict[str, TopicShape]:
    """Partitions and replication factor of each named topic the cluster's metadata shows."""
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka to describe topics: {exc.args[0].str()}") from None
    found = {}
    for name in names:
        topic = topics.get(name)
        if topic is not None and topic.error is None and topic.partitions:
            replicas = min(len(p.replicas) for p in topic.partitions.values())
            found[name] = TopicShape(len(topic.partitions), replicas)
    return found
