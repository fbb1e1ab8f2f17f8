"""A worker's output producer: its settings, what its topics' own settings require of the records,
the outbox every record goes through, and exactly once, its transactions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from consumer import kafka_io, topic_rules
from consumer.config import Settings
from consumer.delivery import Outbox
from consumer.offsets import OffsetTracker
from consumer.timing import Timeline
from consumer.tombstones import DEAD_LETTER
from consumer.topic_rules import PRODUCER_MAX_BYTES, TopicRules
from consumer.transactions import Transactions


@dataclass
class Producing:
    config: dict[str, Any]
    producer: Producer
    outbox: Outbox
    #: exactly once, the transaction each batch's outputs and offsets commit in; None at least once
    transactions: Transactions | None


def open_producing(
    settings: Settings, client_id: str, host_number: int, present: list[str], tracker: OffsetTracker,
    timeline: Timeline, log: Any,
) -> Producing:  # fmt: skip
    """The producer for the output and dead-letter topics that exist (``present``: a missing one
    waits, paused, until it is made), begun exactly once."""
    s = settings
    exactly_once = s.delivery == "exactly-once"
    config = kafka_io.producer_config(s, client_id, host_number)
    producer_limit = int(config.get("message.max.bytes", PRODUCER_MAX_BYTES))
    rules = output_rules(s, config, present, producer_limit, log)
    producer = Producer(config)
    outbox = Outbox(producer, tracker, timeline, transactional=exactly_once)
    outbox.dead_letter_topic, outbox.producer_limit, outbox.topic_rules = s.dlq_topic, producer_limit, rules
    transactions = None
    if exactly_once:
        transactions = Transactions(
            producer, outbox, tracker, s.transaction_timeout_ms, log, config["transactional.id"]
        )  # fmt: skip
        transactions.start()
    return Producing(config, producer, outbox, transactions)


def output_rules(
    settings: Settings, producer_config: dict[str, Any], topics: list[str], producer_limit: int, log: Any
) -> dict[str, TopicRules]:
    """What the output and dead-letter topics' own settings require (``topic_rules.for_outputs``);
    and, where the input topic's tombstones would be dead-lettered, whether it is compacted."""
    s = settings
    admin = kafka_io.admin_client(s)
    if s.tombstones == DEAD_LETTER:
        topic_rules.note_compacted_input(admin, s.input_topic, s.connect_timeout_s, log)
    timeout = s.connect_timeout_s
    return topic_rules.for_outputs(admin, topics, s.dlq_topic, producer_config, producer_limit, timeout, log)
