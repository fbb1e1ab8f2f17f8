"""structlog set-up: readable lines on a terminal, JSON lines elsewhere, always on stderr."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: a librdkafka line seen again within this many seconds is counted, not written: with the brokers
#: out of reach, each client logs a refused connection up to twenty times a second
REPEAT_WINDOW_SECONDS = 30.0
#: the part of a librdkafka line that changes from one repeat to the next
_TIMING = re.compile(r"\s*\(after \d+ms in state [^)]*\)")
#: a warning about one record (an input skipped) is written at most this many times per window
SAMPLED_LINES = 10
SAMPLED_WINDOW_SECONDS = 10.0


def configure(level: str = "info", fmt: str = "auto", **context: Any) -> None:
    """Configure structlog once per process; ``context`` is bound to every line (worker, device…)."""
    survive_lost_stderr()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # one write per line (``print`` makes two: the line, then its newline). The supervisor and
        # its workers share one stderr, unbuffered under PYTHONUNBUFFERED (as in the Dockerfile):
        # two writes per line let a line from one process land inside another's
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)
    librdkafka = logging.getLogger("librdkafka")
    librdkafka.handlers = [_ToStructlog()]
    librdkafka.filters = [Repeats()]
    librdkafka.setLevel(_LEVELS[level])
    librdkafka.propagate = False


class _ToStructlog(logging.Handler):
    """Forwards stdlib records (librdkafka's) to structlog, so every line has one format."""

    def emit(self, record: logging.LogRecord) -> None:
        repeats = getattr(record, "repeats", 0)
        extra = {"repeated": repeats} if repeats else {}
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **extra)


class Repeats(logging.Filter):
    """Writes a line once per ``window`` seconds; the next one written says how often it was left
    out meanwhile (``repeated``). Lines are the same when they differ only in librdkafka's timing."""

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[str, tuple[float, int]] = {}  # line → (written at, left out since)
        self._lock = threading.Lock()  # the consumer's and the producer's lines come from two threads

    def filter(self, record: logging.LogRecord) -> bool:
        line, now = _TIMING.sub("", record.getMessage()), self.clock()
        with self._lock:
            written_at, left_out = self._seen.get(line, (-float("inf"), 0))
            if now - written_at < self.window:
                self._seen[line] = (written_at, left_out + 1)
                return False
            if len(self._seen) >= 1000:  # lines vary (brokers, partitions): keep the memory bounded
                self._seen.clear()
            self._seen[line] = (now, 0)
        record.repeats = left_out
        return True


class Sampled:
    """A warning written once per record (an input skipped): the first ``lines`` of each ``window``
    seconds are written, the rest counted by kind and said in one line once the window is over (at
    the next ``warning`` or ``tick``) or at ``flush``. A stream of bad records (a producer writing
    JSON to the topic) then costs a few lines a window, not one per record."""

    def __init__(
        self,
        log: Any,
        event: str,
        lines: int = SAMPLED_LINES,
        window: float = SAMPLED_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.event, self.lines, self.window, self.clock = log, event, lines, window, clock
        self._opened_at: float | None = None
        self._written = 0
        self._held: dict[str, int] = {}
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self._roll(self.clock())
            if self._written < self.lines:
                self._written += 1
                self.log.warning(self.event, **fields)
                return
            self._held[kind] = self._held.get(kind, 0) + 1
            self._last = fields

    def tick(self) -> None:
        """Say what was held once its window is over, though no warning came since. Called every turn
        of the fetch loop: with nothing held (nearly always) it takes neither the lock nor the clock;
        the window then opens again at the next ``warning``, as it would here."""
        if not self._held:
            return
        with self._lock:
            self._roll(self.clock())

    def flush(self) -> None:
        with self._lock:
            self._say_held()

    def _roll(self, now: float) -> None:
        if self._opened_at is not None and now - self._opened_at < self.window:
            return
        self._say_held()
        self._opened_at, self._written = now, 0

    def _say_held(self) -> None:
        if not self._held:
            return
        self.log.warning(
            f"{self.event}: more, not written one by one",
            count=sum(self._held.values()),
            by_kind=dict(self._held),
            window_s=self.window,
            last=self._last,
        )
        self._held, self._last = {}, {}


class _SurvivesLostReader:
    """``sys.stderr``, except that its reader going away (a closed pipe: a log shipper that died,
    ``2>&1 | head``) costs the lines, not the run. From the first write that finds the pipe closed
    on, the stream's file descriptor points to /dev/null, so later lines, Python's or the C
    libraries', go nowhere without failing."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        write_to_devnull(self._stream.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def survive_lost_stderr() -> None:
    """Make this process's stderr survive its reader going away (``_SurvivesLostReader``). Before,
    the supervisor's next line raised ``BrokenPipeError`` and ended it without stopping its workers,
    and its exit then waited for them for good."""
    if sys.stderr is None:  # started with stderr closed (``2>&-``): Python leaves it None
        sys.stderr = _devnull_stderr()
    if not isinstance(sys.stderr, _SurvivesLostReader):
        sys.stderr = _SurvivesLostReader(sys.stderr)


def _devnull_stderr() -> Any:
    """/dev/null as stderr, on file descriptor 2 too: left closed, it would go to the next file or
    socket opened, and the C libraries' lines into it."""
    try:
        os.fstat(2)
    except OSError:
        write_to_devnull(2)
    return open(2, "w", buffering=1, closefd=False)


def write_to_devnull(fd: int) -> None:
    """File descriptor ``fd`` (open or not) writes to /dev/null from now on, and is inherited like
    a standard stream (the workers write to the supervisor's stderr)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull == fd:  # ``fd`` was closed: it came back, but Python opens files for itself alone
        os.set_inheritable(fd, True)
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def line(text: str) -> None:
    """One line on stderr in one write, like the log lines (``print`` writes the newline apart)."""
    survive_lost_stderr()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def one_line(message: str) -> str:
    """A message of several lines (TensorFlow's errors) as one: its first line and its last, where
    TensorFlow puts the error itself."""
    lines = _lines(message)
    if len(lines) < 2:
        return lines[0] if lines else message
    return f"{lines[0]} … {lines[-1]}"


def first_line(message: str) -> str:
    """The first non-blank line of ``message`` (a Python exception's own), or ""."""
    lines = _lines(message)
    return lines[0] if lines else ""


def last_line(message: str) -> str:
    """The last non-blank line of ``message`` (TensorFlow's error itself), or ""."""
    lines = _lines(message)
    return lines[-1] if lines else ""


def _lines(message: str) -> list[str]:
    """The non-blank lines, but TensorFlow's trailer naming the graph node (``[[{{node X}}]] [Op:…]``),
    which follows the error itself."""
    return [text.strip() for text in message.splitlines() if text.strip() and not text.strip().startswith("[[{{node")]


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
