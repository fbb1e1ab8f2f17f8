"""Turn one batch's predictions into output records, one per input, and send them."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message

from consumer.codec import FORMAT_VERSION, json_data_rows
from consumer.counts import Counters
from consumer.dead_lettering import DeadLetters
from consumer.delivery import Keyless, Outbox, Oversize, record_bytes
from consumer.envelopes import OutputPacker
from consumer.errors import EmitError, OutputTooLargeError, UnkeyedOutputError
from consumer.headers import HEADER_PREFIX, Headers, source_headers
from consumer.json_output import JsonPacker
from consumer.offsets import coordinates_of
from consumer.pipeline import Batch
from consumer.tombstones import DEAD_LETTER, FORWARD, Mode, around


class OutputEncoder:
    """One batch's output values, one per predicted row: wire format v1 (msgpack) or JSON."""

    def __init__(self, model: dict[str, str], output_format: str) -> None:
        self.model = model
        self._json = JsonPacker(model, FORMAT_VERSION) if output_format == "json" else None
        self._packer = OutputPacker(model)

    def values(self, batch: Batch, outputs: dict[str, np.ndarray]) -> list[bytes]:
        if self._json is not None:
            return json_values(self._json, batch, outputs)
        return self._packer.pack_rows(outputs, batch.coords, batch.timestamps, batch.ids)

    def each(
        self, batch: Batch, outputs: dict[str, np.ndarray]
    ) -> tuple[list[int], list[bytes], list[tuple[int, EmitError]]]:
        """Row by row, where the batch does not encode as a whole: the rows that encode, their values,
        and for each other row the dead letter's error."""
        good: list[int] = []
        values: list[bytes] = []
        failed: list[tuple[int, EmitError]] = []
        for row in range(len(batch.coords)):
            try:
                values += self.values(batch.row(row), {name: array[row : row + 1] for name, array in outputs.items()})
            except Exception as exc:
                failed.append((row, EmitError(f"its output cannot be encoded: {type(exc).__name__}: {exc}")))
                continue
            good.append(row)
        return good, values, failed


def json_values(packer: JsonPacker, batch: Batch, outputs: dict[str, np.ndarray]) -> list[bytes]:
    """One batch's output values as JSON, one per row: each output's rows written once (``json_data_rows``)."""
    columns = {}
    for name, value in outputs.items():
        dtype, rows = json_data_rows(value)
        columns[name] = (dtype, list(value.shape[1:]), rows)
    return packer.pack_rows(columns, batch.coords, batch.timestamps, batch.ids)


class Emitter:
    """Encodes outputs in the wire format (or JSON) and hands them to the outbox, key = input key.
    Used by the predict thread only."""

    def __init__(
        self,
        outbox: Outbox,
        topic: str,
        model: dict[str, str],
        output_format: str,
        counters: Counters,
        dead_letters: DeadLetters,
        worker: str = "",
        own_headers: bool = True,
        tombstones: Mode = DEAD_LETTER,
        to_input_partitions: bool = False,
    ) -> None:
        self.outbox, self.topic, self.model, self.counters = outbox, topic, model, counters
        self.dead_letters = dead_letters
        self.output_format = output_format
        self._worker = worker
        #: whether outputs carry the worker's ``tfstream.*`` headers besides the input's own
        #: (``--output-headers``): five headers are about 150 bytes of every output
        self.own_headers = own_headers
        self.tombstones = tombstones
        #: ``--output-partitioning input``: each output (and forwarded tombstone) to the partition of its
        #: input's number, not the partitioner's choice by key
        self.to_input_partitions = to_input_partitions
        self.set_model(model)

    def set_model(self, model: dict[str, str]) -> None:
        """Outputs from now on carry this model's name and version (value and headers)."""
        self.model = model
        self._encoder = OutputEncoder(model, self.output_format)
        self._model_headers: Headers = [
            (HEADER_PREFIX + "model.name", model["name"].encode()),
            (HEADER_PREFIX + "model.version", model["version"].encode()),
            (HEADER_PREFIX + "worker", self._worker.encode()),
        ]

    def emit(self, batch: Batch, outputs: dict[str, np.ndarray] | None, bucket: int = 0, predict_ms: float = 0) -> None:
        """The batch's dead letters, then its outputs (if any) and the tombstones it set aside, each in
        its place among the outputs (``tombstones.around``), as one unit of a transaction."""
        with self.outbox.lock:
            for msg, error in batch.dead:
                self.dead_letters.send(msg, error)
            if outputs is None or not batch.rows:
                self.settle_tombstones(batch.tombstones)
                return
            if not batch.tombstones:  # the common case
                predicted = self._send_outputs(batch, outputs, batch.rows, predict_ms)
            else:
                predicted = self._send_around_tombstones(batch, outputs, predict_ms)
            self.counters.add(predicted=predicted, batches=1, padded_rows=bucket - batch.rows)

    def settle_tombstones(self, tombstones: list[Message]) -> None:
        """Tombstones ``--tombstones`` set aside, counted skipped: forwarded, each a record without a
        value with its input's key and own headers, to the output topic; skipped, done at once."""
        if not tombstones:
            return
        self.counters.add(skipped=len(tombstones))
        if self.tombstones == FORWARD:
            headers = [source_headers(m) if m.headers() else None for m in tombstones]
            self.outbox.send_batch(
                tombstones, self.topic, [None] * len(tombstones), headers, to_input_partitions=self.to_input_partitions
            )
        else:
            self.outbox.tracker.done_many(coordinates_of(tombstones))

    def _send_around_tombstones(self, batch: Batch, outputs: dict[str, np.ndarray], predict_ms: float) -> int:
        predicted = 0
        for rows, after in around(batch.coords, batch.tombstones):
            if rows:
                part = {name: array[rows.start : rows.stop] for name, array in outputs.items()}
                predicted += self._send_outputs(batch.rows_at(list(rows)), part, batch.rows, predict_ms)
            self.settle_tombstones(after)
        return predicted

    def _send_outputs(self, batch: Batch, outputs: dict[str, np.ndarray], batch_rows: int, predict_ms: float) -> int:
        """Send the outputs of ``batch`` (all or part of one of ``batch_rows`` rows); how many went out."""
        try:
            values = self._values(batch, outputs)
        except Exception:  # one input whose output cannot be encoded must not stop the stream
            batch, outputs, values = self._encode_each(batch, outputs)
            if not batch.rows:
                return 0
        own = self._own_headers(batch_rows, predict_ms)
        left_out = self.outbox.send_batch(
            batch.messages,
            self.topic,
            values,
            self._record_headers(batch.messages, own),
            coords=batch.coords,
            timestamps=batch.timestamps,
            timed=True,
            unfit=lambda bad: self._dead_letter_unfit(batch, outputs, own, bad),
            to_input_partitions=self.to_input_partitions,
        )
        return batch.rows - left_out

    def _own_headers(self, rows: int, predict_ms: float) -> Headers | None:
        """The worker's headers on each output of a batch (``rows``: as predicted), if it adds them."""
        if not self.own_headers:
            return None
        return [
            *self._model_headers,
            (HEADER_PREFIX + "batch.rows", str(rows).encode()),
            (HEADER_PREFIX + "predict.ms", f"{predict_ms:.3f}".encode()),
        ]

    @staticmethod
    def _record_headers(messages: list[Message], own: Headers | None) -> list[Headers | None]:
        """Each output's headers: the input's own (tracing ids), then the worker's."""
        if own is None:
            return [source_headers(m) if m.headers() else None for m in messages]
        return [source_headers(m) + own if m.headers() else own for m in messages]

    def _dead_letter_unfit(
        self, batch: Batch, outputs: dict[str, np.ndarray], own: Headers | None, bad: Oversize | Keyless
    ) -> bool:
        """An output refused for what its input made of it, and True: a dead letter. Without a key (its
        input had none) for a compacted topic; or too large, if what its input carries into it (key,
        headers, id) or a string output of its own makes it so. False if the model's other outputs
        alone are too large, as they would be for every input: the run ends then, with a line saying
        to raise the limit."""
        error: EmitError
        if isinstance(bad, Keyless):
            error = UnkeyedOutputError(f"its input has no key, so neither would its output: {bad.rule}")
        elif self._bare_record_bytes(batch, outputs, own, bad.index) > bad.limit:
            return False
        else:
            error = OutputTooLargeError(
                f"its output record would be {bad.size:,} bytes, over {bad.rule}: what the input carries into it "
                "(its key, headers or id) or a string output is too large"
            )
        self.dead_letters.send(batch.messages[bad.index], error)
        return True

    def _bare_record_bytes(self, batch: Batch, outputs: dict[str, np.ndarray], own: Headers | None, index: int) -> int:
        """Row ``index``'s output record without what its input carries (key, headers, id) and with its
        string outputs empty: what the model's outputs make of it alone."""
        row = batch.row(index)
        row.ids = [(None, False)]
        bare = {
            name: np.full_like(array[index : index + 1], b"") if array.dtype == object else array[index : index + 1]
            for name, array in outputs.items()
        }
        return record_bytes(self._values(row, bare)[0], None, own)

    def _values(self, batch: Batch, outputs: dict[str, np.ndarray]) -> list[bytes]:
        return self._encoder.values(batch, outputs)

    def _encode_each(
        self, batch: Batch, outputs: dict[str, np.ndarray]
    ) -> tuple[Batch, dict[str, np.ndarray], list[bytes]]:
        """The batch's rows whose outputs encode, their outputs and their values; the others are dead letters."""
        good, values, failed = self._encoder.each(batch, outputs)
        for row, error in failed:
            self.dead_letters.send(batch.messages[row], error)
        return batch.rows_at(good), {name: array[good] for name, array in outputs.items()}, values
