"""Turn one batch's predictions into output records, one per input, and send them."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message

from consumer.codec import encode_tensor_for_json, output_envelope
from consumer.delivery import HEADER_PREFIX, Counters, DeadLetters, Headers, Outbox, source_headers
from consumer.envelopes import OutputPacker
from consumer.errors import EmitError
from consumer.json_output import encode_json, json_value
from consumer.pipeline import Batch


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
    ) -> None:
        self.outbox, self.topic, self.model, self.counters = outbox, topic, model, counters
        self.dead_letters = dead_letters
        self._json = output_format == "json"
        self._worker = worker
        #: whether outputs carry the worker's ``tfstream.*`` headers besides the input's own
        #: (``--output-headers``): five headers are about 150 bytes of every output
        self.own_headers = own_headers
        self.set_model(model)

    def set_model(self, model: dict[str, str]) -> None:
        """Outputs from now on carry this model's name and version (value and headers)."""
        self.model = model
        self._packer = OutputPacker(model)
        self._model_headers: Headers = [
            (HEADER_PREFIX + "model.name", model["name"].encode()),
            (HEADER_PREFIX + "model.version", model["version"].encode()),
            (HEADER_PREFIX + "worker", self._worker.encode()),
        ]

    def emit(self, batch: Batch, outputs: dict[str, np.ndarray] | None, bucket: int = 0, predict_ms: float = 0) -> None:
        """The batch's dead letters, then its outputs (if any), as one unit of a transaction."""
        with self.outbox.lock:
            for msg, error in batch.dead:
                self.dead_letters.send(msg, error)
            if outputs is not None and batch.rows:
                self._send_outputs(batch, outputs, bucket, predict_ms)

    def _send_outputs(self, batch: Batch, outputs: dict[str, np.ndarray], bucket: int, predict_ms: float) -> None:
        rows = batch.rows
        try:
            values = self._values(batch, outputs)
        except Exception:  # one input whose output cannot be encoded must not stop the stream
            batch, values = self._encode_each(batch, outputs)
            if not batch.rows:
                return
        record_headers = self._record_headers(batch.messages, rows, predict_ms)
        self.outbox.send_batch(
            batch.messages,
            self.topic,
            values,
            record_headers,
            coords=batch.coords,
            timestamps=batch.timestamps,
            timed=True,
        )
        self.counters.add(predicted=batch.rows, batches=1, padded_rows=bucket - rows)

    def _record_headers(self, messages: list[Message], rows: int, predict_ms: float) -> list[Headers | None]:
        """Each output's headers: the input's own (tracing ids), then the worker's if it adds them
        (``rows``: the batch's, as predicted)."""
        if not self.own_headers:
            return [source_headers(m) if m.headers() else None for m in messages]
        own: Headers = [
            *self._model_headers,
            (HEADER_PREFIX + "batch.rows", str(rows).encode()),
            (HEADER_PREFIX + "predict.ms", f"{predict_ms:.3f}".encode()),
        ]
        return [source_headers(m) + own if m.headers() else own for m in messages]

    def _values(self, batch: Batch, outputs: dict[str, np.ndarray]) -> list[bytes]:
        if self._json:
            return self._json_values(batch, outputs)
        return self._packer.pack_rows(outputs, batch.coords, batch.timestamps, batch.ids)

    def _encode_each(self, batch: Batch, outputs: dict[str, np.ndarray]) -> tuple[Batch, list[bytes]]:
        """The batch's rows whose outputs encode, and their values; the others are dead letters."""
        good: list[int] = []
        values: list[bytes] = []
        for row, msg in enumerate(batch.messages):
            one = {name: array[row : row + 1] for name, array in outputs.items()}
            try:
                values += self._values(batch.row(row), one)
            except Exception as exc:
                self.dead_letters.send(msg, EmitError(f"its output cannot be encoded: {type(exc).__name__}: {exc}"))
                continue
            good.append(row)
        return batch.rows_at(good), values

    def _json_values(self, batch: Batch, outputs: dict[str, np.ndarray]) -> list[bytes]:
        values = []
        single = len(outputs) == 1
        for row, ((topic, partition), offset) in enumerate(batch.coords):
            tensors = {name: encode_tensor_for_json(value[row]) for name, value in outputs.items()}
            body = next(iter(tensors.values())) if single else tensors
            ident, has_id = batch.ids[row]
            source = {"topic": topic, "partition": partition, "offset": offset, "timestamp": batch.timestamps[row]}
            envelope = output_envelope(body, model=self.model, source=source, id=json_value(ident), has_id=has_id)
            values.append(encode_json(envelope))
        return values
