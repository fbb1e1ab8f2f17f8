"""The arrays of a ``.npz`` file, none of them read whole where that can be helped: an array stored
uncompressed (``numpy.savez``) is memory-mapped where it lies in the file, a compressed one
(``numpy.savez_compressed``) read block by block as its rows are asked for (``PackedColumn``)."""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from consumer.errors import ConfigError

#: each ``.npy`` header version NumPy writes, and its reader
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

#: a zip member's local header: its signature, then the lengths of its name and extra field at 26
_LOCAL_HEADER = struct.Struct("<4s22xHH")

#: how much of a compressed array ``PackedColumn`` holds at a time (at least one row)
BLOCK_BYTES = 2**20


def npz_arrays(path: Path, whole: set[str]) -> dict[str, np.ndarray | PackedColumn]:
    """Each array of a ``.npz`` by name: memory-mapped where it is stored uncompressed, read block by
    block where it is compressed, read whole where it is named in ``whole`` (keys, ids) or can be
    neither (of Python objects, empty, Fortran-ordered, an unknown .npy version)."""
    arrays: dict[str, np.ndarray | PackedColumn] = {}
    with np.load(path, allow_pickle=False) as loaded, path.open("rb") as file:
        infos = {info.filename.removesuffix(".npy"): info for info in loaded.zip.infolist()}
        for name in loaded.files:
            info = infos.get(name)
            lazy = None if name in whole or info is None else _lazy(path, file, loaded.zip, info)
            arrays[name] = loaded[name] if lazy is None else lazy
    return arrays


def _lazy(path: Path, file: BinaryIO, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.compress_type == zipfile.ZIP_STORED:
        return _mapped(path, file, info)
    with archive.open(info) as member:
        header = _header(member)
        if header is None or header[1]:  # Fortran order: a row is not one run of bytes
            return None
        shape, _, dtype, start = header
        _read_through(member, start + dtype.itemsize * math.prod(shape), info.filename)
    return PackedColumn(path, info.filename, start, shape, dtype)


def _read_through(member: IO[bytes], size: int, name: str) -> None:
    """Decompress a member to its end, holding one block at a time: it is checked whole (its
    checksum, its length) before anything of the file is sent, as a file read whole was."""
    while member.read(BLOCK_BYTES):
        pass
    if member.tell() != size:
        raise zipfile.BadZipFile(f"{name} holds {member.tell():,} bytes, its header says {size:,}")


def _header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any], int] | None:
    """A ``.npy`` header read from ``stream``: shape, Fortran order, dtype and where the data starts;
    None for an array that is not read lazily (of Python objects, a scalar, empty, an unknown version)."""
    try:
        shape, fortran, dtype = _HEADER_READERS[np.lib.format.read_magic(stream)](stream)
    except (KeyError, ValueError):
        return None
    if dtype.hasobject or not shape or 0 in shape:
        return None
    return shape, fortran, dtype, stream.tell()


def _mapped(path: Path, file: BinaryIO, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A member stored uncompressed, memory-mapped where its data lies in the file (``file`` open on
    ``path``); None where ``_header`` says so."""
    file.seek(info.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(file.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        return None
    file.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    header = _header(file)
    if header is None:
        return None
    shape, fortran, dtype, offset = header
    # a plain view: a memmap's rows cost 9x as much to index
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"))


class PackedColumn:
    """A compressed ``.npz`` member's rows, decompressed in blocks of about ``BLOCK_BYTES`` as they
    are asked for: in order, each block read once; a row before the block held reads the member
    again from its start (sending goes in order). Holds one block, not the array (a 1,000,000-row
    array of 64 float32 is 256 MB whole)."""

    def __init__(self, path: Path, member: str, start: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.path, self.member, self.start = path, member, start
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)
        self.row_bytes = dtype.itemsize * math.prod(shape[1:])
        self.block_rows = max(1, BLOCK_BYTES // max(1, self.row_bytes))
        self._archive: zipfile.ZipFile | None = None
        self._stream: IO[bytes] | None = None
        self._block = np.empty((0, *shape[1:]), dtype)
        self._first = 0  # the number of the block's first row

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = self._stream = None

    def __getitem__(self, number: int) -> Any:
        if not 0 <= number - self._first < len(self._block):
            self._read_block(number - number % self.block_rows)
        return self._block[number - self._first]

    def blocks(self) -> Iterator[np.ndarray]:
        """Every row, a block at a time, in order (the member read through once)."""
        for first in range(0, self.shape[0], self.block_rows):
            self[first]
            yield self._block

    def _read_block(self, first: int) -> None:
        rows = min(self.block_rows, self.shape[0] - first)
        try:
            stream = self._at(first)
            data = stream.read(rows * self.row_bytes)
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error):
            data = b""
        if len(data) != rows * self.row_bytes:
            self.close()
            raise ConfigError(f"{self.path}: the file changed since it was checked; publish it again")
        self._block = np.frombuffer(data, self.dtype).reshape((rows, *self.shape[1:]))
        self._first = first

    def _at(self, row: int) -> IO[bytes]:
        """The member's stream at ``row``: read on from where it is, or opened again before it."""
        offset = self.start + row * self.row_bytes
        if self._stream is None or self._stream.tell() > offset:
            self.close()
            self._archive = zipfile.ZipFile(self.path)
            self._stream = self._archive.open(self.member)
            if _header(self._stream) != (self.shape, False, self.dtype, self.start):
                raise zipfile.BadZipFile("another array")
        if self._stream.tell() < offset:
            self._stream.seek(offset)
        return self._stream
