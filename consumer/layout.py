"""The byte layout of an input message that carries exactly what the model takes, as
``codec.pack_input`` (and so ``producer_tools publish``) writes it: read by slicing, not parsing.

    {"inputs": {"dtype": D, "shape": S, "data": <bin>}, "v": 1[, "id": <any>]}

For a given model everything but the tensor bytes and the id is the same in every such message,
so a batch of them is checked with a few array comparisons and its tensor bytes are sliced out;
integer and string ids are read from their bytes, any other id goes through msgpack (one message
at a time).
Any other encoding of the same content (keys in another order, a wider bin header, no ``v``) is
still valid wire format: it takes the parsing path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import chain
from typing import Any

import msgpack
import numpy as np

from consumer.codec import FORMAT_VERSION, Limits, unpack_strict
from consumer.envelopes import bin_header, map_header
from consumer.signature import STRING, Signature

#: map headers of the top-level map: without, and with, an "id"
_WITHOUT_ID, _WITH_ID = 0x82, 0x83
#: a batch whose messages have more distinct lengths than this is sliced one message at a time
_MAX_LENGTHS = 8
#: msgpack integer encodings by their size with the marker byte: (marker, big-endian dtype)
_INTS = {
    2: ((0xCC, ">u1"), (0xD0, ">i1")),
    3: ((0xCD, ">u2"), (0xD1, ">i2")),
    5: ((0xCE, ">u4"), (0xD2, ">i4")),
    9: ((0xCF, ">u8"), (0xD3, ">i8")),
}
#: msgpack string encodings past fixstr: (marker, bytes of the length after it, big-endian dtype)
_STRS = ((0xD9, 1, ">u1"), (0xDA, 2, ">u2"), (0xDB, 4, ">u4"))
#: a row's tensor bytes, one per model input, and its (id, present)
Sliced = tuple[list[bytes | memoryview], tuple[Any, bool]]


class CanonicalLayout:
    """Slices the tensor bytes out of messages in the canonical layout of one model's inputs."""

    def __init__(self, signature: Signature, limits: Limits) -> None:
        if any(spec.dtype == STRING for spec in signature.inputs):
            raise ValueError("string inputs have no fixed layout")
        pack = msgpack.Packer(use_bin_type=True).pack
        self._limits = limits
        #: (what precedes an input's bytes, how many bytes it has), in signature order
        self._parts: list[tuple[bytes, int]] = []
        for index, spec in enumerate(signature.inputs):
            nbytes = math.prod(spec.fixed_shape) * np.dtype(spec.dtype).itemsize
            head = pack("inputs") + (map_header(len(signature.inputs)) if signature.named_inputs else b"")
            # the map of an empty tensor, less its empty bin (b"\xc4\x00"), then the real bin header
            empty = pack({"dtype": spec.dtype, "shape": list(spec.shape), "data": b""})
            tensor_head = (pack(spec.name) if signature.named_inputs else b"") + empty[:-2] + bin_header(nbytes)
            self._parts.append(((head if index == 0 else b"") + tensor_head, nbytes))
        self._version = pack("v") + pack(FORMAT_VERSION)
        self._id_key = pack("id")
        #: byte position → expected bytes: every fixed part of a canonical message, and where its
        #: tensor bytes start; ids start at ``self._id_at``
        self._fixed: list[tuple[int, np.ndarray]] = []
        self._starts: list[int] = []
        position = 1
        for head, nbytes in self._parts:
            self._fixed.append((position, np.frombuffer(head, np.uint8)))
            self._starts.append(position + len(head))
            position += len(head) + nbytes
        self._fixed.append((position, np.frombuffer(self._version, np.uint8)))
        self._end = position + len(self._version)
        self._id_at = self._end + len(self._id_key)
        self._fixed_with_id = [*self._fixed, (self._end, np.frombuffer(self._id_key, np.uint8))]

    def slice_batch(self, values: list[bytes]) -> tuple[list[np.ndarray], list[tuple[Any, bool]]] | None:
        """Every message of a batch at once, when all are canonical with integer ids (or none):
        per input, its rows' bytes as one (rows, nbytes) uint8 array; else None."""
        by_length: dict[int, list[int]] = {}
        for row, value in enumerate(values):
            by_length.setdefault(len(value), []).append(row)
        if len(by_length) > _MAX_LENGTHS:
            return None
        columns = [np.empty((len(values), nbytes), np.uint8) for _, nbytes in self._parts]
        ids: list[Any] = [None] * len(values)
        for length, rows in by_length.items():
            block = np.frombuffer(b"".join([values[row] for row in rows]), np.uint8).reshape(len(rows), length)
            found = self._ids(block) if self._fixed_parts_match(block) else None
            if found is None:
                return None
            whole = len(rows) == len(values)
            for column, start, (_, nbytes) in zip(columns, self._starts, self._parts, strict=True):
                column[slice(None) if whole else rows] = block[:, start : start + nbytes]
            if whole:
                return columns, found
            for row, ident in zip(rows, found, strict=True):
                ids[row] = ident
        return columns, ids

    def _fixed_parts_match(self, block: np.ndarray) -> bool:
        """Every row has the map header its length implies and every fixed part in place."""
        length = block.shape[1]
        if length == self._end:
            header, fixed = _WITHOUT_ID, self._fixed
        elif length > self._id_at:
            header, fixed = _WITH_ID, self._fixed_with_id
        else:
            return False
        return bool((block[:, 0] == header).all()) and all(
            (block[:, at : at + len(expected)] == expected).all() for at, expected in fixed
        )

    def _ids(self, block: np.ndarray) -> list[tuple[Any, bool]] | None:
        """The rows' ids when each is one msgpack integer or string filling the rest of its message,
        else None (a string that is not UTF-8 too: msgpack's path refuses it)."""
        width = block.shape[1] - self._id_at
        if width <= 0:
            return [(None, False)] * len(block)
        ids: list[Any] = [None] * len(block)
        left = len(block)
        raw = block[:, self._id_at :]
        found: Iterator[tuple[list[int], list[Any]]] = chain(_integers(raw, width), _strings(raw, width))
        try:
            for rows, values in found:
                left -= len(rows)
                for row, value in zip(rows, values, strict=True):
                    ids[row] = (value, True)
                if left == 0:  # integer ids, the common case, are not looked at again as strings
                    break
        except UnicodeDecodeError:
            return None
        return ids if left == 0 else None

    def slice(self, value: bytes) -> Sliced | None:
        """The tensor bytes and id of a message in the canonical layout, else None."""
        if not value or value[0] not in (_WITHOUT_ID, _WITH_ID):
            return None
        view, position = memoryview(value), 1
        data: list[bytes | memoryview] = []
        for head, nbytes in self._parts:
            if not value.startswith(head, position):
                return None
            position += len(head)
            data.append(view[position : position + nbytes])
            position += nbytes
        if not value.startswith(self._version, position):
            return None
        position += len(self._version)
        if value[0] == _WITHOUT_ID:
            return (data, (None, False)) if position == len(value) else None
        if not value.startswith(self._id_key, position):
            return None
        try:  # exactly one msgpack object must follow: trailing bytes raise ExtraData
            return data, (unpack_strict(value[position + len(self._id_key) :], self._limits), True)
        except Exception:
            return None


def _integers(raw: np.ndarray, width: int) -> Iterator[tuple[list[int], list[int]]]:
    """The rows of ``raw`` that hold one msgpack integer of ``width`` bytes, per encoding: (rows, values)."""
    marker = raw[:, 0]
    if width == 1:  # positive and negative fixint
        for rows, offset in ((marker < 0x80, 0), (marker >= 0xE0, -256)):
            yield np.flatnonzero(rows).tolist(), (marker[rows].astype(np.int64) + offset).tolist()
    for code, dtype in _INTS.get(width, ()):
        rows = marker == code
        if rows.any():
            yield np.flatnonzero(rows).tolist(), np.ascontiguousarray(raw[rows, 1:]).view(dtype).ravel().tolist()


def _strings(raw: np.ndarray, width: int) -> Iterator[tuple[list[int], list[str]]]:
    """The rows of ``raw`` that hold one msgpack string of ``width`` bytes with its header, per
    header: (rows, texts). ``UnicodeDecodeError`` for a text that is not UTF-8."""
    marker = raw[:, 0]
    if width <= 32:  # fixstr: the length in the marker
        yield from _texts(raw, marker == 0xA0 + width - 1, 1)
    for code, size, dtype in _STRS:
        rows = marker == code
        if width > size and rows.any():
            declared = np.ascontiguousarray(raw[:, 1 : 1 + size]).view(dtype).ravel()
            yield from _texts(raw, rows & (declared == width - 1 - size), 1 + size)


def _texts(raw: np.ndarray, rows: np.ndarray, start: int) -> Iterator[tuple[list[int], list[str]]]:
    picked = np.flatnonzero(rows)
    if not picked.size:
        return
    body = np.ascontiguousarray(raw[picked, start:])
    if body.shape[1] == 0:
        yield picked.tolist(), [""] * len(picked)
        return
    # each row's bytes through a void dtype (``S`` would drop trailing zero bytes)
    yield picked.tolist(), [text.decode() for text in body.view(f"V{body.shape[1]}").ravel().tolist()]
