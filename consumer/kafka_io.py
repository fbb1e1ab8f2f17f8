"""Kafka client settings and the few broker calls the worker makes outside its loop."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.config import Settings
from consumer.errors import SUCCESSOR, BrokerError, ClientHungError, ConfigError, FencedError
from consumer.offsets import Partition

#: librdkafka's own log lines go through structlog (see consumer.logs), not raw to stderr.
LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")
#: for clients made only to check settings (``check_client_settings``): the workers log the warnings
_SILENT = logging.getLogger("tfstream.settings-check")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False

#: librdkafka settings the correctness of the loop depends on; users cannot override them.
_CONSUMER_FIXED = {"enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True}
_PRODUCER_FIXED = {"enable.idempotence": True, "acks": "all"}
#: Static group membership (KIP-345): the value given is the stem of each worker's own id.
GROUP_INSTANCE_ID = "group.instance.id"
#: librdkafka's own description of a static member fenced, which a ``_FATAL`` error's text carries
_FENCED_INSTANCE = KafkaError(KafkaError.FENCED_INSTANCE_ID).str()

T = TypeVar("T")
_HUNG_MARGIN_SECONDS = 5.0


def transactional_call_bound_s(transaction_timeout_s: float) -> float:
    """How long a transactional call may block before the producer counts as hung: the whole
    ``transaction.timeout.ms`` and a margin. Not the call's own timeout (half of it): with the broker
    out of reach, librdkafka timed out adding the offsets after the whole ``transaction.timeout.ms``
    (10,001 ms for a 5 s call)."""
    return transaction_timeout_s + _HUNG_MARGIN_SECONDS


#: The consumer's fetch (embedded broker, MLP bench, 2026-12-01; README "Configuration"): a
#: partition holding 64 fetched records or more is fetched again after 15 ms, not at once, so under
#: load the next fetch finds records and a broker that holds a caught-up fetch (the embedded one,
#: for about half of fetch.wait.max.ms) answers it at once: p99 at half load 48-96 ms against
#: 72-152. 64, not 1, keeps large inputs' fetches overlapping (110 KB: 3,772 msg/s, against 1,874
#: with 1).
PACED_FETCH: dict[str, int] = {"queued.min.messages": 64, "fetch.queue.backoff.ms": 15}
#: bounds the hold when a fetch finds nothing (low rates)
FETCH_WAIT_MS = 20


def consumer_config(settings: Settings, client_id: str, number: int = 0) -> dict[str, Any]:
    """Defaults, then ``[kafka]``, then ``[kafka.consumer]``, then the settings we rely on.
    ``number``: the worker's number on this host (``static_member_id``)."""
    _refuse_overrides(settings.kafka_consumer | settings.kafka, _CONSUMER_FIXED, "kafka.consumer")
    stem = static_member_stem(settings)
    static = {GROUP_INSTANCE_ID: static_member_id(stem, number)} if stem is not None else {}
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.group,
        "client.id": client_id,
        "logger": LIBRDKAFKA_LOGGER,
        "auto.offset.reset": "latest",
        "max.poll.interval.ms": 300_000,
        **PACED_FETCH,
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        **settings.kafka,
        **settings.kafka_consumer,
        **_CONSUMER_FIXED,
        **static,
    }


def cooperative(config: Mapping[str, Any]) -> bool:
    """Whether the consumer rebalances incrementally (``partition.assignment.strategy``
    ``cooperative-sticky``, the one cooperative assignor; librdkafka refuses to mix it with eager
    ones): each rebalance then assigns and revokes only what moves, with ``incremental_assign``
    (``assign`` fails with ``_STATE``)."""
    strategies = str(config.get("partition.assignment.strategy", ""))
    return "cooperative-sticky" in (name.strip() for name in strategies.split(","))


def static_member_stem(settings: Settings) -> str | None:
    """The ``group.instance.id`` the user gave (``[kafka.consumer]`` first, then ``[kafka]``), if any."""
    value = settings.kafka_consumer.get(GROUP_INSTANCE_ID, settings.kafka.get(GROUP_INSTANCE_ID))
    return None if value is None or str(value) == "" else str(value)


def without_static_membership(table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` without ``group.instance.id``: for clients that are not the deployment's consumers."""
    return {key: value for key, value in table.items() if key != GROUP_INSTANCE_ID}


def static_member_id(stem: str, number: int) -> str:
    """Each worker's own ``group.instance.id``, ``STEM-HOST-N``: one id shared by several members
    would fence them in turn on Kafka (and on the embedded broker give each every partition).
    Stable across the worker's restarts, so that a restarted worker takes its partitions back
    without a rebalance, within ``session.timeout.ms``."""
    return f"{stem}-{socket.gethostname()}-{number}"


def transactional_id(settings: Settings, slot: int) -> str:
    """Stable per worker slot and host: a restarted worker fences its dead predecessor's transaction."""
    return f"{settings.transactional_id_prefix}-{settings.group}-{socket.gethostname()}-{slot}"


def producer_config(settings: Settings, client_id: str, slot: int = 0) -> dict[str, Any]:
    exactly_once = settings.delivery == "exactly-once"
    # at least once, an input is done when its record's delivery report says so; exactly once, the
    # commit reports a failed record, so only failures need one (no Python callback per delivered
    # record: a tenth of a worker's CPU on a small model)
    fixed = _PRODUCER_FIXED | {"delivery.report.only.error": exactly_once}
    _refuse_overrides(settings.kafka_producer | settings.kafka, fixed, "kafka.producer")
    transactional = (
        {
            "transactional.id": transactional_id(settings, slot),
            "transaction.timeout.ms": settings.transaction_timeout_ms,
        }
        if exactly_once
        else {}
    )
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id,
        "logger": LIBRDKAFKA_LOGGER,
        "linger.ms": 5,
        # an output topic that is missing is an error to report, not one to create with defaults
        "allow.auto.create.topics": False,
        "compression.type": "lz4",
        "batch.num.messages": 10_000,
        **without_static_membership(settings.kafka),
        **settings.kafka_producer,
        **fixed,
        **transactional,
    }


def check_client_settings(settings: Settings) -> None:
    """The consumer's and the producer's settings as librdkafka reads them, checked before any worker
    starts: a misspelt ``[kafka]`` setting, an ill-formed value or a TLS file that cannot be read is a
    configuration error in one line (exit 2), not a worker failing to start three times, each after
    loading the model. The clients are made without ``bootstrap.servers``, so nothing connects."""
    checks: list[tuple[Callable[[dict[str, Any]], Any], dict[str, Any]]] = [
        (Consumer, consumer_config(settings, "tfstream-check")),
        (Producer, producer_config(settings, "tfstream-check")),
    ]
    for client, config in checks:
        offline = {key: value for key, value in config.items() if key != "bootstrap.servers"}
        offline["logger"] = _SILENT
        made = make_client(client, offline)
        if isinstance(made, Consumer):
            made.close()


def make_client(client: Callable[[dict[str, Any]], T], config: dict[str, Any]) -> T:
    """A librdkafka client; settings it refuses (it reads them all here) are a ``ConfigError``."""
    try:
        return client(config)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._INVALID_ARG:
            raise
        reason = " ".join(exc.args[0].str().split())  # librdkafka ends some reasons with a newline
        raise ConfigError(
            f"invalid Kafka client setting: {reason}; fix it in the --config file's [kafka], "
            "[kafka.consumer] or [kafka.producer] table, or its TFSTREAM_KAFKA_* variable"
        ) from None


#: values librdkafka takes as the same setting
_SAME_VALUE = {"-1": "all"}


def _refuse_overrides(given: Mapping[str, Any], fixed: Mapping[str, Any], table: str) -> None:
    for key, value in given.items():
        if key in fixed and _SAME_VALUE.get(str(value).lower(), str(value).lower()) != str(fixed[key]).lower():
            raise ConfigError(
                f"invalid setting {table}.{key}={value!r}: the consumer's delivery guarantee "
                f"needs {key}={fixed[key]}; remove it"
            )


#: what every "cannot reach Kafka" line of the consumer and the tools ends with
UNREACHABLE_HINT = "check --bootstrap-servers and that the broker is up"


def check_topics(
    client: Consumer | Producer, topics: Iterable[str], bootstrap: str, timeout: float
) -> tuple[list[str], dict[str, int]]:
    """Fail with one line if Kafka is unreachable within ``timeout``; return the topics that are
    missing, and the partition count of each that exists."""
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach Kafka at {bootstrap} within {timeout:.0f}s ({exc.args[0].str()}); {UNREACHABLE_HINT}"
        ) from None
    missing, partitions = [], {}
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None or (found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            missing.append(topic)
        else:
            partitions[topic] = len(found.partitions)
    return missing, partitions


def check_partition_for_partition(input_topic: str, output_topic: str, partitions: Mapping[str, int]) -> None:
    """``--output-partitioning input`` sends each output to the partition of its input's number: the
    output topic must exist (to be checked) and have at least the input topic's partitions."""
    have, need = partitions.get(output_topic), partitions[input_topic]
    if have is None or have < need:
        holds = "does not exist" if have is None else f"has {have} partition{'s' * (have != 1)}"
        raise ConfigError(
            f"invalid setting output_partitioning='input': output topic {output_topic!r} {holds}, and each output "
            f"goes to its input's partition number, of {need} in {input_topic!r}; create or grow it to {need} "
            "partitions (kafka-topics.sh --alter --partitions), or use --output-partitioning key"
        )


def admin_client(settings: Settings) -> AdminClient:
    """An admin client with the workers' connection settings (``[kafka]``, TLS and SASL included)."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, "logger": LIBRDKAFKA_LOGGER}
    return make_client(AdminClient, {**config, **without_static_membership(settings.kafka)})


def missing_topic_error(topic: str, bootstrap: str) -> ConfigError:
    return ConfigError(f"topic {topic!r} does not exist on {bootstrap}: create it or fix the topic name")


def commit(consumer: Consumer, offsets: Mapping[Partition, int]) -> dict[Partition, int]:
    """Commit synchronously; return what the broker accepted (failures are retried next time)."""
    if not offsets:
        return {}
    try:
        result = consumer.commit(offsets=_partition_list(offsets), asynchronous=False) or []
    except KafkaException as exc:
        return commit_result(exc.args[0], [])
    return accepted_offsets(result)


def commit_async(consumer: Consumer, offsets: Mapping[Partition, int]) -> None:
    """Send a commit and return at once: the result comes to the consumer's ``on_commit`` callback,
    served by a later ``consume`` (see ``commit_result``)."""
    if offsets:
        consumer.commit(offsets=_partition_list(offsets), asynchronous=True)


def commit_result(error: KafkaError | None, partitions: list[TopicPartition]) -> dict[Partition, int]:
    """What a commit's result says the broker accepted (an asynchronous one's, or a synchronous one's
    error); raises its error, if it failed as a whole (``_NO_OFFSET``, nothing to commit, is no
    failure)."""
    if error is not None and error.code() != KafkaError._NO_OFFSET:
        raise KafkaException(error)
    return accepted_offsets(partitions) if error is None else {}


def accepted_offsets(result: list[TopicPartition]) -> dict[Partition, int]:
    return {(tp.topic, tp.partition): tp.offset for tp in result if tp.error is None}


def _partition_list(offsets: Mapping[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


def dead_consumer_error(error: KafkaError, group_instance_id: str | None) -> BrokerError:
    """librdkafka gave up on the consumer: it says so once, as ``_FATAL`` with the cause in its text,
    then fetches nothing more. Fenced as a static member, the run ends (``FencedError``): restarted,
    the worker would fence the other member in turn. Otherwise the worker restarts."""
    if error.code() == KafkaError.FENCED_INSTANCE_ID or _FENCED_INSTANCE in error.str():
        return FencedError(
            f"another consumer joined the group with this worker's group.instance.id {group_instance_id!r} "
            f"({error.str()}): another copy of this deployment runs under this host name with the same "
            "group.instance.id stem; give each deployment its own stem (or host name)"
        )
    return BrokerError(
        f"the consumer hit a fatal error ({error.str()}); {SUCCESSOR} reads again from the last committed offsets"
    )


def call_within(seconds: float, call: Callable[[], T], what: str) -> T:
    """``call()``, in a thread of its own, waited for at most ``seconds``: its result, or what it
    raised. ``ClientHungError`` if it has not returned by then, for a librdkafka call that ignores
    its own timeout (the thread is left blocked: the client cannot be used again)."""
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=what, daemon=True).start()
    if not done.wait(seconds):
        raise ClientHungError(
            f"{what} did not return within {seconds:.0f}s (a librdkafka hang after brokers were out of reach, its "
            f"issue 5456); {SUCCESSOR} starts with new clients"
        )
    returned, value = outcome[0]
    if returned:
        return value
    raise value


#: how long a consumer's close may take before it is left behind (``close_consumer``)
CONSUMER_CLOSE_SECONDS = 10.0


def close_consumer(consumer: Consumer) -> bool:
    """Close ``consumer`` (it leaves its group), waited for at most ``CONSUMER_CLOSE_SECONDS``;
    False if it had not returned by then. librdkafka 2.x's destroy, once the group was left, can
    wait for good on a broker thread that still holds a reference (its issues 3470 and 3954): seen
    in 1 of ~30 ``fetch-latency`` runs stopped by SIGTERM a second after their assignment. The
    closing thread is left blocked, and the process can still end."""
    try:
        call_within(CONSUMER_CLOSE_SECONDS, consumer.close, "the consumer's close")
    except ClientHungError:
        return False
    return True


#: how often librdkafka reports its statistics when the worker wants them (consumer lag, for the
#: metrics and the progress line)
STATISTICS_INTERVAL_MS = 5000


def partition_lags(
    stats_json: str, committed: Mapping[Partition, int], read_committed: bool = True
) -> dict[Partition, int | None]:
    """From librdkafka's statistics: each partition's consumer lag, the messages from its committed
    offset to its end (its last stable offset when reading committed records, librdkafka's
    default, else its high watermark); None while either is unknown. The committed offset is the
    worker's own last commit where it made one (``committed``), else librdkafka's (the group's, as
    read at assignment): librdkafka counts only its consumer's own commits, so exactly once, where
    the transactions commit the offsets, its ``consumer_lag`` never moved. The statistics also list
    partitions the client no longer owns: the caller keeps its assignment's."""
    lags: dict[Partition, int | None] = {}
    for topic, info in json.loads(stats_json).get("topics", {}).items():
        for partition, p in info.get("partitions", {}).items():
            if partition == "-1":  # librdkafka's bucket for records not yet given a partition
                continue
            key = (topic, int(partition))
            end = int(p.get("ls_offset" if read_committed else "hi_offset", -1))
            start = committed.get(key, int(p.get("committed_offset", -1)))
            lags[key] = end - start if 0 <= start <= end else None
    return lags


def reads_committed(config: Mapping[str, Any]) -> bool:
    """Whether the consumer reads only committed records (``isolation.level``, librdkafka's default)."""
    return str(config.get("isolation.level", "read_committed")) == "read_committed"
