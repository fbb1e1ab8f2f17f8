"""Kafka clients for the user-side tools, configured like the consumer: flag, environment, file.

``--bootstrap-servers`` falls back to ``TFSTREAM_BOOTSTRAP_SERVERS``, the ``--config`` file's
``bootstrap_servers``, then ``KAFKA_BOOTSTRAP_SERVERS``. librdkafka settings (TLS, SASL) come
from the same ``[kafka]``, ``[kafka.producer]``, ``[kafka.consumer]`` tables and
``TFSTREAM_KAFKA_*`` variables as the consumer's.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from consumer.config import load_client_tables
from consumer.errors import ConfigError


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
        self.common: dict[str, Any] = {"bootstrap.servers": bootstrap, **tables["kafka"]}
        self.tables = tables

    def producer(self, **extra: Any) -> Producer:
        defaults = {"enable.idempotence": True, "acks": "all", "linger.ms": 10, "compression.type": "lz4"}
        return Producer({**defaults, **self.common, **self.tables["kafka_producer"], **extra})

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
        return Consumer(config)

    def admin(self) -> AdminClient:
        return AdminClient(dict(self.common))
