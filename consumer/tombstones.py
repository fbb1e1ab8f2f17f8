"""Inputs without a value: a compacted topic's deletions (tombstones), and what ``--tombstones`` does
with them.

``dead-letter`` (the default) leaves them to the decoder, which dead-letters them as not v1.
``skip`` sets every one aside, done without an output. ``forward`` sets aside those with a key and
sends each to the output topic as a record without a value and with the input's key: where the
output topic is compacted, that deletes the key's earlier predictions. A tombstone without a key
deletes nothing, and is dead-lettered as in ``dead-letter``.

A forwarded tombstone keeps its place among the outputs of its input partition: the outputs of the
inputs before it are sent before it, those after it after it (``around``), so that what a compacted
output topic keeps of a key is what the input topic keeps of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

from confluent_kafka import Message

from consumer.offsets import Partition, coordinates_of

Mode = Literal["dead-letter", "skip", "forward"]
#: the default: tombstones are decoded like any input, and dead-lettered
DEAD_LETTER: Mode = "dead-letter"
SKIP: Mode = "skip"
FORWARD: Mode = "forward"


def set_aside(mode: Mode, messages: list[Message]) -> tuple[list[int], list[Message]]:
    """The indices of the messages to decode, and the tombstones ``mode`` (skip or forward: the
    default takes none, and is not asked) takes instead, in order."""
    kept: list[int] = []
    aside: list[Message] = []
    for index, msg in enumerate(messages):
        if msg.value() is None and (mode == SKIP or msg.key() is not None):
            aside.append(msg)
        else:
            kept.append(index)
    return kept, aside


def around(coords: Sequence[tuple[Partition, int]], tombstones: list[Message]) -> list[tuple[range, list[Message]]]:
    """The rows at ``coords`` cut into ranges, each with the tombstones to send after it: each
    tombstone after the rows of its partition before it (by offset) and before those after it."""
    due: dict[Partition, deque[tuple[int, Message]]] = {}
    for (partition, offset), msg in sorted(zip(coordinates_of(tombstones), tombstones, strict=True), key=_offset):
        due.setdefault(partition, deque()).append((offset, msg))
    pieces: list[tuple[range, list[Message]]] = []
    start = 0
    for row, (partition, offset) in enumerate(coords):
        waiting = due.get(partition)
        ahead: list[Message] = []
        while waiting and waiting[0][0] < offset:
            ahead.append(waiting.popleft()[1])
        if ahead:
            pieces.append((range(start, row), ahead))
            start = row
    pieces.append((range(start, len(coords)), [msg for waiting in due.values() for _, msg in waiting]))
    return pieces


def _offset(item: tuple[tuple[Partition, int], Message]) -> int:
    return item[0][1]
