"""Create topics (idempotently) with the AdminClient."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.errors import BrokerError
from producer_tools.clients import admin_client, admin_result


def create_topics(
    bootstrap: str | AdminClient, names: Iterable[str], partitions: int = 1, timeout: float = 30.0
) -> None:
    """Create each topic that does not exist yet; an existing topic is left as it is."""
    admin = admin_client({"bootstrap.servers": bootstrap}) if isinstance(bootstrap, str) else bootstrap
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            admin_result(future, timeout, f"creating topic {name!r}")
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name!r}: {exc.args[0].str()}") from None
