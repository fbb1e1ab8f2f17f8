"""Create topics (idempotently) with the AdminClient."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.errors import BrokerError
from producer_tools.clients import admin_client


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
            future.result(timeout=timeout)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code in NO_ANSWER:
                raise _no_answer(name, timeout) from None
            if code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name!r}: {exc.args[0].str()}") from None
        except TimeoutError:  # the same wait, run out on this side first
            raise _no_answer(name, timeout) from None


#: librdkafka's errors for a broker that never answered (its own request timeout can fire first)
NO_ANSWER = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


def _no_answer(name: str, timeout: float) -> BrokerError:
    return BrokerError(
        f"no answer from Kafka within {timeout:.0f}s while creating topic {name!r}; "
        "check --bootstrap-servers and that the broker is up"
    )
