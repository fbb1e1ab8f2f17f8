"""Where the tools write: checked before a command starts work, so a bad path fails in one line
at once, not after minutes of it (a bench run, a collect)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, Self

from consumer.errors import ConfigError


def check_output_file(path: Path, flag: str) -> None:
    """A file the command will write: its folder must exist and be writable, and it must not be a folder."""
    if path.is_dir():
        raise ConfigError(f"invalid setting {flag}={str(path)!r}: it is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"invalid setting {flag}={str(path)!r}: {str(folder)!r} is not a writable directory")


def check_workdir(path: Path, flag: str) -> None:
    """A folder the command will create (with its parents) and write into."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"invalid setting {flag}={str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"invalid setting {flag}={str(path)!r}: {str(existing)!r} is not writable")


def part_of(path: Path) -> Path:
    """Where ``complete_file`` writes ``path`` until it is complete."""
    return path.with_name(path.name + ".part")


@contextmanager
def complete_file(path: Path, mode: str) -> Iterator[IO[Any]]:
    """A file written as ``PATH.part`` and renamed to ``path`` only when the block ends without an
    error: a write that fails or is interrupted leaves no file under either name."""
    part = part_of(path)
    try:
        with part.open(mode, encoding=None if "b" in mode else "utf-8") as file:
            yield file
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


class JsonLinesFile:
    """A JSON Lines file written a line at a time as records are read (its memory stays flat), as
    ``PATH.part``, renamed to ``PATH`` once the ``with`` block ends without an error: a command that
    fails or is interrupted leaves no partial file."""

    def __init__(self, path: Path, default: Callable[[Any], Any] | None = None) -> None:
        self.path, self.default = path, default
        self.part = part_of(path)
        self.written = 0
        self._handle: IO[Any] | None = None
        self._file = ExitStack()

    def __enter__(self) -> Self:
        self._handle = self._file.enter_context(complete_file(self.path, "w"))
        return self

    def write_line(self, line: dict[str, Any]) -> None:
        assert self._handle is not None, "a JsonLinesFile writes inside its with block"
        self._handle.write(json.dumps(line, default=self.default) + "\n")
        self.written += 1

    def __exit__(self, *failure: Any) -> None:
        self._file.__exit__(*failure)  # renamed when complete, removed on an error
