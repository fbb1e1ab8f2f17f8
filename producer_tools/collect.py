"""``collect``: read a prediction topic into ``.npz`` or JSON Lines, optionally joined with its inputs.

Records are read with ``isolation.level=read_committed`` (what exactly-once output needs) from
every partition, until the end of the topic, ``--count`` records, or ``--idle`` seconds of quiet.
Both the msgpack wire format and ``--output-format json`` outputs are understood.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from confluent_kafka import Message

from consumer.codec import STRING_DTYPE, output_map, string_array, unpack_output
from consumer.errors import InputError
from consumer.json_output import json_numbers, json_value
from producer_tools.paths import JsonLinesFile, complete_file
from producer_tools.sources import Example, Tensor

Sink = Callable[[dict[str, Any], bytes | None], None]


@dataclass
class Collected:
    """Output records in topic order, kept, or handed to ``sink`` as they are read (then not kept)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    sink: Sink | None = None
    decoded: int = 0
    undecodable: int = 0
    first_undecodable: str = ""  # where and why, for the summary
    #: records without a value: a key's deletion, forwarded from the input topic (``--tombstones forward``)
    deletions: int = 0

    def add(self, msg: Message) -> None:
        value = msg.value()
        if value is None:
            self.deletions += 1
            return
        try:
            record = decode_output(value)
        except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException, InputError) as exc:
            self.undecodable += 1
            if not self.first_undecodable:
                self.first_undecodable = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}"
            return
        self.decoded += 1
        if self.sink is not None:
            self.sink(record, msg.key())
            return
        self.records.append(record)
        self.keys.append(msg.key())


def decode_output(value: bytes) -> dict[str, Any]:
    """A v1 output in msgpack, or the same envelope in JSON; TENSORs become arrays."""
    if value[:1] == b"{":
        record = output_map(json.loads(value))
        out = record["outputs"]
        record["outputs"] = _json_tensor(out) if "dtype" in out else {name: _json_tensor(t) for name, t in out.items()}
        return record
    return unpack_output(value)


def _json_tensor(obj: dict[str, Any]) -> np.ndarray:
    if obj["dtype"] == STRING_DTYPE:  # JSON output writes the bytes of each string as base64
        texts = np.asarray(obj["data"], dtype=object).reshape(-1)
        return string_array([base64.b64decode(text) for text in texts], obj["shape"])
    return np.asarray(obj["data"], dtype=obj["dtype"]).reshape(obj["shape"])


class Join:
    """Finds the input each output answers, by ``id`` (echoed in the output) or by ``key``."""

    def __init__(self, examples: Iterable[Example], on: str) -> None:
        self.by_key = on == "key"
        self.index = {example.key if self.by_key else _hashable(example.id): example for example in examples}

    def find(self, record: dict[str, Any], key: bytes | None) -> Example | None:
        return self.index.get(key if self.by_key else _hashable(record.get("id")))


def join_inputs(collected: Collected, join: Join) -> tuple[list[int], list[Example]]:
    """Rows of ``collected`` that match an input, and the matching inputs."""
    rows, inputs = [], []
    for row, (record, key) in enumerate(zip(collected.records, collected.keys, strict=True)):
        example = join.find(record, key)
        if example is not None:
            rows.append(row)
            inputs.append(example)
    return rows, inputs


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, list | dict) else value


def write_npz(path: Path, collected: Collected, join: Join | None) -> int:
    """ids, keys, source coordinates and outputs (``outputs`` or ``outputs.<name>``), stacked, of the
    outputs that found their input (all, without ``join``); how many were written."""
    rows, inputs = join_inputs(collected, join) if join else (list(range(len(collected.records))), None)
    records = [collected.records[row] for row in rows]
    arrays: dict[str, np.ndarray] = {
        "ids": _column([r.get("id") for r in records]),
        "keys": np.asarray([k or b"" for k in (collected.keys[row] for row in rows)], dtype=object).astype(bytes),
        "partitions": np.asarray([r["source"]["partition"] for r in records], dtype=np.int32),
        "offsets": np.asarray([r["source"]["offset"] for r in records], dtype=np.int64),
        "timestamps": np.asarray([r["source"]["timestamp"] for r in records], dtype=np.int64),
    }
    arrays |= _stacked("outputs", [r["outputs"] for r in records])
    if inputs is not None:
        arrays |= _stacked("inputs", [example.inputs for example in inputs])
    with complete_file(path, "wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]
    return len(rows)


def _stacked(prefix: str, values: list[Tensor | dict[str, Tensor]]) -> dict[str, np.ndarray]:
    if not values:
        return {}
    if isinstance(values[0], dict):
        named = [v for v in values if isinstance(v, dict)]
        return {f"{prefix}.{n}": _stack([v[n] for v in named]) for n in values[0]}
    return {prefix: _stack(values)}


def _stack(values: list[Any]) -> np.ndarray:
    """Rows stacked; strings as a bytes array (``S``), never pickled objects."""
    stacked = np.stack([np.asarray(v) for v in values])
    return stacked.astype(bytes) if stacked.dtype == object else stacked


def _column(values: list[Any]) -> np.ndarray:
    """ids as numbers or text (never pickled objects, so ``np.load`` needs no ``allow_pickle``)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        low, high = min(values, default=0), max(values, default=0)
        for dtype in (np.int64, np.uint64):  # msgpack integers: int64, or uint64 above it
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return np.asarray(values, dtype=dtype)
    return np.asarray(["" if v is None else str(v) for v in values])


class JsonLines(JsonLinesFile):
    """Writes each output as a JSON line as it is read, so a topic larger than memory collects (a list
    of 1,000,000 MLP outputs held 1.6 GB). With ``join``, only outputs that found their input are
    written, each with it."""

    def __init__(self, path: Path, join: Join | None) -> None:
        super().__init__(path, default=text_or_base64)
        self.join = join

    def write(self, record: dict[str, Any], key: bytes | None) -> None:
        example = None
        if self.join is not None:
            example = self.join.find(record, key)
            if example is None:  # counted by the caller, left out
                return
        line = {
            "key": text_or_base64(key),
            "id": json_value(record.get("id"), bytes_as=text_or_base64),
            "outputs": _listed(record["outputs"]),
            "model": record.get("model"),
            "source": record.get("source"),
        }
        if example is not None:
            line["inputs"] = _listed(example.inputs)
        self.write_line(line)


def _listed(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _listed(v) for name, v in value.items()}
    if isinstance(value, bytes):
        return text_or_base64(value)
    return json_value(json_numbers(np.asarray(value)), bytes_as=text_or_base64)


def text_or_base64(value: Any) -> Any:
    """Bytes as UTF-8 text when they are, else base64."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")
