"""``.npy`` files (one example a row, memory-mapped) and ``.npz`` files (named arrays: named inputs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from consumer.errors import ConfigError
from producer_tools.npz_members import npz_arrays
from producer_tools.sources.common import (
    Column,
    Example,
    MadeWhenRead,
    ReadOptions,
    T,
    check_cast,
    check_column,
    check_numbers,
    check_texts,
    is_text,
    row_key,
    sent_value,
    to_key,
)

#: what every ``.npy`` file starts with (NumPy's format specification)
NPY_MAGIC = b"\x93NUMPY"


class NpyRows(MadeWhenRead):
    """The rows of a memory-mapped ``.npy`` file as examples: a list of 1,000,000 examples of 64
    floats held 630 MB, and a file larger than memory publishes."""

    def __init__(self, array: np.ndarray, dtype: str | None, input_name: str | None = None) -> None:
        self.array, self.dtype, self.input_name = array, dtype, input_name

    def __len__(self) -> int:
        return len(self.array)

    def example(self, row_number: int) -> Example:
        row = _sent_row(self.array[row_number], self.dtype)
        return Example(row_key(row_number), row_number, {self.input_name: row} if self.input_name else row)


def _sent_row(value: Any, dtype: str | None) -> Any:
    """An array's row as it is sent: cast to ``dtype`` if given (numbers only: texts refuse it)."""
    value = sent_value(value)
    return value.astype(dtype) if dtype else value


def read_npy(path: Path, options: ReadOptions) -> NpyRows:
    with path.open("rb") as file:
        if file.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ConfigError(f"input file {str(path)!r} is not a .npy file (no NumPy header): save it with numpy.save")
    array = _refusing_objects(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
    if array.ndim == 0:
        raise ConfigError(f"input file {str(path)!r} holds a scalar; expected one example per row")
    if is_text(array):
        check_texts(array, options, str(path))
    else:
        check_numbers(array, str(path))
        if options.dtype:
            check_cast(array, options.dtype, str(path))
    # a plain view: a memmap's rows cost 9x as much to index
    return NpyRows(np.asarray(array), options.dtype, options.input_name)


def _refusing_objects(path: Path, load: Callable[[], T]) -> T:
    """NumPy's own error for an array of Python objects names ``allow_pickle`` (or, memory-mapped,
    says it cannot map objects), which users cannot act on."""
    try:
        return load()
    except ValueError as exc:
        if "allow_pickle" not in str(exc) and "Python objects" not in str(exc):
            raise
        raise ConfigError(
            f"input file {str(path)!r} holds Python objects (dtype object), which are never unpickled: "
            "save a numeric array or an array of strings (numpy.array(texts)), or publish bytes from a folder"
        ) from None


def read_npz(path: Path, options: ReadOptions) -> NpzRows:
    whole = {name for name in (options.key_field, options.id_field) if name is not None}
    arrays = _refusing_objects(path, lambda: npz_arrays(path, whole))
    keys = _take_column(arrays, options.key_field, path)
    ids = _take_column(arrays, options.id_field, path)
    if not arrays:
        raise ConfigError(f"input file {str(path)!r} has no input arrays")
    rows = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(rows) != 1 or 0 in rows:
        sizes = {name: (len(a) if a.ndim else 0) for name, a in arrays.items()}
        raise ConfigError(f"input file {str(path)!r}: arrays must have the same number of rows, got {sizes}")
    for name, column in arrays.items():
        check_column(column, options, f"{path}[{name}]")
        if options.dtype:
            check_cast(column, options.dtype, f"{path}[{name}]")
    return NpzRows(arrays, keys, ids, options.dtype)


class NpzRows(MadeWhenRead):
    """The rows of a ``.npz`` file's arrays as examples, each made when it is sent (``npz_arrays``:
    none read whole where that can be helped)."""

    def __init__(
        self, arrays: dict[str, Column], keys: np.ndarray | None, ids: np.ndarray | None, dtype: str | None
    ) -> None:
        self.arrays, self.keys, self.ids, self.dtype = arrays, keys, ids, dtype
        self._length = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self._length

    def example(self, number: int) -> Example:
        return Example(
            to_key(self.keys[number]) if self.keys is not None else row_key(number),
            self.ids[number].item() if self.ids is not None else number,
            {name: _sent_row(column[number], self.dtype) for name, column in self.arrays.items()},
        )


def _take_column(arrays: dict[str, Column], name: str | None, path: Path) -> np.ndarray | None:
    if name is None:
        return None
    if name not in arrays:
        raise ConfigError(f"input file {str(path)!r} has no array {name!r}; it has {sorted(arrays)}")
    column = arrays.pop(name)
    assert isinstance(column, np.ndarray)  # read whole (npz_arrays)
    return column
