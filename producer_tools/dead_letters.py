"""``dead-letters``: read a dead-letter topic, count its dead letters by why they failed, and write
each (with its input) as a JSON line.

A dead letter is the input's own record with the worker's ``tfstream.errors.*`` headers
(README, Wire format v1): the stage and the error, the input's topic, partition and offset, the
group and the model. A record without them is not one (another topic given by mistake).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Message

from consumer.config import did_you_mean
from consumer.errors import ConfigError, InputError
from consumer.headers import HEADER_PREFIX, message_headers
from producer_tools.collect import text_or_base64
from producer_tools.paths import JsonLinesFile

ERRORS = HEADER_PREFIX + "errors."
#: where the input a dead letter holds was read, from its headers
INPUT_FIELDS = ("topic", "partition", "offset", "timestamp")
#: reasons shown under each kind of failure in the summary, the most frequent first
REASONS_SHOWN = 3
#: a reason is cut to this many characters in the summary (never in the JSON lines)
REASON_CHARS = 160


@dataclass(frozen=True)
class DeadLetter:
    """What a dead letter's headers say, and where it lies in the dead-letter topic."""

    stage: str
    error: str
    reason: str
    input: str  # topic[partition]@offset of the input it holds
    model: str  # name version
    headers: dict[str, str]

    @property
    def kind(self) -> tuple[str, str]:
        return self.stage, self.error


def read(msg: Message) -> DeadLetter | None:
    """The dead letter ``msg`` is, or None when it carries no ``tfstream.errors.*`` headers."""
    found = message_headers(msg)
    headers = {name[len(ERRORS) :]: _header_text(value) for name, value in found if name.startswith(ERRORS)}
    if "exception.class.name" not in headers:
        return None
    where = f"{headers.get('topic', '?')}[{headers.get('partition', '?')}]@{headers.get('offset', '?')}"
    return DeadLetter(
        stage=headers.get("stage", "?"),
        error=headers["exception.class.name"],
        reason=headers.get("exception.message", ""),
        input=where,
        model=f"{headers.get('model.name', '?')} {headers.get('model.version', '?')}",
        headers=headers,
    )


def error_classes() -> list[str]:
    """The error class names a dead letter can carry: every kind of ``InputError``."""
    found, todo = [], [InputError]
    while todo:
        cls = todo.pop()
        found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(found)


def check_error_class(name: str) -> None:
    """``ConfigError`` for a name no dead letter carries, with the nearest one if any."""
    known = error_classes()
    if name in known:
        return
    near = did_you_mean(name, known)
    hint = f"{near} " if near else ""
    raise ConfigError(f"invalid setting --error={name!r}: no dead letter carries it; {hint}one of {', '.join(known)}")


class OfKind:
    """Takes a record that is a dead letter of one of ``errors`` (class names) and of one of
    ``stages`` (either None: any); never a record that is no dead letter. Counts the dead letters it saw."""

    def __init__(self, errors: list[str] | None, stages: list[str] | None) -> None:
        for name in errors or ():
            check_error_class(name)
        self.errors, self.stages = errors, stages
        self.seen = 0

    def __call__(self, msg: Message) -> bool:
        letter = read(msg)
        if letter is None:
            return False
        self.seen += 1
        return (self.errors is None or letter.error in self.errors) and (
            self.stages is None or letter.stage in self.stages
        )

    def __str__(self) -> str:
        errors = " or ".join(self.errors) if self.errors else "any error"
        return errors + (f" at stage {' or '.join(self.stages)}" if self.stages else "")


def reason(msg: Message) -> str:
    """``Class: message`` from a dead letter's headers; empty if it has none."""
    letter = read(msg)
    return f"{letter.error}: {letter.reason}" if letter else ""


def _number(text: str | None) -> int | str | None:
    """A header's number as a number (partition, offset, timestamp); anything else as it is."""
    return int(text) if text is not None and text.lstrip("-").isdigit() else text


def _header_text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""


@dataclass
class Tally:
    """Dead letters counted by (stage, error) and, within each, by reason; the first of each kind kept."""

    kinds: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    first: dict[tuple[str, str], DeadLetter] = field(default_factory=dict)
    models: Counter[str] = field(default_factory=Counter)
    others: int = 0  # records that are not dead letters
    first_other: str = ""

    def add(self, msg: Message, letter: DeadLetter | None) -> None:
        if letter is None:
            self.others += 1
            self.first_other = self.first_other or f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            return
        self.kinds[letter.kind] += 1
        self.reasons.setdefault(letter.kind, Counter())[letter.reason] += 1
        self.first.setdefault(letter.kind, letter)
        self.models[letter.model] += 1

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def lines(self) -> list[str]:
        """The summary: each kind of failure with its count, its first input and its commonest reasons."""
        out = [f"{'count':>9}  {'stage':<10} {'error':<24} first input"]
        for kind, count in self.kinds.most_common():
            stage, error = kind
            out.append(f"{count:>9,}  {stage:<10} {error:<24} {self.first[kind].input}")
            reasons = self.reasons[kind].most_common()
            for text, times in reasons[:REASONS_SHOWN]:
                out.append(f"{'':>11}{times:>9,} x {_cut(text)}")
            if len(reasons) > REASONS_SHOWN:
                rest = sum(times for _, times in reasons[REASONS_SHOWN:])
                out.append(f"{'':>11}{rest:>9,} x {len(reasons) - REASONS_SHOWN:,} other reasons")
        out += [f"model {name}: {count:,}" for name, count in self.models.most_common()]
        return out


def _cut(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 1] + "…"


class JsonLines(JsonLinesFile):
    """Each dead letter as a JSON line, as it is read: where it lies, why it failed, the input it
    holds (its key and value as UTF-8 text, else base64)."""

    def write(self, msg: Message, letter: DeadLetter) -> None:
        line = {
            "dead_letter": {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()},
            "input": {name: _number(letter.headers.get(name)) for name in INPUT_FIELDS},
            "stage": letter.stage,
            "error": letter.error,
            "reason": letter.reason,
            "headers": letter.headers,
            "key": text_or_base64(msg.key()),
            "value": text_or_base64(msg.value()),
        }
        self.write_line(line)
