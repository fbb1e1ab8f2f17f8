"""``.csv`` files: numeric columns as one vector, or columns of text (``--dtype string``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from consumer.errors import ConfigError
from producer_tools.sources import common
from producer_tools.sources.common import (
    TEXT,
    Example,
    Inputs,
    MadeWhenRead,
    ReadOptions,
    checked_cast,
    row_key,
    to_key,
)

#: a .csv field may be this long (a document for a text model): Python's csv module stops at 128 KiB
CSV_FIELD_LIMIT = 2**31 - 1


def read_csv(path: Path, options: ReadOptions) -> Sequence[Example]:
    """Every row checked; the examples, or (a file over ``HELD_UP_TO_BYTES``) the rows read again
    as they are sent."""
    held: list[Example] | None = [] if path.stat().st_size <= common.HELD_UP_TO_BYTES else None
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
    if not header:
        raise ConfigError(f"input file {str(path)!r} has no header row: a .csv starts with a row naming its columns")
    if missing:
        raise ConfigError(f"input file {str(path)!r} has no column(s) {missing}; its header is {header}")
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
    return Example(to_key(key) if key is not None else row_key(index), ident, inputs)


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
    return checked_cast(np.asarray(values), options.dtype or "float32", where)


def _csv_texts(row: dict[str, Any], features: list[str], where: str) -> Inputs:
    """Each feature column's text as UTF-8 bytes: one column, the input itself; several, an input each, by name."""
    texts = {column: row[column].encode() for column in features}
    return texts[features[0]] if len(features) == 1 else texts
