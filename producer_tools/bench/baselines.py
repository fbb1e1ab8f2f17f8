"""What the system is measured against: its two limits and the approaches users usually write.

Each function returns messages (examples) per second. The slow approaches run for a time budget
rather than the whole backlog: per-message ``model.predict`` manages tens of messages a second.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from consumer.child import when_parent_dies
from consumer.signature import DEFAULT_SIGNATURE, STRING, TensorSpec
from consumer.user_code import prepare_keras
from producer_tools.bench.workloads import ModelCode, ModelInputs, Workload
from producer_tools.clients import close_consumer, kafka_consumer, kafka_producer
from producer_tools.publish import produce
from producer_tools.reader import partitions_of

#: The relay's ways of fetching; the I/O limit is the faster. librdkafka's own prefetches
#: aggressively (up to 64 MiB), right for most brokers. "lean" fetches a partition again only once
#: its last fetch was consumed, checking every 15 ms: on the embedded broker the same relay ran
#: about twice as fast that way (2026-12-01), so measured one way only, the limit would have been
#: librdkafka's settings', not the I/O's.
RELAY_FETCH: dict[str, Mapping[str, Any]] = {
    "librdkafka": {},
    "lean": {"queued.min.messages": 1, "fetch.queue.backoff.ms": 15},
}


def _consumer(bootstrap: str, topic: str, fetch: Mapping[str, Any] | None = None) -> Consumer:
    consumer = kafka_consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{os.getpid()}",
            "enable.auto.commit": False,
            **(fetch or {}),
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions_of(consumer, topic)])
    return consumer


#: records the relay's producer holds unacknowledged (librdkafka's default): a run of fewer
#: messages than a few times this measures a burst into the queue, not the relay's steady rate
RELAY_QUEUE = 100_000


def _producer(bootstrap: str) -> Producer:
    return kafka_producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "lz4",
            "acks": "all",
            "queue.buffering.max.messages": RELAY_QUEUE,
        }
    )


def io_limit(bootstrap: str, source: str, target: str, count: int, fetch: Mapping[str, Any] | None = None) -> float:
    """A bare relay: consume batches → msgpack decode → produce; no model. First consumed to last acked."""
    consumer, producer = _consumer(bootstrap, source, fetch), _producer(bootstrap)
    seen, started = 0, None
    while seen < count:
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            if msg.error() is not None:
                continue
            started = started or time.perf_counter()
            msgpack.unpackb(msg.value(), raw=False)
            produce(producer, target, msg.value(), msg.key())
            seen += 1
        producer.poll(0)
    producer.flush(60)
    close_consumer(consumer)
    return count / (time.perf_counter() - (started or time.perf_counter()))


def compute_limit(workload: Workload, typed: ModelInputs, min_seconds: float = 3.0) -> tuple[float, float]:
    """The bare precompiled predict function at the batch size, on ``typed`` in memory (the model's
    inputs: ``Workload.model_inputs``).

    Returns (examples/s, seconds of one full batch)."""
    from consumer.predictor import Predictor

    predictor = Predictor(workload.model, [workload.batch_size])
    predictor.warm_up()
    size = workload.batch_size
    rows = len(next(iter(typed.values())))
    batches = [
        {name: values[i : i + size] for name, values in typed.items()} for i in range(0, rows - size + 1, size)
    ] or [predictor_inputs(workload, typed, size)]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds or done < 3:
        predictor.run(batches[done % len(batches)], size)
        done += 1
    seconds = time.perf_counter() - started
    return done * size / seconds, seconds / done


def predictor_inputs(workload: Workload, typed: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A full batch when fewer rows than one batch exist: the rows (``Workload.model_inputs``) repeated."""
    return {s.name: np.resize(typed[s.name], (size, *s.fixed_shape)) for s in workload.signature.inputs}


#: the model as glue code calls it on a batch, inputs by name
GlueCall = Callable[[dict[str, np.ndarray]], Any]


def glue_call(path: Path, how: str, signature: str = DEFAULT_SIGNATURE) -> GlueCall | None:
    """The model as glue code calls it on a batch: ``model.predict``, or a ``tf.function``, given its
    inputs as it takes them (one array, a list or a dict). A SavedModel is called through its serving
    signature (a concrete function); Keras 3 gives it no ``model.predict``, so that approach does not
    apply to it (None)."""
    import keras
    import tensorflow as tf

    from consumer.model import keras_arranger

    if path.is_dir():
        if how == "predict":
            return None
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures[signature]

        def call_signature(x: dict[str, np.ndarray]) -> Any:
            assert loaded is not None  # referenced here so the variables the signature reads stay alive
            return serve(**{name: tf.constant(value) for name, value in x.items()})

        return call_signature
    model = keras.saving.load_model(path, compile=False)
    arrange = keras_arranger(model)

    def as_taken(x: dict[str, np.ndarray]) -> Any:  # Keras takes no object arrays: strings as tensors
        return arrange({k: tf.constant(v) if v.dtype == object else v for k, v in x.items()})

    if how == "predict":
        return lambda x: model.predict(as_taken(x), verbose=0)
    step = tf.function(lambda x: model(x, training=False))
    return lambda x: step(as_taken(x))


def _first_output(outputs: Any) -> np.ndarray:
    """A model's output, or the first of its outputs (a dict or list of them, nested or not), as NumPy."""
    while isinstance(outputs, dict | list | tuple):
        outputs = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs[0]
    return np.asarray(outputs)


def per_message_loop(
    bootstrap: str, topic: str, out: str, workload: Workload, how: str, budget_s: float
) -> float | None:
    """A consumer loop that predicts each message alone: ``model.predict`` or a ``tf.function``
    (None: not an approach for this model)."""
    call = glue_call(workload.model_path, how, workload.serving_signature)
    if call is None:
        return None
    consumer, producer = _consumer(bootstrap, topic), _producer(bootstrap)
    done, started = 0, None
    while started is None or time.perf_counter() - started < budget_s:
        msg = consumer.poll(1.0)
        if msg is None or msg.error() is not None:
            continue
        started = started or time.perf_counter()
        x = _decode_single(msg.value() or b"", workload)
        y = _first_output(call(x))
        produce(producer, out, msgpack.packb({"outputs": y.tobytes()}), msg.key())
        producer.poll(0)
        done += 1
    producer.flush(30)
    close_consumer(consumer)
    return done / (time.perf_counter() - (started or time.perf_counter()))


def _decode_single(value: bytes, workload: Workload) -> dict[str, np.ndarray]:
    """What glue code usually does, per input: unpack, frombuffer, add a batch axis, cast (a string
    input: its bytes, or nested lists of them, in an object array); given a preprocess function,
    call it on the example first."""
    body = msgpack.unpackb(value, raw=False)["inputs"]
    specs = workload.sent.inputs
    tensors = body if workload.sent.named_inputs else {specs[0].name: body}
    batch = {spec.name: _one_example(tensors[spec.name], spec) for spec in specs}
    if workload.preprocess is None:
        return batch
    made = workload.prepare({name: values[0] for name, values in batch.items()})
    return {name: values[np.newaxis] for name, values in made.items()}


def _one_example(tensor: Any, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == STRING:
        return np.array([tensor], dtype=object)
    return np.frombuffer(tensor["data"], tensor["dtype"]).reshape(1, *tensor["shape"]).astype(spec.dtype)


_POOL_MODEL: Any = None


def _pool_init(path: str, scratch: str, signature: str, model_code: ModelCode) -> None:
    global _POOL_MODEL
    when_parent_dies(lambda: os._exit(1))  # a killed bench leaves no worker waiting for work
    tempfile.tempdir = scratch  # TensorFlow's generated code: a pool process never runs atexit to remove it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    prepare_keras(*model_code)
    _POOL_MODEL = glue_call(Path(path), "predict") or glue_call(Path(path), "tf.function", signature)


def _pool_predict(chunk: dict[str, np.ndarray]) -> int:
    return len(_first_output(_POOL_MODEL(chunk)))


def process_pool(workload: Workload, data: ModelInputs, workers: int | None = None) -> float:
    """``ProcessPoolExecutor`` mapping ``model.predict`` over chunks (a SavedModel's signature:
    ``glue_call``) of ``data``, the model's inputs (``Workload.model_inputs``: made by the preprocess
    function, if any, before timing), spawned, each process loading the model (with ``fork`` after
    TensorFlow it would hang). Timed after every worker is warm."""
    workers = workers or os.cpu_count() or 1
    parts = max(1, math.ceil(len(next(iter(data.values()))) / workload.batch_size))
    split = {name: np.array_split(values, parts) for name, values in data.items()}
    chunks = [{name: pieces[i] for name, pieces in split.items()} for i in range(parts)]
    with tempfile.TemporaryDirectory(prefix="tfstream-pool-") as scratch:
        initargs = (str(workload.model_path), scratch, workload.serving_signature, workload.model_code)
        with ProcessPoolExecutor(workers, get_context("spawn"), initializer=_pool_init, initargs=initargs) as pool:
            return _timed_map(pool, chunks, workers)


def _timed_map(pool: ProcessPoolExecutor, chunks: list[dict[str, np.ndarray]], workers: int) -> float:
    """Examples a second over ``chunks``, once every worker has predicted one chunk (warm)."""
    list(pool.map(_pool_predict, [chunks[0]] * workers))  # warm every worker
    started = time.perf_counter()
    done = sum(pool.map(_pool_predict, chunks))
    return done / (time.perf_counter() - started)
