"""Exactly-once: which number each worker's ``transactional.id`` (``PREFIX-GROUP-HOST-N``) ends with.

An id must be unique while its worker runs, or the two producers fence each other, and the same
after a restart, so that a restarted worker fences its dead predecessor's open transaction. Two
supervisors of one group on one host would both number their workers 0, 1 …; so each number is
claimed with a lock on a file in a folder every process of the host shares, and a second
supervisor takes the next free numbers. A lock is released when its process exits, however it
exits (the kernel drops it), and the next supervisor takes the number again. ``release`` also
removes the files; a process that takes a lock checks that its file was not removed meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

LOCK_FOLDER = "tfstream-locks"
#: More workers than this for one group on one host is a mistake, not a plan.
MAX_NUMBERS = 4096


def lock_folder() -> Path:
    return Path(tempfile.gettempdir()) / LOCK_FOLDER


class HostSlots:
    """Numbers claimed on this host for one transactional id prefix and group, until ``release``."""

    def __init__(self, prefix: str, group: str, folder: Path | None = None) -> None:
        self.folder = folder or lock_folder()
        digest = hashlib.sha256(group.encode()).hexdigest()[:16]  # a group id may hold any character
        self._stem = f"{prefix}-{digest}"
        self._locks: list[tuple[int, Path]] = []  # open file descriptors, each holding its file's lock

    def claim(self, count: int) -> list[int]:
        """The ``count`` lowest numbers no other live process holds; ``OSError`` if the folder cannot
        be used."""
        self._prepare_folder()
        numbers: list[int] = []
        for number in range(MAX_NUMBERS):
            if len(numbers) == count:
                return numbers
            if self._lock(number):
                numbers.append(number)
        self.release()
        raise OSError(f"no free number below {MAX_NUMBERS} in {self.folder}")

    def release(self) -> None:
        for descriptor, path in self._locks:
            with contextlib.suppress(OSError):  # another user's file, in a folder that keeps it theirs
                path.unlink()
            os.close(descriptor)  # closing the file drops its lock
        self._locks.clear()

    def _prepare_folder(self) -> None:
        if not self.folder.is_dir():
            self.folder.mkdir(exist_ok=True)
            self.folder.chmod(0o1777)  # like /tmp: every user's supervisors share it

    def _lock(self, number: int) -> bool:
        path = self.folder / f"{self._stem}-{number}.lock"
        while True:
            descriptor = _open(path)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                return False
            if _same_file(descriptor, path):
                self._locks.append((descriptor, path))
                return True
            os.close(descriptor)  # its holder removed it as we opened it: lock the one at its path now


def _open(path: Path) -> int:
    try:  # another user's file: opened without O_CREAT, which fs.protected_regular refuses there
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
