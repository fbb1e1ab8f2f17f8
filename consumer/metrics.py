"""Prometheus metrics for the whole supervisor, aggregated across its worker processes.

``prometheus_client``'s multiprocess mode: every process (supervisor and workers) writes its
values to files in one directory, and the supervisor's endpoint reads them all. The directory
must be in the environment before ``prometheus_client`` is imported in any of these processes,
so the supervisor sets it before it starts a worker (``spawn`` children inherit it) and this
module imports ``prometheus_client`` only inside functions. Metrics are off unless
``metrics_port`` is set; then every method here is a no-op-free, cheap per-batch call.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "tfstream_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
PREDICT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def prepare_directory() -> str:
    """A fresh directory for this supervisor's metric files, put in the environment (before any
    ``prometheus_client`` import, here or in a worker)."""
    directory = tempfile.mkdtemp(prefix="tfstream-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def enabled() -> bool:
    return MULTIPROC_ENV in os.environ


class WorkerMetrics:
    """What one worker process records. Created only when metrics are enabled."""

    def __init__(self, worker: int, device: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        label = {"worker": str(worker)}
        self.labels = label

        def counter(name: str, doc: str, *extra: str) -> Any:
            return Counter(PREFIX + name, doc, ["worker", *extra], registry=None)

        self.consumed = counter("messages_consumed_total", "input messages fetched").labels(**label)
        self.predicted = counter("messages_predicted_total", "inputs whose prediction was produced").labels(**label)
        self.skipped = counter(
            "messages_skipped_total", "inputs done without an output: outside the time window, or tombstones"
        ).labels(**label)
        self.dead_lettered = counter("messages_dead_lettered_total", "inputs sent to the dead-letter topic", "reason")
        self.produced = counter("records_produced_total", "records the broker acknowledged", "kind")
        self.padded = counter("padding_rows_total", "rows added to fill batches to a compiled size").labels(**label)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(PREFIX + name, doc, ["worker"], registry=None, buckets=buckets).labels(**label)

        self.batch_rows = histogram("batch_rows", "inputs per batch", ROWS_BUCKETS)
        #: the worker's stages, per batch (``consumer.timing.STAGES``; the queue wait keeps its coarser buckets)
        self._stages = {
            "batching": histogram(
                "batching_seconds", "from a batch's first input reaching the fetch loop to the batch closing",
                PREDICT_BUCKETS,
            ),
            "queue": histogram("queue_wait_seconds", "from a batch closing to its predict starting", LATENCY_BUCKETS),
            "predict": histogram("predict_seconds", "predict time of one batch", PREDICT_BUCKETS),
            "emit": histogram(
                "emit_seconds", "packing a batch's outputs and handing them to the producer", PREDICT_BUCKETS
            ),
            "acknowledge": histogram(
                "acknowledge_seconds", "from a batch's outputs handed to the producer to the last acknowledged",
                PREDICT_BUCKETS,
            ),
        }  # fmt: skip
        self.latency_seconds = histogram(
            "end_to_end_latency_seconds", "output acknowledged minus input record timestamp", LATENCY_BUCKETS
        )
        self.consume_latency_seconds = histogram(
            "consume_latency_seconds", "input consumed by the worker minus its record timestamp", LATENCY_BUCKETS
        )
        self.lag = Gauge(
            PREFIX + "consumer_lag", "messages behind the partition's end (librdkafka statistics)",
            ["topic", "partition"], registry=None, multiprocess_mode="livesum",
        )  # fmt: skip
        self.in_flight = Gauge(
            PREFIX + "in_flight_messages", "fetched inputs not done yet", ["worker"], registry=None,
            multiprocess_mode="livesum",
        ).labels(**label)  # fmt: skip
        self.traces = Gauge(
            PREFIX + "traces_since_warmup", "predict function traces after warm-up (should stay 0)", ["worker"],
            registry=None, multiprocess_mode="livesum",
        ).labels(**label)  # fmt: skip
        self.ready = Gauge(
            PREFIX + "worker_ready", "1 when the worker is warmed up, in the group and not stuck", ["worker"],
            registry=None, multiprocess_mode="livemax",
        ).labels(**label)  # fmt: skip
        self.assigned = Gauge(
            PREFIX + "assigned_partitions", "input partitions the worker owns (0: idle in the group)", ["worker"],
            registry=None, multiprocess_mode="livesum",
        ).labels(**label)  # fmt: skip
        Gauge(
            PREFIX + "worker_info", "one per live worker: its device", ["worker", "device"], registry=None,
            multiprocess_mode="livemax",
        ).labels(worker=str(worker), device=device).set(1)  # fmt: skip
        self._lagging: set[tuple[str, int]] = set()
        #: ``Counters`` names → their Prometheus counters
        self._counted = {
            "consumed": self.consumed, "predicted": self.predicted, "skipped": self.skipped, "padded_rows": self.padded,
        }  # fmt: skip
        self.reloads = counter("model_reloads_total", "new model versions loaded or rejected", "result")
        self.version = Gauge(
            PREFIX + "model_version_serving", "the version number being served (0: not a versioned directory)",
            ["worker"], registry=None, multiprocess_mode="livemax",
        ).labels(**label)  # fmt: skip

    def model_reload(self, result: str) -> None:
        self.reloads.labels(result=result, **self.labels).inc()

    def serving(self, version: str) -> None:
        self.version.set(int(version) if version.isdigit() else 0)

    def count(self, amounts: dict[str, int]) -> None:
        """Mirror of ``Counters.add``: the counts that have a Prometheus counter."""
        for name, amount in amounts.items():
            metric = self._counted.get(name)
            if metric is not None:
                metric.inc(amount)

    def dead_letter(self, reason: str) -> None:
        self.dead_lettered.labels(reason=reason, **self.labels).inc()

    def acknowledged(self, kind: str, latencies_s: Iterable[float]) -> None:
        count = 0
        for latency in latencies_s:
            self.latency_seconds.observe(latency)
            count += 1
        self.produced.labels(kind=kind, **self.labels).inc(count)

    def consumed_at(self, ages_s: Iterable[float]) -> None:
        """How old the inputs just fetched were (their record timestamps against now)."""
        for age in ages_s:
            self.consume_latency_seconds.observe(age)

    def batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)

    def stage(self, name: str, seconds: float) -> None:
        """One batch's time in one of the worker's stages (``consumer.timing.STAGES``)."""
        self._stages[name].observe(seconds)

    def lags(self, lags: dict[tuple[str, int], int]) -> None:
        """Consumer lag per assigned partition (``kafka_io.partition_lags``)."""
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(lag)
        for topic, partition in self._lagging - lags.keys():  # no longer ours: its new owner reports it
            self.lag.labels(topic=topic, partition=str(partition)).set(0)
        self._lagging = set(lags)


def render() -> tuple[bytes, str]:
    """The aggregated exposition text of every process writing to the metrics directory."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def restarts_counter() -> Any:
    from prometheus_client import Counter

    return Counter(PREFIX + "worker_restarts_total", "workers restarted after dying", ["worker"], registry=None)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
