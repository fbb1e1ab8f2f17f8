"""``--output-format json``: the output envelope as strict JSON, which every JSON parser reads.

JSON has no numbers for NaN and the infinities, and its map keys are text: a model's non-finite
outputs (and ids) are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, as
protobuf's JSON mapping does, and ``bin`` values (string outputs, ids, map keys) as base64 text.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from itertools import repeat
from typing import Any

import numpy as np
import orjson

NAN, INFINITY, MINUS_INFINITY = "NaN", "Infinity", "-Infinity"


def base64_text(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def non_finite_text(value: float) -> str:
    return NAN if math.isnan(value) else INFINITY if value > 0 else MINUS_INFINITY


def json_numbers(array: np.ndarray) -> Any:
    """``array.tolist()``, with NaN and the infinities as their strings."""
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return array.tolist()
    listed = array.astype(object)
    listed[np.isnan(array)] = NAN
    listed[np.isposinf(array)] = INFINITY
    listed[np.isneginf(array)] = MINUS_INFINITY
    return listed.tolist()


def json_value(value: Any, bytes_as: Callable[[bytes], Any] = base64_text) -> Any:
    """Any decoded msgpack value (an input's id) as JSON can hold it: non-finite floats as their
    strings, ``bytes`` through ``bytes_as``, map keys as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return non_finite_text(value)
    if isinstance(value, bytes):
        return bytes_as(value)
    if isinstance(value, list | tuple):
        return [json_value(item, bytes_as) for item in value]
    if isinstance(value, dict):
        return {_key(key, bytes_as): json_value(item, bytes_as) for key, item in value.items()}
    return value


def _key(key: Any, bytes_as: Callable[[bytes], Any]) -> str:
    text = json_value(key, bytes_as)
    return text if isinstance(text, str) else json.dumps(text)


def _bytes_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64_text(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_json(envelope: dict[str, Any]) -> bytes:
    """The envelope's TENSORs and id already in JSON form (``json_numbers``, ``json_value``). By
    orjson: the standard library's ``json.dumps`` took 8.7 µs of the 10.6 µs a row of ten floats
    cost; the text is the same but for small numbers without an exponent (``0.00001``, not ``1e-05``).
    The reference ``JsonPacker`` is held to."""
    return orjson.dumps(envelope, default=_bytes_default)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_bytes_default)


#: what ``numpy_rows`` formats (orjson's ``OPT_SERIALIZE_NUMPY``): booleans, integers and floats
NUMPY_KINDS = "biuf"
#: ``numpy_rows`` fails with this where orjson does not take the array: the caller goes the long way
NotNumpy = orjson.JSONEncodeError


def numpy_rows(array: np.ndarray) -> list[bytes]:
    """Each row of a batch of finite numbers as JSON text, from one orjson call over the whole
    batch (a call a row cost 1.1 µs for ten floats, the batch 0.2 µs a row): rows of one value or
    of a vector are cut from it; deeper rows are written one by one. A float is written as its own
    type's shortest text (a float32 ``0.12573022``, not its double's ``0.1257302165031433``)."""
    if array.ndim > 2:
        return [orjson.dumps(np.ascontiguousarray(row), option=orjson.OPT_SERIALIZE_NUMPY) for row in array]
    if len(array) == 0:
        return []
    text = orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY)
    if array.ndim == 1:
        return text[1:-1].split(b",")
    return [b"[" + row + b"]" for row in text[2:-2].split(b"],[")]


class JsonPacker:
    """A batch's output values as JSON, as ``encode_json(output_envelope(...))`` writes them
    (``consumer.codec``: ``outputs``, ``model``, ``source``, ``v``, then ``id``), from pieces:
    what every row of the batch shares (each output's name, dtype and shape; the model; a topic) is
    encoded once, and for each row only its partition, offset, timestamp and id; its data comes
    written (``numpy_rows``, or each row's ``json_numbers`` by orjson)."""

    def __init__(self, model: dict[str, str], version: int) -> None:
        self._model = b',"model":' + _dumps(model) + b',"source":{"topic":'
        self._version = b'},"v":' + _dumps(version)
        self._topics: dict[str, bytes] = {}

    def pack_rows(
        self,
        columns: dict[str, tuple[str, list[int], list[bytes]]],
        coords: list[tuple[tuple[str, int], int]],
        timestamps: list[int],
        ids: list[tuple[Any, bool]],
    ) -> list[bytes]:
        """``columns``: each output's dtype, the shape of a row, and each row's data as JSON text.
        Each row is one ``%`` of a template made for the batch (its own text escaped)."""
        heads, close = _outputs_layout(columns)
        template = (
            b'{"outputs":'
            + b"".join(_escaped(head) + b"%s" for head in heads)
            + _escaped(close + self._model)
            + b'%s,"partition":%d,"offset":%d,"timestamp":%d'
            + _escaped(self._version)
            + b"%s}"
        )
        topics = self._topics
        values = []
        datas = zip(*(rows for _dtype, _shape, rows in columns.values()), strict=True) if columns else repeat(())
        for data, ((topic, partition), offset), timestamp, (ident, has_id) in zip(
            datas, coords, timestamps, ids, strict=False
        ):
            encoded = topics.get(topic) or self._topic(topic)
            values.append(template % (*data, encoded, partition, offset, timestamp, _id_part(ident, has_id)))
        return values

    def _topic(self, topic: str) -> bytes:
        encoded = self._topics[topic] = _dumps(topic)
        return encoded


def _id_part(ident: Any, has_id: bool) -> bytes:
    if not has_id:
        return b""
    if type(ident) is int:  # the common case, as orjson writes it (not a bool, which is an int too)
        return b',"id":%d' % ident
    return b',"id":' + _dumps(json_value(ident))


def _escaped(text: bytes) -> bytes:
    return text.replace(b"%", b"%%")


def json_rows(values: list[Any]) -> list[bytes]:
    """Each row of ``json_numbers``' form as JSON text (bytes as base64 text)."""
    return [_dumps(value) for value in values]


def _outputs_layout(columns: dict[str, tuple[str, list[int], list[bytes]]]) -> tuple[list[bytes], bytes]:
    """What comes before each output's data, and what closes the outputs after the last: one output
    is the body itself, several a map of them."""
    heads = [_tensor_head(dtype, shape) for dtype, shape, _rows in columns.values()]
    if len(heads) == 1:
        return heads, b"}"
    if not heads:
        return [], b"{}"
    opens = [b"{"] + [b"},"] * (len(heads) - 1)
    return [
        opening + _dumps(name) + b":" + head for opening, name, head in zip(opens, columns, heads, strict=True)
    ], b"}}"


def _tensor_head(dtype: str, shape: list[int]) -> bytes:
    return b'{"dtype":' + _dumps(dtype) + b',"shape":' + _dumps(shape) + b',"data":'
