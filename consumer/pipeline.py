"""The tf.data pipeline from closed Kafka batches to padded model inputs.

    fetch loop ──put()──▶ bounded queue ──▶ numpy_function: decode + validate (bad → DLQ)
        ──▶ [map: per-example preprocess, pad]  ──▶ prefetch ──▶ batches() in the predict thread

Decoding of batch N+1 runs in tf.data's own thread while batch N is predicted. Whole
batches cross into TensorFlow. A preprocess error drops its batch from the dataset
(``ignore_errors``); ``batches()`` notices the gap and redoes that batch one example at a time,
so only the bad inputs go to the dead-letter topic.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from confluent_kafka import Message

from consumer import tombstones as tombstone_rules
from consumer.codec import Limits
from consumer.errors import InputError, PreprocessError
from consumer.halves import in_halves
from consumer.model import tf_dtype
from consumer.offsets import Partition
from consumer.predictor import Predictor
from consumer.preprocess import Preprocess, check_gives, map_batch, raw_signature, vectorizes
from consumer.ragged import column_dtypes, feed, flat_columns, map_examples, unflat_columns
from consumer.validate import BatchDecoder, pad_rows, stack

Inputs = dict[str, Any]
PROBE = "probe"
#: the id of the element after the last batch (batch ids are >= 0, probes' < 0 and far above this)
END = -(2**62)
#: a closed batch's messages, their ((topic, partition), offset) and their timestamps (ms)
Closed = tuple[list[Message], list[tuple[Partition, int]], list[int]]


def rows_of(indices: list[int], *columns: list[Any]) -> tuple[list[Any], ...]:
    """These rows of parallel columns (messages, coordinates, timestamps, ids), in this order."""
    return tuple([column[i] for i in indices] for column in columns)


@dataclass
class Batch:
    """The valid messages of one closed batch, in row order, with their coordinates and timestamps
    (read once, by the fetch loop), stacked inputs and ids."""

    id: int
    messages: list[Message]
    coords: list[tuple[Partition, int]]
    timestamps: list[int]
    inputs: dict[str, np.ndarray]
    ids: list[tuple[Any, bool]]
    closed_at: float
    #: inputs of this batch that failed before predict, sent to the dead-letter topic with its outputs
    dead: list[tuple[Message, InputError]] = field(default_factory=list)
    #: when its first input reached the fetch loop (``time.monotonic``, like ``closed_at``)
    opened_at: float | None = None
    #: inputs without a value that ``--tombstones`` skips or forwards (``consumer.tombstones``), in order
    tombstones: list[Message] = field(default_factory=list)

    def row(self, index: int) -> Batch:
        """Row ``index`` alone, as a batch of one."""
        return self.rows_at([index])

    def rows_at(self, indices: list[int]) -> Batch:
        """These rows alone, in this order (their dead letters stay with this batch)."""
        inputs = {name: column[indices] for name, column in self.inputs.items()}
        messages, coords, timestamps, ids = rows_of(indices, self.messages, self.coords, self.timestamps, self.ids)
        return Batch(self.id, messages, coords, timestamps, inputs, ids, self.closed_at, opened_at=self.opened_at)

    @property
    def rows(self) -> int:
        return len(self.messages)


def pad_to(inputs: Inputs, size: int) -> Inputs:
    """Pad every input along the batch axis to ``size`` rows (zeros, or empty strings)."""
    padded = {}
    for name, value in inputs.items():
        value = tf.convert_to_tensor(value)
        missing = tf.cast(size, tf.int32) - tf.shape(value)[0]
        filler = tf.zeros(tf.concat([[missing], tf.shape(value)[1:]], 0), dtype=value.dtype)
        padded[name] = tf.concat([value, filler], 0)
    return padded


def padded_rows(inputs: Inputs, rows: Sequence[int], size: int) -> Inputs:
    """These rows of a batch's inputs, in order, padded to ``size`` rows (a model run on part of a batch)."""
    return pad_to({name: tf.gather(value, list(rows)) for name, value in inputs.items()}, size)


class Pipeline:
    """Owns the queue of closed batches and the tf.data dataset that consumes it."""

    def __init__(
        self,
        predictor: Predictor,
        limits: Limits,
        depth: int,
        preprocess: Preprocess | None = None,
        reject_non_finite: bool = False,
        tombstones: tombstone_rules.Mode = tombstone_rules.DEAD_LETTER,
    ) -> None:
        self.predictor = predictor
        self.tombstones = tombstones
        self.signature = predictor.model.signature
        self.limits = limits
        self.reject_non_finite = reject_non_finite
        self.preprocess = preprocess
        self.raw_signature = raw_signature(self.signature, preprocess)
        self._queue: queue.Queue[tuple[int, Closed, float, float | None] | None] = queue.Queue(maxsize=depth)
        self._registry: dict[int, Batch] = {}
        self._next_id = 0
        self.finished = 0
        #: when each batch put in and not yet through was put (``time.monotonic``), oldest first
        self._put_at: deque[float] = deque()
        self._closed = False
        self._end_queued = False
        self.failure: BaseException | None = None
        if preprocess is not None:
            self._check_preprocess()
        #: the preprocess function runs over a whole batch at once, not example by example (``vectorizes``)
        self.vectorized = preprocess is not None and self._fixed_inputs and vectorizes(preprocess, self.raw_signature)
        self._transform = self._build_transform(self.vectorized) if preprocess else None
        #: what a batch dropped by a preprocess error is redone with, example by example: a
        #: vectorized function that failed on the batch is not trusted to find which example failed
        self._transform_each = self._build_transform(False) if self.vectorized else self._transform
        self.decoder = BatchDecoder(self.raw_signature, limits, reject_non_finite)
        self._no_rows = stack([], self.raw_signature, 0)

    # -- fetch-loop side -------------------------------------------------------------------
    def has_room(self) -> bool:
        return not self._queue.full()

    def put(self, batch: Closed, opened_at: float | None) -> None:
        """Hand a closed batch to the pipeline; blocks while the queue is full (see ``has_room``).
        ``opened_at``: when its first input reached the fetch loop (``time.monotonic``)."""
        if self._closed or not batch[0]:
            return
        now = time.monotonic()
        self._put_at.append(now)
        self._queue.put((self._next_id, batch, now, opened_at))
        self._next_id += 1

    def close(self, timeout: float) -> bool:
        """No more batches: the dataset ends after the ones already queued. Waits at most ``timeout``
        for room in the queue for that end (never without bound: a dead predict thread never makes
        room); False if there was none (call again while the predict thread is alive)."""
        self._closed = True
        if not self._end_queued:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return False
            self._end_queued = True
        return True

    def abandon(self) -> None:
        """The predict thread has failed: take no more batches, and wake tf.data's thread if it waits
        for one, so the dataset can be torn down (the teardown waits for that thread: on a quiet
        stream, until the next batch came)."""
        self._closed = True
        with contextlib.suppress(queue.Full):  # full: batches are waiting, its next wait ends at once
            self._queue.put_nowait(None)

    # -- tf.data side ----------------------------------------------------------------------
    def _generate(self) -> Iterator[tuple[int, int, int, Inputs]]:
        try:
            last_id = -1
            while (item := self._next_item(probe=self._transform is not None and last_id >= 0)) is not None:
                if item == PROBE:
                    yield self._probe(last_id)
                    last_id = -1
                    continue
                batch = self._decode(*item)
                self._registry[batch.id] = batch
                last_id = batch.id
                bucket = self.predictor.bucket_for(batch.rows)
                rows = batch.rows if self.preprocess else bucket
                yield batch.id, batch.rows, bucket, pad_rows(batch.inputs, self.raw_signature, rows)
        except BaseException as exc:  # a bug here must end the run, not vanish in tf.data
            self.failure = exc
            raise

    def _next_item(self, probe: bool) -> Any:
        """The next closed batch; with ``probe``, PROBE when none comes within 20 ms."""
        try:
            return self._queue.get(timeout=0.02) if probe else self._queue.get()
        except queue.Empty:
            return PROBE

    def _probe(self, last_id: int) -> tuple[int, int, int, Inputs]:
        """A zero-row element saying "batches up to ``last_id`` have passed the map": any of
        them missing at the predict side was dropped by a preprocess error."""
        size = self.predictor.batch_sizes[0]
        return -(last_id + 1), 0, size, stack([], self.raw_signature, 0)

    def _decode(self, batch_id: int, closed: Closed, closed_at: float, opened_at: float | None) -> Batch:
        """The batch's valid rows; the others ride along as dead letters (a batch may have no rows)."""
        messages, coords, timestamps = closed
        tombstones: list[Message] = []
        if self.tombstones != tombstone_rules.DEAD_LETTER:  # else not a look at each message
            kept, tombstones = tombstone_rules.set_aside(self.tombstones, messages)
            if tombstones:
                messages, coords, timestamps = rows_of(kept, messages, coords, timestamps)
        decoded = self.decoder.decode([msg.value() for msg in messages])
        dead = [(messages[index], error) for index, error in decoded.failures]
        if len(decoded.rows) < len(messages):
            messages, coords, timestamps = rows_of(decoded.rows, messages, coords, timestamps)
        inputs, ids = decoded.inputs, decoded.ids
        return Batch(batch_id, messages, coords, timestamps, inputs, ids, closed_at, dead, opened_at, tombstones)

    def dataset(self) -> tf.data.Dataset:
        """Each element is one call of ``_generate``'s next step through ``tf.numpy_function``: a
        third of ``from_generator``'s cost per element (measured here: 0.3-0.5 ms against 0.9 ms),
        with the same thread, order and error behaviour. The end of the batches is an element with
        id ``END``."""
        specs = self.raw_signature.inputs
        elements = self._generate()

        def next_element(_: Any) -> list[Any]:
            batch_id, rows, bucket, inputs = next(elements, (END, 0, 0, self._no_rows))
            return [np.int64(batch_id), np.int64(rows), np.int64(bucket), *flat_columns(inputs, specs)]

        def element(index: tf.Tensor) -> tuple[Any, Any, Any, Inputs]:
            flat = tf.numpy_function(next_element, [index], column_dtypes(specs), stateful=True, name="next_batch")
            scalars = [tf.ensure_shape(t, ()) for t in flat[:3]]
            return scalars[0], scalars[1], scalars[2], unflat_columns(flat[3:], specs)

        ds = tf.data.Dataset.range(2**62).map(element)
        if self._transform is not None:
            transform = self._transform
            ds = ds.map(
                lambda i, n, b, x: (i, n, b, transform(x, b)),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            ).ignore_errors()
        ds = ds.prefetch(1)
        if self._transform is None:
            # nothing to tune without a parallel map; tf.data's autotuning thread made the iterator's
            # teardown wait out its sleep, 3.6-4.3 s in about a third of bounded runs' ends
            options = tf.data.Options()
            options.autotune.enabled = False
            ds = ds.with_options(options)
        return ds

    @property
    def _only_input(self) -> str | None:
        """The name of a single-input model's input (the preprocess function gets and gives a
        tensor, not a dict); None for a model of named inputs."""
        return None if self.signature.named_inputs else self.signature.inputs[0].name

    @property
    def _fixed_inputs(self) -> bool:
        """Whether every input messages carry has one fixed shape (none of any size)."""
        return not any(spec.variable for spec in self.raw_signature.inputs)

    def _build_transform(self, vectorized: bool) -> Callable[[Inputs, Any], Inputs]:
        preprocess, signature = self.preprocess, self.signature
        assert preprocess is not None
        out_specs = {s.name: tf.TensorSpec(s.shape, tf_dtype(s)) for s in signature.inputs}
        only = self._only_input

        raw_specs, fixed = self.raw_signature.inputs, self._fixed_inputs

        @tf.function(reduce_retracing=True)
        def transform(raw: Inputs, bucket: Any) -> Inputs:
            if not fixed:
                mapped = map_examples(preprocess, raw, raw_specs, out_specs, only)
            elif vectorized:
                mapped = map_batch(preprocess, raw, out_specs, only)
            elif only is not None:
                mapped = {only: tf.map_fn(preprocess, raw[only], fn_output_signature=out_specs[only])}
            else:
                mapped = tf.map_fn(preprocess, raw, fn_output_signature=out_specs)
            return pad_to(mapped, bucket)

        return transform  # takes ``feed``'s form: the dataset's elements, or ``_fed`` rows

    def _check_preprocess(self) -> None:
        """Trace the preprocess function once, now, for one input, and hold what it returns against
        what the model takes: a function that cannot give the model its inputs (a shape, a dtype,
        a name), or cannot run in a graph, is a ``PreprocessMismatch`` before the worker is ready.
        Found by tf.data, a wrong shape failed every worker at its first batch, and they restarted
        for good; a wrong dtype only made TensorFlow log an error and every batch fail."""
        assert self.preprocess is not None
        check_gives(self.preprocess, self.raw_signature, self.signature)

    # -- predict-thread side -------------------------------------------------------------
    def batches(self) -> Iterator[tuple[Batch, Inputs]]:
        """Padded model inputs per batch, in order; the caller says when each is through
        (``mark_finished``), once its records are sent."""
        yield from self._ordered()

    def mark_finished(self) -> None:
        """One more batch is through (its records handed to the producer); one thread calls it."""
        self.finished += 1
        if self._put_at:
            self._put_at.popleft()

    def oldest_put_at(self) -> float | None:
        """When the oldest batch not yet through was put in (``time.monotonic``); None if none. Any thread."""
        try:
            return self._put_at[0]
        except IndexError:
            return None

    def idle(self) -> bool:
        """Every batch put in has been predicted and sent."""
        return self.finished >= self._next_id

    def in_flight(self) -> int:
        """Batches put in and not yet through (predicted and sent)."""
        return self._next_id - self.finished

    def _ordered(self) -> Iterator[tuple[Batch, Inputs]]:
        """Batches in order; batches dropped by preprocess are redone."""
        for element_id, _rows, _bucket, inputs in self.dataset():
            batch_id = int(element_id)
            if batch_id == END:
                break
            if batch_id < 0:  # a probe: everything before it has passed
                yield from self._redo_dropped(before=-batch_id)
                continue
            yield from self._redo_dropped(before=batch_id)
            yield self._registry.pop(batch_id), inputs
        yield from self._redo_dropped(before=None)
        if self.failure is not None:
            raise self.failure

    def _redo_dropped(self, before: int | None) -> Iterator[tuple[Batch, Inputs]]:
        for batch_id in sorted(self._registry):
            if before is not None and batch_id >= before:
                return
            yield self._isolate_preprocess(self._registry.pop(batch_id))

    def _isolate_preprocess(self, batch: Batch) -> tuple[Batch, Inputs]:
        """A batch the preprocess function failed: the inputs it fails on are dead letters, the
        others go on together."""
        good, failed = self._split_failures(batch, list(range(batch.rows)))
        kept = batch.rows_at(good)
        kept.dead = [
            *batch.dead,
            *(
                (batch.messages[row], PreprocessError(f"preprocess raised {type(exc).__name__}: {exc}"))
                for row, exc in failed
            ),
        ]
        kept.tombstones = batch.tombstones
        if not good:
            return kept, {}
        return kept, self._preprocessed(kept, self.predictor.bucket_for(kept.rows))

    def _split_failures(self, batch: Batch, rows: list[int]) -> tuple[list[int], list[tuple[int, Exception]]]:
        """Of a failed run's ``rows``, those the preprocess function passes and those it fails, with
        its error, in order (``in_halves``): each half run as the dataset runs it; a single row is
        run alone, example by example, which decides."""
        assert self._transform is not None and self._transform_each is not None
        through, each = self._transform, self._transform_each
        good: list[int] = []
        failed: list[tuple[int, Exception]] = []
        parts = in_halves(
            rows, lambda part: self._failure(through, batch, part), lambda one: self._failure(each, batch, one)
        )
        for part, failure in parts:
            if isinstance(failure, Exception):
                failed.append((part[0], failure))
            else:
                good += part
        return good, failed

    def _failure(self, transform: Callable[[Inputs, Any], Inputs], batch: Batch, rows: list[int]) -> Exception | None:
        """What ``transform`` raised on these rows of ``batch``; None if it passed them."""
        try:
            transform(self._fed(batch.rows_at(rows)), tf.constant(len(rows), tf.int64))
        except Exception as exc:
            return exc
        return None

    def _preprocessed(self, batch: Batch, bucket: int) -> Inputs:
        """The model's inputs for rows the preprocess function passed one by one, padded to
        ``bucket`` rows: as the dataset runs it, or where that fails example by example."""
        assert self._transform is not None and self._transform_each is not None
        size = tf.constant(bucket, tf.int64)
        if self._transform is not self._transform_each:
            with contextlib.suppress(Exception):
                return self._transform(self._fed(batch), size)
        return self._transform_each(self._fed(batch), size)

    def _fed(self, batch: Batch) -> Inputs:
        """A batch's stacked inputs as the transform takes them (``ragged.feed``)."""
        return feed(batch.inputs, self.raw_signature.inputs)
