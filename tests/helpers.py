"""Helpers for integration tests: publish, run a worker, read what came out, read commits."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import confluent_kafka
import numpy as np
import psutil
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.codec import pack_input, unpack_output
from consumer.config import Settings, load_settings
from producer_tools.consumer_run import ConsumerProcess, consumer_env
from producer_tools.consumer_run import consumer_command as run_command
from producer_tools.reader import read_topic
from tests.conftest import FAST_GROUP

if TYPE_CHECKING:
    from consumer.worker import Worker

Record = tuple[bytes | None, bytes | None]
#: The ``topics`` fixture: ``topics("in", "out", partitions=3)`` makes fresh topics, returns their names.
Topics = Callable[..., list[str]]
ROOT = Path(__file__).resolve().parent.parent
#: The environment of a deployment under test: short group timeouts, quiet TensorFlow, this checkout,
#: and one worker unless a test passes ``--workers`` (the CPU default of two is run by the bench
#: test and the demo; two interpreters loading TensorFlow per test would slow the suite for nothing).
ENV = consumer_env(PYTHONPATH=str(ROOT), TFSTREAM_WORKERS="1")


def consumer_command(bootstrap: str, model: Path, inp: str, out: str, group: str, *extra: str) -> list[str]:
    """``python -m consumer run`` as a user types it, batches of 32, new groups from the beginning."""
    return run_command(bootstrap, model, inp, out, group, "--max-batch-size", "32", "--from-beginning", *extra)


def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    headers: list[tuple[str, bytes]] | None = None,
    timestamps: Sequence[int] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i, (key, value) in enumerate(records):
        extra = {"timestamp": timestamps[i]} if timestamps else {}
        producer.produce(topic, value, key, headers=headers, **extra)
    assert producer.flush(30) == 0


def publish_to_partition(bootstrap: str, topic: str, partition: int, ids: range, one_batch_each: bool = False) -> None:
    """Inputs with these ids (and 4 features equal to the id) to one partition. ``one_batch_each``
    sends each in its own produce request, so that the embedded broker's latest offset (which counts
    batches, not records: ../shared/BROKER.md) is right."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in ids:
        producer.produce(topic, pack_input(np.full(4, i, "float32"), id=i), partition=partition)
        if one_batch_each:
            assert producer.flush(30) == 0
    assert producer.flush(30) == 0


def settings(bootstrap: str, model: Path, input_topic: str, output_topic: str, group: str, **extra: Any) -> Settings:
    consumer = {**FAST_GROUP, **extra.pop("kafka_consumer", {})}
    values = dict(
        bootstrap_servers=bootstrap,
        model=model,
        input_topic=input_topic,
        output_topic=output_topic,
        group=group,
        max_batch_size=32,
        from_beginning=True,
        stop_at_end=True,
        kafka_consumer=consumer,
    )
    return load_settings({**values, **extra}, None, {})


def run_worker(s: Settings) -> dict[str, Any]:
    from consumer.worker import Worker

    return Worker(s).run()


class Background:
    """A worker running in a thread, for tests that stop it from outside."""

    def __init__(self, s: Settings, worker_class: type[Worker] | None = None) -> None:
        from consumer.worker import Worker

        self.worker = (worker_class or Worker)(s)
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.worker.run()
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 60) -> None:
        self.worker.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive()


def outputs(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[tuple[Message, dict[str, Any]]]:
    return [(m, unpack_output(m.value())) for m in read_topic(bootstrap, topic, timeout=timeout, min_count=count)]


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


class Trickle:
    """Publishes ``total`` inputs with ids ``first``.. in chunks, in a thread, so a test can act mid-stream."""

    def __init__(
        self, bootstrap: str, topic: str, total: int, chunk: int = 100, pause: float = 0.05, first: int = 0
    ) -> None:
        self.bootstrap, self.topic, self.total, self.chunk, self.pause = bootstrap, topic, total, chunk, pause
        self.first = first
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        one = np.ones(4, "float32")
        end = self.first + self.total
        for start in range(self.first, end, self.chunk):
            ids = range(start, min(start + self.chunk, end))
            publish(self.bootstrap, self.topic, ((str(i).encode(), pack_input(one, id=i)) for i in ids))
            time.sleep(self.pause)

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the publisher did not finish"


#: A deployment under test: raises with the process's last log lines when it fails.
Deployment = ConsumerProcess


def wait_for_outputs(bootstrap: str, topic: str, ids: set[int], timeout: float = 120) -> Counter[Any]:
    """Read ``topic`` until every id in ``ids`` has an output; return how often each id came out."""
    deadline = time.monotonic() + timeout
    while True:
        seen = Counter(unpack_output(m.value())["id"] for m in read_topic(bootstrap, topic, timeout=10))
        if ids <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def worker_pid(label: bytes) -> int:
    """The process id in a ``tfstream.worker`` header (``host/pid/slot/device``)."""
    return int(label.decode().split("/")[1])


def worker_labels(bootstrap: str, topic: str) -> Counter[bytes]:
    """How many outputs each worker (``tfstream.worker`` header) produced."""
    return Counter(dict(m.headers() or [])["tfstream.worker"] for m in read_topic(bootstrap, topic, timeout=10))


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka loaded (its wheel's own copy, else the system's)."""
    package = os.path.dirname(confluent_kafka.__file__)
    found = glob.glob(os.path.join(package, "..", "confluent_kafka.libs", "librdkafka*.so*"))
    found += glob.glob(os.path.join(package, ".dylibs", "librdkafka*.dylib"))
    path = found[0] if found else ctypes.util.find_library("rdkafka")
    assert path, "librdkafka not found beside confluent_kafka"
    return ctypes.CDLL(path)


def make_fatal(producer: Producer, code: int, reason: str = "injected by a test") -> None:
    """Put ``producer`` in librdkafka's fatal state, as a broker error it cannot recover from would
    (``rd_kafka_test_fatal_error``, librdkafka's own hook for testing this). The client's
    ``rd_kafka_t`` handle is the first field of confluent-kafka's ``Handle``, after the object header."""
    lib = _librdkafka()
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    handle = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    assert lib.rd_kafka_test_fatal_error(handle, code, reason.encode()) == 0, "librdkafka refused the fatal error"


def gone(process: psutil.Process, timeout: float = 30) -> bool:
    """Whether ``process`` ended within ``timeout`` (any process: a child, or one it left behind; a
    zombie has ended, whether or not whoever reaps orphans here has come for it yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            process.wait(0.2)
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            if time.monotonic() > deadline:
                return False


def limited_topics(bootstrap: str, **limits: int) -> list[str]:
    """New one-partition topics, each named after its keyword, with that ``max.message.bytes``."""
    return [configured_topic(bootstrap, name, {"max.message.bytes": str(limit)}) for name, limit in limits.items()]


def configured_topic(bootstrap: str, name: str, config: dict[str, str]) -> str:
    """A new one-partition topic named after ``name``, with that topic configuration."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, config=config)])[topic].result(30)
    return topic


def counted_then_killed(
    _settings: Settings, _slot: Any, report: Any, _scratch: str, _hold_at_end: bool, tally: Any
) -> None:
    """A worker run (``child.worker_main``'s arguments) that counts, reports a status older than its
    counts, as a worker's status once a second is, and is SIGKILLed before its next one."""
    from consumer.counts import Counters

    counters = Counters(tally=tally)
    counters.add(consumed=3, predicted=3, batches=1)
    report.send(("status", {"counts": counters.snapshot(), "traces_after_warmup": 0}))
    counters.add(consumed=700, predicted=690, dead_lettered=10, batches=20, padded_rows=6)  # its last second
    os.kill(os.getpid(), signal.SIGKILL)


def alert_rules() -> list[dict[str, Any]]:
    """The rules of ``examples/alerts.yml``, the README's alerting rules."""
    import yaml

    loaded = yaml.safe_load((ROOT / "examples" / "alerts.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def documented_metrics() -> set[str]:
    """The metric families in the README's table (Metrics and health)."""
    import re

    readme = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `(tfstream_\w+)` \|", readme, flags=re.MULTILINE))


def metric_family(series: str) -> str:
    """The family a scraped series belongs to: ``_bucket``, ``_sum``, ``_count`` and ``_created`` dropped."""
    import re

    return re.sub(r"_(bucket|sum|count|created)$", "", series)


def alert_metrics() -> set[str]:
    """The tfstream series the alerting rules read (``_bucket`` and ``_total`` kept, as scraped)."""
    import re

    return {name for rule in alert_rules() for name in re.findall(r"\btfstream_\w+", rule["expr"])}
