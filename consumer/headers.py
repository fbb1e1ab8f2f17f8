"""The headers a worker reads and writes: an input's own, carried over to its output; the
``tfstream.errors.*`` that say why an input was dead-lettered (the README's wire format)."""

from __future__ import annotations

from confluent_kafka import Message

from consumer.errors import InputError

Headers = list[tuple[str, str | bytes | None]]
HEADER_PREFIX = "tfstream."
#: Headers the worker writes on its outputs and dead letters. An input's own copies of them (left by
#: an earlier run: dead letters replayed into the input topic) are dropped, so that each appears once,
#: with this run's value.
OWN_HEADERS = tuple(HEADER_PREFIX + name for name in ("errors.", "model.", "batch.", "predict.", "worker"))


def message_headers(msg: Message) -> Headers:
    """A record's headers as a list of (name, value) pairs."""
    headers = msg.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def source_headers(msg: Message) -> Headers:
    """The input's own headers, carried over to its output (tracing ids and the like), but ``OWN_HEADERS``."""
    return [(name, value) for name, value in message_headers(msg) if not name.startswith(OWN_HEADERS)]


def error_headers(msg: Message, error: InputError, group: str, model: dict[str, str]) -> Headers:
    """Why the input failed and where it came from, in the style of ``__connect.errors.*``: a dead
    letter's headers after the input's own."""
    _, ts = msg.timestamp()
    fields = {
        "errors.stage": error.stage,
        "errors.exception.class.name": type(error).__name__,
        "errors.exception.message": str(error),
        "errors.topic": str(msg.topic()),
        "errors.partition": str(msg.partition()),
        "errors.offset": str(msg.offset()),
        "errors.timestamp": str(ts),
        "errors.group": group,
        "errors.model.name": model["name"],
        "errors.model.version": model["version"],
    }
    return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]
