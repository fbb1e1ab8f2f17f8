"""``python -m consumer check``: a run's settings and model, checked without Kafka.

The model is loaded as a worker loads it (``--custom-objects``, ``--preprocess``, ``--signature``,
the compiled batch sizes), in this process, and the report says what each message must carry.
Given ``--inputs FILE``, each example is packed as ``publish`` sends it and goes through the
workers' own path: the batch decoder and its limits, the ``tf.data`` pipeline (the preprocess
function included) and the compiled predict functions. An input that would be dead-lettered is
named with its reason. Exit 0: the model loads and every input is predicted; 1: an input would be
dead-lettered; 2: a setting or the input file is wrong.
"""

from __future__ import annotations

import argparse
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from consumer import kafka_io, logs
from consumer.apart import run_apart
from consumer.codec import Limits, pack_input
from consumer.config import Settings
from consumer.errors import BrokerError, ConfigError, ModelError, PreprocessMismatch
from consumer.loading import user_code
from consumer.outputs import OutputEncoder
from consumer.pipeline import Batch, Pipeline
from consumer.predictor import MODEL_FAILURES, Predictor, model_failure
from consumer.reload import Served, batch_sizes, first_served
from consumer.topic_rules import PRODUCER_MAX_BYTES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: an input that would be a dead letter: its number (its order), its name in the report, the reason
Named = tuple[int, str, str]
#: dead letters named one by one; the rest are counted
SHOWN = 5
#: where the check's stand-in inputs say they came from
SOURCE = ("check", 0)


class Sample:
    """An input standing in for the Kafka message a worker reads: an example packed as ``publish``
    sends it (``label``: its number in the file), or a record read from a topic (``topic[p]@offset``)."""

    def __init__(self, number: int, value: bytes | None, label: str) -> None:
        self.number, self._value, self.label = number, value, label

    def value(self) -> bytes | None:
        return self._value


def main(settings: Settings, inputs: str | None, read: argparse.Namespace) -> int:
    """``read``: the flags of how ``inputs`` is read, as ``publish`` takes them, and of the sample
    topic (``--sample-topic``), read instead of a file."""
    try:
        _refuse_unused_flags(inputs, read)
        examples = _read(Path(inputs), read) if inputs else None
        sampled = _open_sample(read, settings.tombstones) if getattr(read, "sample_topic", None) else None
        preprocess, served, sizes = _load(settings)
        pipeline = _pipeline(settings, served.predictor, preprocess)
    except ConfigError as exc:
        logs.line(f"error: {exc}")
        return EXIT_USAGE
    except PreprocessMismatch as exc:  # the preprocess function cannot give the model its inputs
        logs.line(f"error: invalid setting preprocess={settings.preprocess!r}: {exc}")
        return EXIT_USAGE
    except (ModelError, BrokerError) as exc:
        logs.line(f"error: {exc}")
        return EXIT_FAILED
    _report_model(served, pipeline, sizes)
    encoder = OutputEncoder(served.info, settings.output_format)
    if sampled is not None:
        return _check_sample(sampled, pipeline, encoder, settings)
    if examples is None:
        return EXIT_OK
    values = (pack_input(example.inputs, id=example.id) for example in examples)  # packed as they are fed
    try:
        checked = run_through(pipeline, values, settings.max_batch_size, encoder, total=len(examples))
    except ConfigError as exc:  # a file read as it is sent, changed since it was checked
        logs.line(f"error: {exc}")
        return EXIT_USAGE
    return _report_inputs(len(examples), checked, settings)


def _refuse_unused_flags(inputs: str | None, read: argparse.Namespace) -> None:
    """A flag of how the sample is read, given without the sample it reads, would do nothing:
    ``ConfigError`` naming it."""
    from producer_tools.commands import given_read_flags, refuse_unused
    from producer_tools.sources import flag

    if not getattr(read, "sample_topic", None):  # every other --sample-* flag reads it
        sample_flags = [name for name in read.check_only if name.startswith("sample_") and name != "sample_topic"]
        given = [flag(name) for name in sample_flags if getattr(read, name) is not None]
        refuse_unused(given, "--sample-topic", "--sample-topic TOPIC")
    if not inputs:
        refuse_unused(given_read_flags(read), "the --inputs file", "--inputs FILE")


def _open_sample(read: argparse.Namespace, tombstones: str) -> Any:
    """The records ``--sample-topic`` names, to be read as they are fed (``producer_tools.samples``):
    the topic is looked up now, so a missing one fails before the model loads. Records without a
    value are dead letters or not as ``--tombstones`` says, as in a worker."""
    from producer_tools.samples import TopicSample

    return TopicSample.open(read, tombstones)


def _check_sample(sampled: Any, pipeline: Pipeline, encoder: OutputEncoder, settings: Settings) -> int:
    """Every record of the sample through the workers' path, each named ``topic[partition]@offset``.
    The progress bar counts without a total: a topic may hold fewer records than the count asked for."""
    try:
        checked = run_through(pipeline, sampled.values(), settings.max_batch_size, encoder, labels=sampled.labels)
    except BrokerError as exc:
        logs.line(f"error: {exc}")
        return EXIT_FAILED
    finally:
        sampled.close()
    return _report_inputs(checked.predicted + checked.dead, checked, settings, source=sampled.describe())


def _read(path: Path, read: argparse.Namespace) -> Sequence[Any]:
    from producer_tools.commands import read_options  # the user-side tools' reader, as publish's
    from producer_tools.sources import read_inputs

    return read_inputs(path, read_options(read))


def _load(settings: Settings) -> tuple[Any, Served, list[int]]:
    """The user's code, then the model, as a worker loads them (``loading.load``, which also logs and watches)."""
    _custom, preprocess, fix_shapes = user_code(settings)
    served, _versions, _pinned = first_served(settings, fix_shapes)
    return preprocess, served, batch_sizes(settings)


def _pipeline(settings: Settings, predictor: Predictor, preprocess: Any) -> Pipeline:
    limits = Limits(settings.max_message_bytes, settings.max_tensor_elements, settings.max_dims)
    return Pipeline(predictor, limits, settings.pipeline_depth, preprocess, settings.reject_non_finite)


@dataclass
class Checked:
    """What became of a file's inputs, in memory that does not grow with its outputs (a file may be
    large): how many were predicted and each output's first predicted row; how many would be dead
    letters, the first ``SHOWN`` of them as ``(input number, its name, reason)``; each output record's value size."""

    predicted: int = 0
    first: dict[str, np.ndarray] = field(default_factory=dict)
    dead: int = 0
    named: list[Named] = field(default_factory=list)
    value_bytes: array[int] = field(default_factory=lambda: array("Q"))

    def add(self, outputs: dict[str, np.ndarray], dead: list[Named], sizes: list[int]) -> None:
        """One batch's: batches come in input order, so its dead letters follow those named before."""
        if sizes and not self.first:
            self.first = {name: value[0] for name, value in outputs.items()}
        self.predicted += len(sizes)  # each input predicted and encoded has its value's size
        self.dead += len(dead)
        self.named += sorted(dead)[: SHOWN - len(self.named)]
        self.value_bytes.extend(sizes)


def run_through(
    pipeline: Pipeline,
    values: Iterable[bytes],
    batch_size: int,
    encoder: OutputEncoder,
    total: int | None = None,
    sink: Callable[[dict[str, np.ndarray]], None] | None = None,
    labels: Iterable[str] | None = None,
) -> Checked:
    """Every value through the pipeline and the model, in batches of ``batch_size``, and each
    prediction encoded as its output record's value; a progress bar on stderr (``total`` inputs).
    ``sink``, if given, takes each batch's predicted outputs; ``labels`` name the values in the
    report (their numbers from 0 without: a file's rows), each read once its value was."""
    feeder = Feeder(pipeline, values, batch_size, labels)
    feeder.start()
    checked = Checked()
    with tqdm(total=total, desc="check", unit="input", file=sys.stderr) as bar:
        for batch, inputs in pipeline.batches():
            dead = [(*_named(message), str(error)) for message, error in batch.dead]
            outputs: dict[str, np.ndarray] = {}
            sizes: list[int] = []
            if batch.rows:
                kept, outputs, failed = _predict(pipeline.predictor, batch, inputs)
                sizes, unencoded = _encode(encoder, batch.rows_at(kept), outputs)
                dead += failed + unencoded
                if sink is not None and outputs:
                    sink(outputs)
            checked.add(outputs, dead, sizes)
            pipeline.mark_finished()
            bar.update(batch.rows + len(batch.dead))
    feeder.join()
    if feeder.failure is not None:
        raise feeder.failure
    return checked


class Feeder(threading.Thread):
    """Packs the values into batches and puts them in the pipeline, as a worker's fetch loop does;
    closes it at the end, or when reading the values fails (``failure``), so the model side ends."""

    def __init__(
        self, pipeline: Pipeline, values: Iterable[bytes | None], batch_size: int, labels: Iterable[str] | None
    ) -> None:
        super().__init__(name="check-feeder", daemon=True)
        self.pipeline, self.values, self.batch_size, self.labels = pipeline, values, batch_size, labels
        self.failure: BaseException | None = None

    def _samples(self) -> Iterator[Sample]:
        labels = iter(self.labels) if self.labels is not None else None
        for number, value in enumerate(self.values):
            yield Sample(number, value, next(labels) if labels is not None else str(number))

    def run(self) -> None:
        samples = self._samples()
        try:
            while chunk := list(islice(samples, self.batch_size)):
                coords = [(SOURCE, sample.number) for sample in chunk]
                self.pipeline.put((chunk, coords, [0] * len(chunk)), None)  # type: ignore[arg-type]
        except BaseException as exc:
            self.failure = exc
        finally:
            while not self.pipeline.close(1.0):
                pass


def _encode(encoder: OutputEncoder, batch: Batch, outputs: dict[str, np.ndarray]) -> tuple[list[int], list[Named]]:
    """Each output value's size; where the batch does not encode, each row alone, as a worker does:
    a row whose output cannot be encoded is a dead letter."""
    try:
        return [len(value) for value in encoder.values(batch, outputs)], []
    except Exception:
        pass
    _good, values, failed = encoder.each(batch, outputs)
    return [len(value) for value in values], [(*_named(batch.messages[row]), str(error)) for row, error in failed]


def _named(message: Any) -> tuple[int, str]:
    """A stand-in message's number (its order) and its name in the report (``Sample``)."""
    sample = cast(Sample, message)
    return sample.number, sample.label


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [part for part in parts if part]
    return {name: np.concatenate([part[name] for part in parts]) for name in (parts[0] if parts else {})}


def _predict(predictor: Predictor, batch: Batch, inputs: Any) -> tuple[list[int], dict[str, np.ndarray], list[Named]]:
    """The rows predicted, their outputs, and the inputs the model failed: where it fails the batch,
    it is run in parts to find them (``run_apart``), as a worker does."""
    try:
        outputs = predictor.run(inputs, predictor.bucket_for(batch.rows))
        return list(range(batch.rows)), {name: value[: batch.rows] for name, value in outputs.items()}, []
    except MODEL_FAILURES:
        pass
    kept: list[int] = []
    parts: list[dict[str, np.ndarray]] = []
    failed: list[Named] = []
    for rows, result in run_apart(predictor.run, predictor.bucket_for, inputs, list(range(batch.rows))):
        if isinstance(result, Exception):
            failed.append((*_named(batch.messages[rows[0]]), str(model_failure(result))))
        else:
            kept += rows
            parts.append(result)
    return kept, _joined(parts), failed


def _report_model(served: Served, pipeline: Pipeline, sizes: list[int]) -> None:
    model, warm = served.model, served.predictor.warmup_seconds
    print(f"model {model.name!r}, version {model.version!r}: loaded and compiled")
    print(f"  each message carries: {pipeline.raw_signature.describe()}")
    if pipeline.preprocess is not None:
        runs = "over a whole batch at once" if pipeline.vectorized else "example by example"
        print(f"  the preprocess function gives the model: {model.signature.describe()}, {runs}")
    print(f"  outputs: {', '.join(model.signature.outputs)}")
    print(f"  batch sizes: {sizes}; a full batch of {max(warm)} took {warm[max(warm)] * 1000:.2f} ms at warm-up")


def _report_inputs(total: int, checked: Checked, settings: Settings, source: str = "") -> int:
    print(f"inputs{source}: {checked.predicted} of {total} predicted, {checked.dead} would go to the dead-letter topic")
    for name, row in checked.first.items():
        first = np.array2string(row, precision=4, threshold=8)
        print(f"  output {name!r}: {row.dtype}{list(row.shape)} per input; the first predicted: {first}")
    for _number, label, reason in checked.named:
        print(f"  input {label}: {' '.join(reason.split())}")  # TensorFlow's errors run over several lines
    if checked.dead > len(checked.named):
        print(f"  ... and {checked.dead - len(checked.named)} more")
    fit = _outputs_fit(checked.value_bytes, settings)
    return EXIT_FAILED if checked.dead or not fit else EXIT_OK


def _outputs_fit(value_bytes: Sequence[int], settings: Settings) -> bool:
    """Whether the output values fit the producer's ``message.max.bytes`` (the output topic's own
    limit needs the topic: a worker checks it at start)."""
    if not value_bytes:
        return True
    config = kafka_io.producer_config(settings, "check")
    limit = int(config.get("message.max.bytes", PRODUCER_MAX_BYTES))
    largest = max(value_bytes)
    print(
        f"output records ({settings.output_format}): values of {min(value_bytes):,} to {largest:,} bytes, "
        f"the producer's message.max.bytes {limit:,}"
    )
    if largest <= limit:
        return True
    print(
        f"  too large: {sum(size > limit for size in value_bytes)} output values are over the producer's "
        "message.max.bytes; raise it ([kafka.producer] message.max.bytes) and the output topic's max.message.bytes"
    )
    return False
