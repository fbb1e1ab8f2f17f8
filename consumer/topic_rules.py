"""What the output and dead-letter topics' own settings require of the producer, which it does not
check itself: the brokers refuse a record batch over a topic's ``max.message.bytes``, and a record
without a key on a compacted topic. Described by the brokers at each start; a warning says what
follows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

#: a topic's limit on what the brokers take of it (Kafka's topic setting; the brokers' own
#: ``message.max.bytes`` where the topic does not set it)
TOPIC_MAX_BYTES = "max.message.bytes"
#: a topic's retention: ``compact`` keeps the last record of each key, and the brokers refuse records
#: without a key there
CLEANUP_POLICY = "cleanup.policy"
#: librdkafka's default ``message.max.bytes``: the largest record the producer sends
PRODUCER_MAX_BYTES = 1_000_000
#: librdkafka's default ``batch.size``: the largest record batch it builds (framing included)
BATCH_MAX_BYTES = 1_000_000
#: a record batch's own header (format v2), which the brokers count against a topic's
#: ``max.message.bytes`` with its records (the producer's own check counts the record alone)
RECORD_BATCH_HEADER_BYTES = 61


def batch_size_within(config: dict[str, Any], limits: Iterable[int]) -> int:
    """The producer's ``batch.size`` in ``config``, lowered to the lowest of the topics' limits
    (``max.message.bytes``, which the brokers check against a whole batch), and set there."""
    batch: int = min([int(config.get("batch.size", BATCH_MAX_BYTES)), *limits])
    config["batch.size"] = batch
    return batch


@dataclass(frozen=True)
class TopicRules:
    """What the brokers refuse of a topic that the producer does not check itself: records (whole
    batches) over ``max_bytes``, its ``max.message.bytes`` (None: not described), and records
    without a key if it is ``compacted`` (``cleanup.policy`` holds ``compact``)."""

    max_bytes: int | None = None
    compacted: bool = False


def describe(admin: AdminClient, topics: Iterable[str], timeout: float) -> dict[str, TopicRules]:
    """Each topic's rules, as the brokers describe its configuration. A topic whose configuration
    cannot be read (no permission to describe it, a broker that does not say, no answer within
    ``timeout``) is left out: its records are then checked by the producer only."""
    asked = list(dict.fromkeys(topics))
    if not asked:
        return {}
    futures = admin.describe_configs([ConfigResource("topic", t) for t in asked], request_timeout=timeout)
    rules = {}
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout)
        except (KafkaException, TimeoutError):
            continue
        max_bytes, policy = (str(getattr(entries.get(name), "value", "")) for name in (TOPIC_MAX_BYTES, CLEANUP_POLICY))
        compacted = "compact" in (part.strip() for part in policy.split(","))
        rules[resource.name] = TopicRules(int(max_bytes) if max_bytes.isdigit() else None, compacted)
    return rules


def for_outputs(
    admin: AdminClient,
    topics: list[str],
    dlq_topic: str | None,
    producer_config: dict[str, Any],
    producer_limit: int,
    timeout: float,
    log: Any,
) -> dict[str, TopicRules]:
    """The rules of the output and dead-letter ``topics`` that the brokers would refuse records for
    (``Outbox.topic_rules``), as the brokers describe them: a ``max.message.bytes`` below the
    producer's ``message.max.bytes`` (as the largest record, less a batch's header; the producer's
    batches are kept to it: ``batch.size`` in ``producer_config``), and compaction (records without
    a key). A warning at each start says what follows."""
    described = describe(admin, topics, timeout)
    lower = {t: r.max_bytes for t, r in described.items() if r.max_bytes is not None and r.max_bytes < producer_limit}
    batch = batch_size_within(producer_config, lower.values()) if lower else 0
    rules = {}
    for topic, described_rules in described.items():
        dead_letters = topic == dlq_topic
        if topic in lower:
            log.warning(_limit_warning(topic, lower[topic], producer_limit, batch, dead_letters))
        if described_rules.compacted:
            log.warning(_compacted_warning(topic, dead_letters))
        max_bytes = lower[topic] - RECORD_BATCH_HEADER_BYTES if topic in lower else None
        if max_bytes is not None or described_rules.compacted:
            rules[topic] = TopicRules(max_bytes, described_rules.compacted)
    return rules


def note_compacted_input(admin: AdminClient, topic: str, timeout: float, log: Any) -> None:
    """A line at start where the input ``topic`` is compacted: its deletions, records without a value,
    are dead-lettered unless ``--tombstones`` says otherwise."""
    if describe(admin, [topic], timeout).get(topic, TopicRules()).compacted:
        log.info(
            f"input topic {topic!r} is compacted ({CLEANUP_POLICY} compact): its deletions (records without a "
            "value) go to the dead letters; --tombstones forward deletes their keys' predictions from the output "
            "topic too, --tombstones skip passes over them"
        )


def _limit_warning(topic: str, limit: int, producer_limit: int, batch: int, dead_letters: bool) -> str:
    if dead_letters:
        then = "dead letters are cut to fit it"
    else:
        then = "an output over it goes to the dead letters if its input makes it so, else it stops the run"
    return (
        f"topic {topic!r} takes records up to {limit:,} bytes ({TOPIC_MAX_BYTES}), fewer than the "
        f"producer's message.max.bytes ({producer_limit:,}): {then}, and the producer's batches are kept to "
        f"{batch:,} bytes (batch.size); raise the topic's {TOPIC_MAX_BYTES}, or set "
        f"message.max.bytes under [kafka.producer] to {limit:,} or less"
    )


def _compacted_warning(topic: str, dead_letters: bool) -> str:
    if dead_letters:
        return (
            f"dead-letter topic {topic!r} is compacted ({CLEANUP_POLICY} compact): it keeps only the last dead "
            "letter of each key, and a bad input without a key cannot go there, which stops the run; give it "
            f"{CLEANUP_POLICY} delete"
        )
    return (
        f"topic {topic!r} is compacted ({CLEANUP_POLICY} compact): it takes no record without a key, so an input "
        "without a key goes to the dead letters"
    )
