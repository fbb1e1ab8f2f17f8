"""Output values for a whole batch at once, in wire format v1, byte for byte what
``codec.pack_output(codec.output_envelope(...))`` makes for each row.

A msgpack map is a header followed by its keys and values, so every part that is the same for all
rows (the keys, the model map, each output's dtype and shape, the topic) is packed once; a row adds
only its tensor bytes (a slice of the batch's one ``tobytes()``), its source coordinates and its id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from consumer.codec import FORMAT_VERSION, encode_tensor, is_string_array, output_envelope, wire_array

_FIXMAP = 0x80


class OutputPacker:
    """Packs one batch's output values; not thread-safe (one per emitting thread)."""

    def __init__(self, model: Mapping[str, str]) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)
        pack = self._packer.pack
        self._pack = pack
        self._model_map = dict(model)
        self._model = pack("model") + pack(self._model_map)
        self._version = pack("v") + pack(FORMAT_VERSION)
        self._outputs_key = pack("outputs")
        self._id_key = pack("id")
        self._source_head = pack("source") + bytes([_FIXMAP | 4]) + pack("topic")
        self._partition_key, self._offset_key = pack("partition"), pack("offset")
        self._timestamp_key = pack("timestamp")
        self._sources: dict[tuple[str, int], bytes] = {}

    def pack_rows(
        self,
        outputs: Mapping[str, np.ndarray],
        coords: Sequence[tuple[tuple[str, int], int]],
        timestamps: Sequence[int],
        ids: Sequence[tuple[Any, bool]],
    ) -> list[bytes]:
        """One value per row: ``outputs`` hold ``len(coords)`` rows; a row's source is its
        ((topic, partition), offset) and timestamp; an id is (value, present)."""
        rows = len(coords)
        single = len(outputs) == 1
        if any(is_string_array(np.asarray(array)) for array in outputs.values()):
            return self._pack_each(outputs, zip(coords, timestamps, ids, strict=True))
        columns = [self._column(name, array, rows, named=not single) for name, array in outputs.items()]
        body_head = self._outputs_key + (b"" if single else map_header(len(columns)))
        # every row: head, [prefix, data]..., model + source up to the offset, offset, "timestamp",
        # timestamp, "v": 1[, "id", id]; the parts that never change (up to the first output's
        # bytes, and after the offset) are joined once here
        (prefix, data, width), more = columns[0], columns[1:]
        heads = {flag: bytes([_FIXMAP | (4 + flag)]) + body_head + prefix for flag in (False, True)}
        tails = {False: self._version, True: self._version + self._id_key}
        sources, timestamp_key = self._sources, self._timestamp_key
        pack, values, last_timestamp, packed_timestamp = self._pack, [], None, b""
        for row, ((partition, offset), timestamp, (ident, has_id)) in enumerate(
            zip(coords, timestamps, ids, strict=True)
        ):
            if timestamp != last_timestamp:  # rows fetched together mostly share their timestamp
                last_timestamp, packed_timestamp = timestamp, timestamp_key + pack(timestamp)
            source = sources.get(partition) or self._source_of(partition)
            parts = [heads[has_id], data[row * width : (row + 1) * width]]
            for other_prefix, other_data, other_width in more:
                parts += (other_prefix, other_data[row * other_width : (row + 1) * other_width])
            parts += (source, pack(offset), packed_timestamp, tails[has_id])
            if has_id:
                parts.append(pack(ident))
            values.append(b"".join(parts))
        return values

    def _pack_each(self, outputs: Mapping[str, np.ndarray], rows: Iterable[tuple[Any, int, Any]]) -> list[bytes]:
        """Row by row, for outputs with strings (whose rows have no fixed width); ``rows``: each
        row's source coordinates, timestamp and id, as ``pack_rows`` takes them."""
        values, single = [], len(outputs) == 1
        for row, (((topic, partition), offset), timestamp, (ident, has_id)) in enumerate(rows):
            tensors = {name: encode_tensor(array[row]) for name, array in outputs.items()}
            body = next(iter(tensors.values())) if single else tensors
            source = {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp}
            envelope = output_envelope(body, model=self._model_map, source=source, id=ident, has_id=has_id)
            values.append(self._pack(envelope))
        return values

    def _column(self, name: str, array: np.ndarray, rows: int, named: bool) -> tuple[bytes, memoryview, int]:
        """(what precedes a row's bytes, the batch's bytes, one row's width) for one output."""
        arr = wire_array(array)
        data = memoryview(np.ascontiguousarray(arr[:rows]).tobytes())
        width = len(data) // rows if rows else 0
        pack = self._pack
        head = _FIXMAP | 3
        prefix = (
            (pack(name) if named else b"")
            + bytes([head])
            + pack("dtype") + pack(arr.dtype.name)
            + pack("shape") + pack(list(arr.shape[1:]))
            + pack("data") + bin_header(width)
        )  # fmt: skip
        return prefix, data, width

    def _source_of(self, partition: tuple[str, int]) -> bytes:
        """The model map, then the "source" map up to its offset's value: the same for all of a
        partition's rows. The timestamp's key follows the offset, so it ends the part after it."""
        topic, number = partition
        pack = self._pack
        self._sources[partition] = b"".join(
            (self._model, self._source_head, pack(topic), self._partition_key, pack(number), self._offset_key)
        )
        return self._sources[partition]


def map_header(size: int) -> bytes:
    if size < 16:
        return bytes([_FIXMAP | size])
    return b"\xde" + size.to_bytes(2, "big") if size < 2**16 else b"\xdf" + size.to_bytes(4, "big")


def bin_header(size: int) -> bytes:
    if size < 2**8:
        return b"\xc4" + size.to_bytes(1, "big")
    return b"\xc5" + size.to_bytes(2, "big") if size < 2**16 else b"\xc6" + size.to_bytes(4, "big")
