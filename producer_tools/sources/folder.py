"""A folder of files: each file's bytes one example, keyed by its path in the folder."""

from __future__ import annotations

import os
from pathlib import Path

from consumer.errors import ConfigError
from producer_tools.sources.common import (
    Example,
    MadeWhenRead,
    ReadOptions,
)


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


def read_folder(path: Path, options: ReadOptions) -> FolderFiles:
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
