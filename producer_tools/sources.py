"""Read input files into examples, checking all of a file before anything is published.

Formats: ``.npy`` (one example per row), ``.npz`` (named arrays → named inputs), ``.jsonl``
(one object per line: ``inputs``, optional ``id`` and ``key``), ``.csv`` (numeric columns → one
vector), and a directory (each file's bytes as one example). Every problem raises
``ConfigError`` with the file (and line) in one sentence.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
import zlib
from abc import abstractmethod
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar, overload

import numpy as np

from consumer.errors import ConfigError
from producer_tools.npz_members import PackedColumn, npz_arrays

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


def read_inputs(path: Path, options: ReadOptions | None = None) -> Sequence[Example]:
    options = options or ReadOptions()
    if not path.exists():
        raise ConfigError(f"input file {str(path)!r} does not exist")
    readers: dict[str, Callable[[Path, ReadOptions], Sequence[Example]]] = {
        ".npy": _read_npy,
        ".npz": _read_npz,
        ".jsonl": _read_jsonl,
        ".csv": _read_csv,
    }
    reader = _read_folder if path.is_dir() else readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"input file {str(path)!r}: use .npy, .npz, .jsonl, .csv or a folder of files")
    _check_options(path, options)
    try:
        examples = reader(path, options)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read input file {str(path)!r}: it is not UTF-8 text ({exc.reason} at byte {exc.start:,}); "
            "save it as UTF-8"
        ) from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, csv.Error) as exc:
        raise ConfigError(f"cannot read input file {str(path)!r}: {exc}") from None
    if not examples:
        raise ConfigError(f"input file {str(path)!r} holds no examples")
    return examples


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


def _check_options(path: Path, options: ReadOptions) -> None:
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


def _cast(array: np.ndarray, options: ReadOptions, where: str) -> np.ndarray:
    _check_numbers(array, where)
    return array.astype(options.dtype) if options.dtype else array


def _check_column(array: Column, options: ReadOptions, where: str) -> None:
    """A .npz's array: numbers (cast as asked when each row is sent), or one string a row (``_check_texts``)."""
    if _is_text(array):
        _check_texts(array, options, where)
    else:
        _check_numbers(array, where)


def _is_text(array: Column) -> bool:
    return array.dtype.kind in "US"


def _check_texts(array: Column, options: ReadOptions, where: str) -> None:
    """An array of strings (NumPy's ``U`` or ``S``): one text an example, each sent as its bytes."""
    if array.ndim != 1:
        raise ConfigError(
            f"{where}: holds strings of shape {list(array.shape[1:])} an example; a message carries one string "
            "per input: save one text a row (a 1-D array)"
        )
    if options.dtype:
        raise ConfigError(f"{where}: holds strings, sent as their UTF-8 bytes: leave --dtype out")


def _value(value: Any) -> Any:
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


def _check_numbers(array: Column, where: str) -> None:
    kind = array.dtype.kind
    if kind not in "biuf":
        raise ConfigError(f"{where}: values must be numbers, found {_NOT_NUMBERS.get(kind, str(array.dtype))}")


def _row_key(i: int) -> bytes:
    return str(i).encode()


#: what every ``.npy`` file starts with (NumPy's format specification)
NPY_MAGIC = b"\x93NUMPY"


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


class NpyRows(MadeWhenRead):
    """The rows of a memory-mapped ``.npy`` file as examples: a list of 1,000,000 examples of 64
    floats held 630 MB, and a file larger than memory publishes."""

    def __init__(self, array: np.ndarray, dtype: str | None, input_name: str | None = None) -> None:
        self.array, self.dtype, self.input_name = array, dtype, input_name

    def __len__(self) -> int:
        return len(self.array)

    def example(self, row_number: int) -> Example:
        row = _sent_row(self.array[row_number], self.dtype)
        return Example(_row_key(row_number), row_number, {self.input_name: row} if self.input_name else row)


def _sent_row(value: Any, dtype: str | None) -> Any:
    """An array's row as it is sent: cast to ``dtype`` if given (numbers only: texts refuse it)."""
    value = _value(value)
    return value.astype(dtype) if dtype else value


def _read_npy(path: Path, options: ReadOptions) -> NpyRows:
    with path.open("rb") as file:
        if file.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ConfigError(f"input file {str(path)!r} is not a .npy file (no NumPy header): save it with numpy.save")
    array = _refusing_objects(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
    if array.ndim == 0:
        raise ConfigError(f"input file {str(path)!r} holds a scalar; expected one example per row")
    if _is_text(array):
        _check_texts(array, options, str(path))
    else:
        _check_numbers(array, str(path))
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


def _read_npz(path: Path, options: ReadOptions) -> NpzRows:
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
        _check_column(column, options, f"{path}[{name}]")
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
            _to_key(self.keys[number]) if self.keys is not None else _row_key(number),
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


#: A ``.jsonl`` file up to this size is held as examples once checked; a larger one is read again
#: line by line as it is sent, which parses each line twice (200,000 lines of 64 numbers, 265 MB:
#: 314 MB and 10.4 s held, 90 MB and 15.4 s read again)
HELD_UP_TO_BYTES = 64 * 2**20


def _read_jsonl(path: Path, options: ReadOptions) -> Sequence[Example]:
    """Every line checked (and the rows against the first); the examples, or where each starts."""
    starts, numbers = array("q"), array("q")
    held: list[Example] | None = [] if path.stat().st_size <= HELD_UP_TO_BYTES else None
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
        _to_key(key) if key is not None else _row_key(index), ident, inputs if isinstance(raw, dict) else inputs[""]
    )


def _json_tensor(value: Any, where: str, shapes: Shapes, name: str, options: ReadOptions) -> Tensor:
    if isinstance(value, str):
        return value.encode()
    try:
        array = _cast(np.asarray(value), options, where)
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


#: a .csv field may be this long (a document for a text model): Python's csv module stops at 128 KiB
CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: Path, options: ReadOptions) -> Sequence[Example]:
    """Every row checked; the examples, or (a file over ``HELD_UP_TO_BYTES``) the rows read again
    as they are sent."""
    held: list[Example] | None = [] if path.stat().st_size <= HELD_UP_TO_BYTES else None
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header, rows = _csv_rows(handle)
        features = _csv_features(header, options, path)
        count = 0
        for where_line, row in rows:
            example = _csv_row(row, header, features, f"{path}:{where_line}", count, options)
            if held is not None:
                held.append(example)
            count += 1
    return held if held is not None else CsvRows(path, count, header, features, options)


def _csv_rows(handle: TextIO) -> tuple[list[str], Iterator[tuple[int, dict[Any, Any]]]]:
    """A .csv's header, and its rows with the line each ends on (blank lines are skipped, and a
    quoted text may span lines)."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(handle)
    header = list(reader.fieldnames or [])
    return header, ((reader.line_num, row) for row in reader)


def _csv_row(
    row: dict[Any, Any], header: list[str], features: list[str], where: str, index: int, options: ReadOptions
) -> Example:
    _check_width(row, header, where)
    return _csv_example(row, features, where, index, options)


class CsvRows(MadeWhenRead):
    """The rows of a checked ``.csv`` file as examples, each parsed again when it is sent, in order:
    the check keeps how many rows there are, not what they hold. A row before the last one read
    reads the file again from its start (sending goes in order)."""

    def __init__(self, path: Path, count: int, header: list[str], features: list[str], options: ReadOptions):
        self.path, self.length, self.header, self.features, self.options = path, count, header, features, options
        self._handle: TextIO | None = None
        self._rows: Iterator[tuple[int, dict[Any, Any]]] = iter(())
        self._next = 0

    def __len__(self) -> int:
        return self.length

    def __del__(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def example(self, number: int) -> Example:
        try:
            if self._handle is None or number < self._next:
                self._start()
            for line, row in self._rows:
                index, self._next = self._next, self._next + 1
                if index == number:
                    return _csv_row(row, self.header, self.features, f"{self.path}:{line}", number, self.options)
        except (ConfigError, UnicodeDecodeError, csv.Error):  # it passed the check
            pass
        raise ConfigError(f"{self.path}: the file changed since it was checked; publish it again")

    def _start(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = self.path.open(newline="", encoding="utf-8-sig")
        header, self._rows = _csv_rows(self._handle)
        self._next = 0
        if header != self.header:
            raise ConfigError("the header changed")


def _check_width(row: dict[Any, Any], header: list[str], where: str) -> None:
    """A row of more or fewer fields than the header has columns is refused, not read askew."""
    extra = row.get(None) or []  # DictReader puts the fields past the header under None
    short = [column for column in header if row.get(column) is None]
    if extra or short:
        raise ConfigError(
            f"{where}: the row has {len(header) + len(extra) - len(short)} fields and the header {len(header)}: "
            "give every row one value per column (a text holding commas goes in double quotes)"
        )


def _csv_features(header: list[str], options: ReadOptions, path: Path) -> list[str]:
    wanted = [c for c in (options.key_field, options.id_field, *(options.columns or ())) if c]
    missing = [c for c in wanted if c not in header]
    if not header or missing:
        raise ConfigError(f"input file {str(path)!r} has no column(s) {missing or 'at all'}; its header is {header}")
    features = list(options.columns or [c for c in header if c not in {options.key_field, options.id_field}])
    _check_header(header, features, path)
    if not features:
        raise ConfigError(f"input file {str(path)!r} has no feature columns")
    if options.dtype == TEXT and options.input_name and len(features) > 1:
        raise ConfigError(
            f"--input-name takes one column of text, and {str(path)!r} has {len(features)} {features}: each goes to "
            "the input of its name (or pick one with --columns)"
        )
    return features


def _check_header(header: list[str], features: list[str], path: Path) -> None:
    """A header that is not one: a first row of numbers (a file without a header, whose first row
    would be lost), one column whose name holds ';' or tabs (another separator), or a column
    without a name among the features (the index pandas writes by default, which would be sent)."""
    where = f"input file {str(path)!r}"
    if all(_is_number(name) for name in header) and header != [str(i) for i in range(len(header))]:
        raise ConfigError(
            f"{where} starts with a row of numbers, {header}, where its header goes: add a first row naming the "
            "columns (a,b,…)"
        )
    if len(header) == 1 and (separator := next((c for c in ";\t|" if c in header[0]), None)):
        raise ConfigError(
            f"{where} has one column, {header[0]!r}: its fields look separated by {separator!r}, and a .csv is read "
            "comma-separated; save it with commas"
        )
    if "" in features:
        raise ConfigError(
            f"{where} has a column without a name (column {header.index('') + 1}; pandas writes its index so): "
            "save it with to_csv(index=False), or name the columns to send with --columns"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_example(row: dict[str, Any], features: list[str], where: str, index: int, options: ReadOptions) -> Example:
    inputs: Inputs = (
        _csv_texts(row, features, where) if options.dtype == TEXT else _csv_numbers(row, features, where, options)
    )
    if options.input_name:
        inputs = {options.input_name: inputs}  # type: ignore[dict-item]  # one vector, or one column of text
    key = row[options.key_field] if options.key_field else None
    ident = row[options.id_field] if options.id_field else index
    return Example(_to_key(key) if key is not None else _row_key(index), ident, inputs)


def _csv_numbers(row: dict[str, Any], features: list[str], where: str, options: ReadOptions) -> np.ndarray:
    """The feature columns as one vector."""
    values = []
    for column in features:
        cell = row[column]
        try:
            values.append(float(cell))
        except ValueError:
            if not cell.strip():
                raise ConfigError(
                    f"{where}: column {column!r} is empty: write a number (nan for a missing value)"
                ) from None
            raise ConfigError(
                f"{where}: column {column!r} holds {cell!r}, not a number (a column of text: --dtype {TEXT})"
            ) from None
    return np.asarray(values, dtype=options.dtype or "float32")


def _csv_texts(row: dict[str, Any], features: list[str], where: str) -> Inputs:
    """Each feature column's text as UTF-8 bytes: one column, the input itself; several, an input each, by name."""
    texts = {column: row[column].encode() for column in features}
    return texts[features[0]] if len(features) == 1 else texts


class FolderFiles(MadeWhenRead):
    """The files of a folder as examples, each read when it is sent: a folder of images larger than
    memory publishes."""

    def __init__(self, files: list[tuple[str, Path]], input_name: str | None) -> None:
        self.files, self.input_name = files, input_name

    def __len__(self) -> int:
        return len(self.files)

    def example(self, number: int) -> Example:
        name, path = self.files[number]
        try:
            data = path.read_bytes()
        except OSError as exc:  # gone or changed since it was listed
            raise ConfigError(f"cannot read input file {str(path)!r}: {exc.strerror}") from None
        return Example(name.encode(), name, {self.input_name: data} if self.input_name else data)


def _read_folder(path: Path, options: ReadOptions) -> FolderFiles:
    """Each file's bytes, its key and id its path in the folder: a file's name at the top, ``cat/1.jpg``
    in a folder of one subfolder a class (``keras.utils.image_dataset_from_directory``'s layout).
    Hidden files and folders (``.DS_Store``, ``.git``) are left out; every file is checked readable."""
    files = sorted(
        (f.relative_to(path).as_posix(), f)
        for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    if unreadable := next((f for _, f in files if not os.access(f, os.R_OK)), None):
        raise ConfigError(f"cannot read input file {str(unreadable)!r}: permission denied")
    return FolderFiles(files, options.input_name)


def _to_key(value: Any) -> bytes:
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
