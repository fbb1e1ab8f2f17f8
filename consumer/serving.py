"""The predict thread: the pipeline's batches through the served model, their outputs to the outbox.

It runs beside the worker's fetch loop (``consumer/worker.py``), which never runs the model.
Between two batches it swaps in a version the model watcher prepared (``consumer/reload.py``), so
no batch is mixed across versions. A batch the model fails on is retried one input at a time; an
input that still fails goes to the dead-letter topic, and the others are answered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Message

from consumer.apart import run_apart
from consumer.dead_lettering import DeadLetters
from consumer.delivery import Outbox
from consumer.logs import Sampled
from consumer.metrics import WorkerMetrics
from consumer.outputs import Emitter
from consumer.pipeline import Batch, Inputs, Pipeline
from consumer.predictor import MODEL_FAILURES, model_failure
from consumer.reload import Served, Watcher, release_unreachable
from consumer.timing import moving_average
from consumer.tombstones import around


class Serving:
    """Runs each batch through the served model and emits its outputs (the predict thread's target)."""

    def __init__(
        self,
        served: Served,
        pipeline: Pipeline,
        emitter: Emitter,
        dead_letters: DeadLetters,
        outbox: Outbox,
        watcher: Watcher | None,
        metrics: WorkerMetrics | None,
        log: Any,
    ) -> None:
        self.predictor = served.predictor
        self.model_info = served.info
        self.pipeline, self.emitter, self.dead_letters, self.outbox = pipeline, emitter, dead_letters, outbox
        self.watcher, self.metrics, self.log = watcher, metrics, log
        self.warm_traces = self.predictor.trace_count
        self._traces_before = 0  # traces after warm-up of the models served before this one
        self.batch_started_at: float | None = None  # monotonic; set while a batch runs
        #: monotonic; set while this thread waits for tf.data's next batch, and while the model runs
        self._waiting_since: float | None = None
        self._model_since: float | None = None
        #: how long a batch keeps this thread busy (predict, emit), a moving average; 0 until one ran
        self.batch_seconds = 0.0
        self.failure: BaseException | None = None  # what ended the thread, for the fetch loop to raise
        #: a model that raises on every batch would write a line a batch
        self.failed_batches = Sampled(log, "predict failed on a batch; running its inputs apart")

    def tick_logs(self) -> None:
        """Write what the sampled warnings held, once their window is over (the fetch loop's turn)."""
        self.failed_batches.tick()
        self.dead_letters.warnings.tick()

    def flush_logs(self) -> None:
        self.failed_batches.flush()
        self.dead_letters.warnings.flush()

    @property
    def traces_after_warmup(self) -> int:
        return self._traces_before + self.predictor.trace_count - self.warm_traces

    def run(self) -> None:
        # held here, not only by the loop: a failure leaving the loop must not tear the dataset down
        # before ``abandon`` has woken tf.data's thread (the teardown waits for that thread)
        batches = self.pipeline.batches()
        try:
            while (item := self._next_batch(batches)) is not None:
                self._predict(*item)
                self.pipeline.mark_finished()
        except BaseException as exc:
            self.failure = exc
            self.pipeline.abandon()

    def _next_batch(self, batches: Iterator[tuple[Batch, Inputs]]) -> tuple[Batch, Inputs] | None:
        self._waiting_since = time.monotonic()
        try:
            return next(batches, None)
        finally:
            self._waiting_since = None

    def stalled_for(self, now: float) -> float | None:
        """How long the batches in the pipeline have not moved: the model running one call, or tf.data
        (decoding, preprocessing) not giving this thread the next batch put in; None while they move
        on or there are none. Not the time outputs wait for the producer (a broker out of reach).
        Any thread."""
        model_since, waiting_since, oldest = self._model_since, self._waiting_since, self.pipeline.oldest_put_at()
        if model_since is not None:
            return now - model_since
        if waiting_since is not None and oldest is not None:
            return now - max(waiting_since, oldest)
        return None

    def _run_model(self, inputs: Inputs, size: int) -> dict[str, Any]:
        self._model_since = time.monotonic()
        try:
            return self.predictor.run(inputs, size)
        finally:
            self._model_since = None

    def _swap_if_ready(self) -> None:
        """Between two batches: serve the version the watcher prepared, release the old one."""
        served = self.watcher.take() if self.watcher is not None else None
        if served is None:
            return
        old = self.model_info
        self._traces_before += self.traces_after_warmup
        self.predictor = self.pipeline.predictor = served.predictor
        self.warm_traces = served.predictor.trace_count
        self.model_info = served.info
        self.batch_seconds = 0.0  # another model: its own time a batch
        self.emitter.set_model(self.model_info)
        self.dead_letters.model = self.model_info
        del served
        release_unreachable()
        if self.metrics is not None:
            self.metrics.serving(self.model_info["version"])
        self.log.info("model version swapped", previous=old["version"], serving=self.model_info["version"])

    def _predict(self, batch: Batch, inputs: Inputs) -> None:
        self._swap_if_ready()
        self.batch_started_at = started = time.monotonic()
        try:
            self._predict_batch(batch, inputs)
        finally:
            self.batch_started_at = None
        self.batch_seconds = moving_average(self.batch_seconds, time.monotonic() - started)
        if self.pipeline.in_flight() <= 1:  # no batch behind this one: its outputs need not linger
            self.outbox.send_now()

    def _predict_batch(self, batch: Batch, inputs: Inputs) -> None:
        if not batch.rows:  # every input failed before predict
            self.emitter.emit(batch, None)
            return
        started = time.perf_counter()
        bucket = self.predictor.bucket_for(batch.rows)
        try:
            outputs = self._run_model(inputs, bucket)
        except MODEL_FAILURES as exc:
            self.failed_batches.warning(type(exc).__name__, error=str(exc))
            with self.outbox.lock:  # one unit of a transaction, like any batch
                tombstones, batch.tombstones = batch.tombstones, []  # each sent in its place among the rows
                self.emitter.emit(batch, None)
                self._predict_apart(batch, inputs, tombstones)
            return
        rows = {name: value[: batch.rows] for name, value in outputs.items()}
        predicted = time.perf_counter()
        self._time_stages(batch, predicted - started)
        self.emitter.emit(batch, rows, bucket, (predicted - started) * 1000)
        self.outbox.timeline.stage("emit", time.perf_counter() - predicted)

    def _time_stages(self, batch: Batch, predict_s: float) -> None:
        """The batch's stages up to predict (``consumer.timing.STAGES``); its ``emit`` and
        ``acknowledge`` are timed as they end."""
        if self.metrics is not None:
            self.metrics.batch(batch.rows)
        timeline = self.outbox.timeline
        opened_at = batch.closed_at if batch.opened_at is None else batch.opened_at
        timeline.stage("batching", max(0.0, batch.closed_at - opened_at))
        timeline.stage("queue", max(0.0, (self.batch_started_at or batch.closed_at) - batch.closed_at))
        timeline.stage("predict", predict_s)

    def _predict_apart(self, batch: Batch, inputs: Inputs, tombstones: list[Message]) -> None:
        """A batch the model failed, predicted in parts between its tombstones (each sent in its place)."""
        for rows, after in around(batch.coords, tombstones):
            self._predict_rows(batch, inputs, list(rows))
            self.emitter.settle_tombstones(after)

    def _predict_rows(self, batch: Batch, inputs: Inputs, rows: list[int]) -> None:
        """Rows of a batch the model failed, in parts (``run_apart``): each part's outputs sent as it
        ends, each row the model fails alone a dead letter."""
        for part, result in run_apart(self._run_model, self.predictor.bucket_for, inputs, rows):
            if isinstance(result, Exception):
                self.dead_letters.send(batch.messages[part[0]], model_failure(result))
            else:
                self.emitter.emit(batch.rows_at(part), result, self.predictor.bucket_for(len(part)), 0.0)
