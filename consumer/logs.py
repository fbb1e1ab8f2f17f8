"""structlog set-up: readable lines on a terminal, JSON lines elsewhere, always on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", **context: Any) -> None:
    """Configure structlog once per process; ``context`` is bound to every line (worker, device…)."""
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
    librdkafka.setLevel(_LEVELS[level])
    librdkafka.propagate = False


class _ToStructlog(logging.Handler):
    """Forwards stdlib records (librdkafka's) to structlog, so every line has one format."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(record.levelno, record.getMessage())


def line(text: str) -> None:
    """One line on stderr in one write, like the log lines (``print`` writes the newline apart)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def one_line(message: str) -> str:
    """A message of several lines (TensorFlow's errors) as one: its first line and its last, where
    TensorFlow puts the error itself."""
    lines = _lines(message)
    if len(lines) < 2:
        return lines[0] if lines else message
    return f"{lines[0]} … {lines[-1]}"


def last_line(message: str) -> str:
    """The last non-blank line of ``message`` (TensorFlow's error itself), or ""."""
    lines = _lines(message)
    return lines[-1] if lines else ""


def _lines(message: str) -> list[str]:
    return [text.strip() for text in message.splitlines() if text.strip()]


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
