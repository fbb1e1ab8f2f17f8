"""Many integers in msgpack at once, byte for byte as msgpack's own packer writes each.

msgpack gives an integer the smallest of ten formats that holds it: a fixint (the value itself in one
byte), or a first byte naming the format followed by 1, 2, 4 or 8 big-endian bytes. ``formats``
finds each value's format in one NumPy step; ``big_endian`` and ``payload`` give the bytes after the
first byte of values that share a format.
"""

from __future__ import annotations

import numpy as np

#: the lower bounds of formats 1-9 (format 0 is below -2**31), as ``np.digitize`` takes them
_BOUNDS = np.array([-(2**31), -(2**15), -128, -32, 0, 128, 256, 2**16, 2**32], dtype=np.int64)
#: per format: (its first byte, or None for a fixint, which is its own first byte; payload bytes)
FORMATS: tuple[tuple[int | None, int], ...] = (
    (0xD3, 8),  # int 64, below -2**31
    (0xD2, 4),  # int 32
    (0xD1, 2),  # int 16
    (0xD0, 1),  # int 8, -128 to -33
    (None, 1),  # negative fixint, -32 to -1
    (None, 1),  # positive fixint, 0 to 127
    (0xCC, 1),  # uint 8
    (0xCD, 2),  # uint 16
    (0xCE, 4),  # uint 32
    (0xCF, 8),  # uint 64, 2**32 and up
)


def formats(values: np.ndarray) -> np.ndarray:
    """Each int64 value's msgpack format: an index into ``FORMATS``."""
    return np.digitize(values, _BOUNDS)


def first_byte(fmt: int) -> bytes:
    """What precedes a value's payload: the format's byte, or nothing for a fixint (its payload)."""
    head = FORMATS[fmt][0]
    return b"" if head is None else bytes([head])


def big_endian(values: np.ndarray) -> np.ndarray:
    """Each int64 value's 8 bytes, big-endian two's complement: one row of ``uint8`` per value."""
    return values.astype(">i8").view(np.uint8).reshape(len(values), 8)


def payload(big_endian_rows: np.ndarray, fmt: int) -> np.ndarray:
    """The bytes after the first byte of values all of format ``fmt`` (a fixint's is the value
    itself), from their ``big_endian`` rows: the low bytes, which is what every format writes."""
    return big_endian_rows[:, 8 - FORMATS[fmt][1] :]
