"""Read input files into examples, checking all of a file before anything is published.

Formats: ``.npy`` (one example per row), ``.npz`` (named arrays → named inputs), ``.jsonl``
(one object per line: ``inputs``, optional ``id`` and ``key``), ``.csv`` (numeric columns → one
vector), and a directory (each file's bytes as one example). Every problem raises
``ConfigError`` with the file (and line) in one sentence.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from consumer.errors import ConfigError
from producer_tools.npz_members import PackedColumn
from producer_tools.sources.common import (
    TEXT,
    Example,
    ReadOptions,
    Tensor,
    check_options,
    flag,
    given_options,
    repeat,
)
from producer_tools.sources.csv_files import read_csv
from producer_tools.sources.folder import read_folder
from producer_tools.sources.jsonl import read_jsonl
from producer_tools.sources.numpy_files import NpyRows, NpzRows, read_npy, read_npz

__all__ = [
    "TEXT",
    "Example",
    "NpyRows",
    "NpzRows",
    "PackedColumn",
    "ReadOptions",
    "Tensor",
    "flag",
    "given_options",
    "read_inputs",
    "repeat",
]


def read_inputs(path: Path, options: ReadOptions | None = None) -> Sequence[Example]:
    options = options or ReadOptions()
    if not path.exists():
        raise ConfigError(f"input file {str(path)!r} does not exist")
    readers: dict[str, Callable[[Path, ReadOptions], Sequence[Example]]] = {
        ".npy": read_npy,
        ".npz": read_npz,
        ".jsonl": read_jsonl,
        ".csv": read_csv,
    }
    reader = read_folder if path.is_dir() else readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"input file {str(path)!r}: use .npy, .npz, .jsonl, .csv or a folder of files")
    check_options(path, options)
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
