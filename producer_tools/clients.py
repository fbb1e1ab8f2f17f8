"""Kafka clients for the user-side tools, configured like the consumer: flag, environment, file.

``--bootstrap-servers`` falls back to ``TFSTREAM_BOOTSTRAP_SERVERS``, the ``--config`` file's
``bootstrap_servers``, then ``KAFKA_BOOTSTRAP_SERVERS``. librdkafka settings (TLS, SASL) come
from the same ``[kafka]``, ``[kafka.producer]``, ``[kafka.consumer]`` tables and
``TFSTREAM_KAFKA_*`` variables as the consumer's.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import uuid
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from consumer import kafka_io, topic_rules
from consumer.config import load_client_tables
from consumer.errors import BrokerError, ConfigError
from consumer.kafka_io import UNREACHABLE_HINT, make_client, without_static_membership


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOSTS",
        help="Kafka brokers [env TFSTREAM_BOOTSTRAP_SERVERS, then KAFKA_BOOTSTRAP_SERVERS]",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="bootstrap_servers and [kafka*] tables, as the consumer's [env TFSTREAM_CONFIG]",
    )


class _OncePerMessage(logging.Filter):
    """librdkafka repeats a failing connection's error at every reconnect (every few ms): each
    message is shown once, numbers aside."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def librdkafka_logger() -> logging.Logger:
    """Where the tools' Kafka clients log: warnings and errors on stderr, as ``kafka: …``, once each
    (not librdkafka's raw ``%3|…`` lines, repeated at every reconnect)."""
    logger = logging.getLogger("tfstream.tools.librdkafka")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kafka: %(message)s"))
        handler.addFilter(_OncePerMessage())
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    return logger


def _with_logger(config: dict[str, Any]) -> dict[str, Any]:
    return {"logger": librdkafka_logger(), **config}


def admin_client(config: dict[str, Any]) -> AdminClient:
    """Every Kafka client the tools make goes through one of these three, so all log the same way
    (and a setting librdkafka refuses is one line, exit 2)."""
    return make_client(AdminClient, _with_logger(config))


def kafka_producer(config: dict[str, Any]) -> Producer:
    return make_client(Producer, _with_logger(config))


def kafka_consumer(config: dict[str, Any]) -> Consumer:
    return make_client(Consumer, _with_logger(config))


def close_consumer(consumer: Consumer) -> None:
    """Close a tool's consumer, bounded: a close that hangs is said in one line and left behind."""
    if not kafka_io.close_consumer(consumer):
        librdkafka_logger().warning(
            f"the consumer did not close within {kafka_io.CONSUMER_CLOSE_SECONDS:g}s (a librdkafka hang): left behind"
        )


#: librdkafka's errors for a broker that never answered (its own request timeout can fire first)
NO_ANSWER = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


def admin_result(future: Future[Any], timeout: float, doing: str) -> Any:
    """An AdminClient future's result. A broker that never answers is one ``BrokerError`` saying so,
    whichever timeout fires first (this wait's, or librdkafka's request timeout); other errors raise."""
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        raise _no_answer(doing, timeout) from None
    except KafkaException as exc:
        if exc.args[0].code() in NO_ANSWER:
            raise _no_answer(doing, timeout) from None
        raise


def _no_answer(doing: str, timeout: float) -> BrokerError:
    return BrokerError(f"no answer from Kafka within {timeout:.0f}s while {doing}; {UNREACHABLE_HINT}")


#: how long a tool waits for a topic's configuration (its ``max.message.bytes``)
DESCRIBE_SECONDS = 10.0


class Clients:
    """Makes configured producers, consumers and admin clients for one command."""

    def __init__(self, args: argparse.Namespace) -> None:
        tables = load_client_tables(getattr(args, "config", None))
        bootstrap = (
            args.bootstrap_servers or tables.get("bootstrap_servers") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        )
        if not bootstrap:
            raise ConfigError(
                "missing setting bootstrap_servers: pass --bootstrap-servers, set TFSTREAM_BOOTSTRAP_SERVERS "
                "or put it in the --config file"
            )
        self.bootstrap: str = bootstrap
        # the deployment's static membership is the consumer's; a tool is never a static member
        tables = {name: without_static_membership(t) if isinstance(t, dict) else t for name, t in tables.items()}
        self.common: dict[str, Any] = {"bootstrap.servers": bootstrap, **tables["kafka"]}
        self.tables = tables

    def producer(self, to_topic: str | None = None, **extra: Any) -> Producer:
        """``to_topic``: the one topic it writes to, whose ``max.message.bytes`` (where the brokers say,
        and lower than the producer's ``batch.size``) its batches are kept to: the brokers check a
        topic's limit against a whole batch and refuse a larger one whole."""
        defaults = {"enable.idempotence": True, "acks": "all", "linger.ms": 10, "compression.type": "lz4"}
        config = {**defaults, **self.common, **self.tables["kafka_producer"], **extra}
        if to_topic is not None:
            rules = topic_rules.describe(self.admin(), [to_topic], DESCRIBE_SECONDS).values()
            topic_rules.batch_size_within(config, [r.max_bytes for r in rules if r.max_bytes is not None])
        return kafka_producer(config)

    def consumer(self, group: str | None = None, **extra: Any) -> Consumer:
        config = {
            "group.id": group or f"tfstream-tools-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            **self.common,
            **self.tables["kafka_consumer"],
            **extra,
        }
        return kafka_consumer(config)

    def admin(self) -> AdminClient:
        return admin_client(self.common)
