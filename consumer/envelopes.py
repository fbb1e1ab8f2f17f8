"""Output values for a whole batch at once, in wire format v1, byte for byte what
``codec.pack_output(codec.output_envelope(...))`` makes for each row.

A msgpack map is a header followed by its keys and values, so every part that is the same for all
rows (the keys, the model map, each output's dtype and shape, the topic) is packed once; a row adds
only its tensor bytes (a slice of the batch's one ``tobytes()``), its source coordinates and its id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from consumer.codec import FORMAT_VERSION

_FIXMAP = 0x80


class OutputPacker:
    """Packs one batch's output values; not thread-safe (one per emitting thread)."""

    def __init__(self, model: Mapping[str, str]) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)
        pack = self._packer.pack
        self._pack = pack
        self._model = pack("model") + pack(dict(model))
        self._version = pack("v") + pack(FORMAT_VERSION)
        self._outputs_key = pack("outputs")
        self._id_key = pack("id")
        self._source_head = pack("source") + bytes([_FIXMAP | 4]) + pack("topic")
        self._partition_key, self._offset_key = pack("partition"), pack("offset")
        self._timestamp_key = pack("timestamp")
        self._topics: dict[str, bytes] = {}

    def pack_rows(
        self,
        outputs: Mapping[str, np.ndarray],
        sources: Sequence[tuple[str, int, int, int]],
        ids: Sequence[tuple[Any, bool]],
    ) -> list[bytes]:
        """One value per row: ``outputs`` hold ``len(sources)`` rows; a source is (topic, partition,
        offset, timestamp); an id is (value, present)."""
        single = len(outputs) == 1
        columns = [self._column(name, array, len(sources), named=not single) for name, array in outputs.items()]
        body_head = self._outputs_key + (b"" if single else _map_header(len(columns)))
        pack, values = self._pack, []
        for row, (source, (ident, has_id)) in enumerate(zip(sources, ids, strict=True)):
            parts = [bytes([_FIXMAP | (5 if has_id else 4)]), body_head]
            for prefix, data, width in columns:
                parts += (prefix, data[row * width : (row + 1) * width])
            parts += (self._model, self._source(source, pack), self._version)
            if has_id:
                parts += (self._id_key, pack(ident))
            values.append(b"".join(parts))
        return values

    def _column(self, name: str, array: np.ndarray, rows: int, named: bool) -> tuple[bytes, memoryview, int]:
        """(what precedes a row's bytes, the batch's bytes, one row's width) for one output."""
        arr = np.asarray(array)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        data = memoryview(np.ascontiguousarray(arr[:rows]).tobytes())
        width = len(data) // rows if rows else 0
        pack = self._pack
        head = _FIXMAP | 3
        prefix = (
            (pack(name) if named else b"")
            + bytes([head])
            + pack("dtype") + pack(arr.dtype.name)
            + pack("shape") + pack(list(arr.shape[1:]))
            + pack("data") + _bin_header(width)
        )  # fmt: skip
        return prefix, data, width

    def _source(self, source: tuple[str, int, int, int], pack: Any) -> bytes:
        topic, partition, offset, timestamp = source
        head = self._topics.get(topic)
        if head is None:
            head = self._topics[topic] = self._source_head + pack(topic)
        return b"".join((
            head, self._partition_key, pack(partition), self._offset_key, pack(offset),
            self._timestamp_key, pack(timestamp),
        ))  # fmt: skip


def _map_header(size: int) -> bytes:
    if size < 16:
        return bytes([_FIXMAP | size])
    return b"\xde" + size.to_bytes(2, "big") if size < 2**16 else b"\xdf" + size.to_bytes(4, "big")


def _bin_header(size: int) -> bytes:
    if size < 2**8:
        return b"\xc4" + size.to_bytes(1, "big")
    return b"\xc5" + size.to_bytes(2, "big") if size < 2**16 else b"\xc6" + size.to_bytes(4, "big")
