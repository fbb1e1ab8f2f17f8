"""``.jsonl`` files: one object a line, ``inputs`` with an optional ``id`` and ``key``."""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from consumer.errors import ConfigError
from producer_tools.sources import common
from producer_tools.sources.common import (
    Example,
    Inputs,
    MadeWhenRead,
    ReadOptions,
    Shapes,
    Tensor,
    cast,
    row_key,
    to_key,
)


class JsonlRows(MadeWhenRead):
    """The lines of a checked ``.jsonl`` file as examples, each parsed again when it is sent: the
    check keeps where each line starts, not what it holds (1,000,000 lines of 64 numbers were about
    a gigabyte of examples held)."""

    def __init__(self, path: Path, starts: array[int], numbers: array[int], shapes: Shapes, options: ReadOptions):
        self.path, self.starts, self.numbers, self.shapes, self.options = path, starts, numbers, shapes, options
        self._handle: BinaryIO | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __del__(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def example(self, number: int) -> Example:
        if self._handle is None:
            self._handle = self.path.open("rb")
        self._handle.seek(self.starts[number])
        where = f"{self.path}:{self.numbers[number]}"
        try:
            line = _text(self._handle.readline(), first=self.starts[number] == 0)
            return _jsonl_example(line, where, number, self.shapes, self.options)
        except (ConfigError, UnicodeDecodeError):  # it passed the check
            raise ConfigError(f"{where}: the file changed since it was checked; publish it again") from None


def read_jsonl(path: Path, options: ReadOptions) -> Sequence[Example]:
    """Every line checked (and the rows against the first); the examples, or where each starts."""
    starts, numbers = array("q"), array("q")
    held: list[Example] | None = [] if path.stat().st_size <= common.HELD_UP_TO_BYTES else None
    shapes: Shapes = {}
    first: Example | None = None
    with path.open("rb") as handle:
        start = 0
        for number, raw in enumerate(handle, 1):
            line = _text(raw, start, number == 1)
            if line.strip():
                where = f"{path}:{number}"
                example = _jsonl_example(line, where, len(starts), shapes, options)
                first = example if first is None else first
                _check_same_inputs(first.inputs, example.inputs, where)
                starts.append(start)
                numbers.append(number)
                if held is not None:
                    held.append(example)
            start += len(raw)
    return held if held is not None else JsonlRows(path, starts, numbers, shapes, options)


def _text(raw: bytes, start: int = 0, first: bool = False) -> str:
    """A line's bytes as text (the byte-order mark editors write dropped from the first line); not
    UTF-8: ``UnicodeDecodeError`` at its place in the file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnicodeDecodeError(exc.encoding, exc.object, exc.start + start, exc.end + start, exc.reason) from None
    return text.removeprefix("\ufeff") if first else text


def _check_same_inputs(first: Inputs, row: Inputs, where: str) -> None:
    """Every row gives the inputs the first gives, each as text or as numbers as there: a consumer
    would refuse the others one by one (a missing input, a text for a tensor), after publishing."""
    kinds, first_kinds = _input_kinds(row), _input_kinds(first)
    if kinds.keys() != first_kinds.keys():
        raise ConfigError(
            f"{where}: {_names(kinds)}, where the first row has {_names(first_kinds)} (every row gives the same inputs)"
        )
    for name, kind in kinds.items():
        if kind != first_kinds[name]:
            input = f"input {name!r}" if name else "the input"
            raise ConfigError(f"{where}: {input} is {kind}, where the first row's is {first_kinds[name]}")


def _input_kinds(inputs: Inputs) -> dict[str, str]:
    named = inputs if isinstance(inputs, dict) else {"": inputs}
    return {name: "text" if isinstance(value, bytes) else "numbers" for name, value in named.items()}


def _names(kinds: dict[str, str]) -> str:
    return "one unnamed input" if list(kinds) == [""] else "inputs " + ", ".join(map(repr, sorted(kinds)))


def _jsonl_example(line: str, where: str, index: int, shapes: Shapes, options: ReadOptions) -> Example:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or "inputs" not in obj:
        raise ConfigError(f'{where}: expected an object with "inputs"')
    raw = obj["inputs"]
    named = raw if isinstance(raw, dict) else {"": raw}
    inputs = {
        name: _json_tensor(value, f"{where} input {name!r}" if name else where, shapes, name, options)
        for name, value in named.items()
    }
    key = obj.get(options.key_field or "key")
    ident = obj.get(options.id_field or "id", index)
    if isinstance(ident, int) and not -(2**63) <= ident < 2**64:
        raise ConfigError(f"{where}: id {ident} does not fit in 64 bits (msgpack integers do not)")
    if key is not None and not isinstance(key, str):  # a number, true, a list: as JSON writes it
        key = json.dumps(key, separators=(",", ":"))
    return Example(
        to_key(key) if key is not None else row_key(index), ident, inputs if isinstance(raw, dict) else inputs[""]
    )


def _json_tensor(value: Any, where: str, shapes: Shapes, name: str, options: ReadOptions) -> Tensor:
    if isinstance(value, str):
        return value.encode()
    try:
        array = cast(np.asarray(value), options, where)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a regular nested list of numbers ({exc})") from None
    expected = shapes.setdefault(name, array.shape)
    if options.varying_shapes and array.ndim != len(expected):
        raise ConfigError(
            f"{where}: {array.ndim} dimensions {list(array.shape)}; the first row has {len(expected)} {list(expected)}"
        )
    if array.shape != expected and not options.varying_shapes:
        raise ConfigError(
            f"{where}: shape {list(array.shape)} differs from the first row's {list(expected)} "
            "(inputs of any length, for a --preprocess that takes them: --varying-shapes)"
        )
    return array
