"""Turn one batch's predictions into output records, one per input, and send them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from consumer.codec import encode_tensor, encode_tensor_for_json, output_envelope, pack_output
from consumer.delivery import HEADER_PREFIX, Counters, Headers, Outbox, encode_json, source_headers
from consumer.pipeline import Batch


class Emitter:
    """Encodes outputs in the wire format (or JSON) and hands them to the outbox, key = input key."""

    def __init__(
        self,
        outbox: Outbox,
        topic: str,
        model: dict[str, str],
        output_format: str,
        counters: Counters,
        worker: str = "",
    ) -> None:
        self.outbox, self.topic, self.model, self.counters = outbox, topic, model, counters
        self._json = output_format == "json"
        self._encode_tensor: Callable[[np.ndarray], Any] = encode_tensor_for_json if self._json else encode_tensor
        self._model_headers: Headers = [
            (HEADER_PREFIX + "model.name", model["name"].encode()),
            (HEADER_PREFIX + "model.version", model["version"].encode()),
            (HEADER_PREFIX + "worker", worker.encode()),
        ]

    def emit(self, batch: Batch, outputs: dict[str, np.ndarray], bucket: int, predict_ms: float) -> None:
        headers: Headers = [
            *self._model_headers,
            (HEADER_PREFIX + "batch.rows", str(batch.rows).encode()),
            (HEADER_PREFIX + "predict.ms", f"{predict_ms:.3f}".encode()),
        ]
        single = len(outputs) == 1
        for row, msg in enumerate(batch.messages):
            tensors = {name: self._encode_tensor(value[row]) for name, value in outputs.items()}
            body = next(iter(tensors.values())) if single else tensors
            ident, has_id = batch.ids[row]
            source = {
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "timestamp": msg.timestamp()[1],
            }
            envelope = output_envelope(body, model=self.model, source=source, id=ident, has_id=has_id)
            value = encode_json(envelope) if self._json else pack_output(envelope)
            self.outbox.send(msg, self.topic, value, msg.key(), source_headers(msg) + headers)
        self.counters.add(predicted=batch.rows, batches=1, padded_rows=bucket - batch.rows)
        self.outbox.poll(0)
