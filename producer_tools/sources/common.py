"""What every input file reader shares: the example it makes, the options it takes (and refuses
where they do not apply), the checks of its values, and examples made only when read."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from consumer.errors import ConfigError
from producer_tools.npz_members import PackedColumn

T = TypeVar("T")
Tensor = np.ndarray | bytes
Inputs = Tensor | dict[str, Tensor]
#: each input's shape in a ``.jsonl`` file's first row, which the others are held against
Shapes = dict[str, tuple[int, ...]]
#: a .npz's array: in memory, memory-mapped, or read block by block (``npz_arrays``)
Column = np.ndarray | PackedColumn


@dataclass(frozen=True)
class Example:
    """One message to publish: its key, its id (echoed in the output) and its inputs."""

    key: bytes | None
    id: Any
    inputs: Inputs


#: ``--dtype`` for a CSV's columns of text: each cell is sent as its UTF-8 bytes (``bin``)
TEXT = "string"


@dataclass(frozen=True)
class ReadOptions:
    key_field: str | None = None
    id_field: str | None = None
    input_name: str | None = None  # .npy, .csv, folders: the input each example goes to (default: unnamed)
    columns: tuple[str, ...] | None = None  # CSV: the feature columns (default: all but key/id)
    dtype: str | None = None  # cast numeric inputs to this NumPy dtype; TEXT: a CSV's columns are texts
    varying_shapes: bool = False  # JSON lines: rows may differ in their dimensions' sizes, not in rank


#: what each kind of file takes of the options (``ReadOptions``' fields); the others are refused, not ignored
_TAKES = {
    ".npy": ("input_name", "dtype"),
    ".npz": ("key_field", "id_field", "dtype"),
    ".jsonl": ("key_field", "id_field", "dtype", "varying_shapes"),
    ".csv": ("key_field", "id_field", "columns", "input_name", "dtype"),
    "folder": ("input_name",),
}
#: why an option does not apply, where more can be said than that
_WHY_NOT = {
    (".npy", "key_field"): "a .npy file's rows have no fields; keys and ids are row numbers",
    (".npy", "id_field"): "a .npy file's rows have no fields; keys and ids are row numbers",
    (".npz", "input_name"): "a .npz file names its inputs by its arrays",
    (".jsonl", "input_name"): 'a .jsonl file names its inputs by a map: {"inputs": {"name": ...}}',
    ("folder", "key_field"): "a folder's keys and ids are its files' names",
    ("folder", "id_field"): "a folder's keys and ids are its files' names",
    ("folder", "dtype"): "a folder's files are sent as their bytes",
}


def given_options(options: ReadOptions) -> list[str]:
    """The options set (``ReadOptions``' fields), in their order."""
    return [option.name for option in fields(options) if getattr(options, option.name)]


def flag(option: str) -> str:
    """The command-line flag of a ``ReadOptions`` field."""
    return "--" + option.replace("_", "-")


def check_options(path: Path, options: ReadOptions) -> None:
    """Options that do not apply to this kind of file are refused, not ignored."""
    kind = "folder" if path.is_dir() else path.suffix.lower()
    noun = "a folder" if kind == "folder" else f"a {kind} file"
    for option in given_options(options):
        if option not in _TAKES[kind]:
            takes = ", ".join(map(flag, _TAKES[kind]))
            why = _WHY_NOT.get((kind, option), f"{noun} takes {takes}")
            raise ConfigError(f"{flag(option)} does not apply to {str(path)!r}: {why}")
    if options.dtype == TEXT and kind != ".csv":
        raise ConfigError(
            f"--dtype {TEXT} applies to .csv files, whose columns it reads as text; for {noun}, leave it out "
            '(a .jsonl\'s texts are JSON strings already: {"inputs": "some text"})'
        )


def cast(array: np.ndarray, options: ReadOptions, where: str) -> np.ndarray:
    check_numbers(array, where)
    return checked_cast(array, options.dtype, where) if options.dtype else array


#: rows of an array checked at once against ``--dtype`` (``check_cast``)
CHECK_ROWS = 65_536


def checked_cast(array: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """``array`` as ``dtype``, refusing a value the cast would change beyond a float's rounding: one
    out of an integer type's range, not whole, or not finite for one; one a float type would make
    infinite; anything but 0 and 1 for bool. (NumPy wraps 300 round to 44 in int8; the consumer
    refuses such a cast the same way.)"""
    target = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(target)
    if target.kind == "f" and not np.isinf(cast).any():
        return cast  # the common case, kept cheap (a .csv's rows): nothing made infinite
    _refuse_unfit(array, target, where)
    return cast


def check_cast(column: Column, dtype: str, where: str) -> None:
    """Every row of ``column`` casts to ``dtype`` (``checked_cast``), checked before anything is sent:
    a block at a time, so that an array larger than memory is not read whole."""
    target, first = np.dtype(dtype), 0
    for block in column.blocks() if isinstance(column, PackedColumn) else _slices(column):
        _refuse_unfit(block, target, where, first)
        first += len(block)


def _refuse_unfit(array: np.ndarray, target: np.dtype[Any], where: str, first_row: int | None = None) -> None:
    unfit = _unfit(array, target)
    if not unfit.any():
        return
    at = tuple(np.argwhere(unfit)[0])
    row = "" if first_row is None else f" row {first_row + int(at[0])}"
    raise ConfigError(
        f"{where}{row}: holds {array[at].item()!r}, which {target.name} cannot hold as it is "
        f"({_holds(target)}): publish with a --dtype that holds it"
    )


def _slices(array: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(array), CHECK_ROWS):
        yield np.asarray(array[start : start + CHECK_ROWS])


def _unfit(array: np.ndarray, target: np.dtype[Any]) -> np.ndarray:
    """Where ``array`` holds a value ``target`` cannot hold as it is."""
    with np.errstate(over="ignore", invalid="ignore"):
        if target.kind == "b":
            return ~((array == 0) | (array == 1))
        if target.kind in "iu":
            limits = np.iinfo(target)
            if array.dtype.kind == "f":
                whole = np.isfinite(array) & (np.trunc(array) == array)
                return ~(whole & (array >= limits.min) & (array <= limits.max))
            return (array < limits.min) | (array > limits.max)
        return np.isfinite(array) & np.isinf(array.astype(target))


def _holds(target: np.dtype[Any]) -> str:
    if target.kind == "b":
        return "0 and 1"
    if target.kind in "iu":
        limits = np.iinfo(target)
        return f"whole numbers from {limits.min} to {limits.max}"
    return f"finite numbers up to {float(np.finfo(target).max):.4g} in size"


def check_column(array: Column, options: ReadOptions, where: str) -> None:
    """A .npz's array: numbers (cast as asked when each row is sent), or one string a row (``check_texts``)."""
    if is_text(array):
        check_texts(array, options, where)
    else:
        check_numbers(array, where)


def is_text(array: Column) -> bool:
    return array.dtype.kind in "US"


def check_texts(array: Column, options: ReadOptions, where: str) -> None:
    """An array of strings (NumPy's ``U`` or ``S``): one text an example, each sent as its bytes."""
    if array.ndim != 1:
        raise ConfigError(
            f"{where}: holds strings of shape {list(array.shape[1:])} an example; a message carries one string "
            "per input: save one text a row (a 1-D array)"
        )
    if options.dtype:
        raise ConfigError(f"{where}: holds strings, sent as their UTF-8 bytes: leave --dtype out")


def sent_value(value: Any) -> Any:
    """An array's row as a message carries it: a string as its UTF-8 bytes, else as it is."""
    if isinstance(value, str):
        return value.encode()
    return bytes(value) if isinstance(value, bytes) else value


#: what a JSON or NumPy value that is not a number is, by its array's dtype kind
_NOT_NUMBERS = {
    "U": "text: a string input is one string an example (a JSON string, a 1-D array of strings, or a .csv "
    "column read with --dtype string)",
    "S": "bytes: a string input is one string an example (a JSON string, a 1-D array of strings, or a .csv "
    "column read with --dtype string)",
    "O": "null, an object, or an integer too large for 64 bits",
    "c": "complex numbers, which the wire format does not carry",
}


def check_numbers(array: Column, where: str) -> None:
    kind = array.dtype.kind
    if kind not in "biuf":
        raise ConfigError(f"{where}: values must be numbers, found {_NOT_NUMBERS.get(kind, str(array.dtype))}")


def row_key(i: int) -> bytes:
    return str(i).encode()


class MadeWhenRead(Sequence[Example]):
    """Examples each made when it is read (``example``): publishing takes the producer's memory, not
    the input's size."""

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | Sequence[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return self.example(range(len(self))[index])  # a negative index counts from the end, as a list's does

    @abstractmethod
    def example(self, number: int) -> Example: ...


#: A ``.jsonl`` or ``.csv`` file up to this size is held as examples once checked; a larger one is
#: read again line by line as it is sent, which parses each line twice (200,000 lines of 64 numbers
#: in a ``.jsonl``, 265 MB: 314 MB and 10.4 s held, 90 MB and 15.4 s read again)
HELD_UP_TO_BYTES = 64 * 2**20


def to_key(value: Any) -> bytes:
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, bytes) else str(value).encode()


def repeat(examples: Sequence[Example], times: int, count: int | None) -> Iterator[Example]:
    """The examples ``times`` times over, cut at ``count`` messages in all."""
    sent = 0
    for _ in range(times):
        for example in examples:
            if count is not None and sent >= count:
                return
            yield example
            sent += 1
