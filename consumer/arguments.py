"""Command-line parsing shared by ``python -m consumer`` and ``python -m producer_tools``.

argparse reports a flag no command knows from the top-level parser: its usage is the list of
commands, not the flags of the one that was run. Here the command's own parser reports it, with
the flag it most likely meant.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from consumer.config import did_you_mean, topic_name_problem


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but words no flag takes are refused by the command that was
    run (exit 2, its usage, a hint at the flag meant)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _command_parser(parser, args)
        command.error(unrecognized(command, extra))
    return args


def unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """The error for ``extra``, with a hint for its first flag that looks like one of ``parser``'s."""
    message = f"unrecognized arguments: {' '.join(extra)}"
    for word in extra:
        if word.startswith("--") and (hint := _hint(parser, word.split("=", 1)[0])) is not None:
            return f"{message} ({hint})"
    return message


def _hint(parser: argparse.ArgumentParser, flag: str) -> str | None:
    """What ``flag`` most likely meant: a positional argument of that name, or a flag spelt alike."""
    name = flag.lstrip("-").replace("-", "_")
    for action in parser._actions:
        if not action.option_strings and action.dest == name:
            return f"{action.metavar or action.dest} is positional: give it without {flag}"
    flags = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    return did_you_mean(flag, flags, cutoff=0.75)


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command ``args`` ran, or ``parser`` itself when it has no commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if isinstance(chosen, argparse.ArgumentParser):
                return chosen
    return parser


def input_file_flags(parser: Any) -> tuple[str, ...]:
    """How a file of inputs is read (``producer_tools.sources``): ``publish``, ``collect --join``,
    ``python -m consumer check --inputs``. Returns the flags' destinations."""
    flags = [
        parser.add_argument(
            "--key-field", help="field, column or .npz array holding each message key (default: row number)"
        ),
        parser.add_argument("--id-field", help="field, column or .npz array holding each id (default: row number)"),
        parser.add_argument(
            "--input-name", help=".npy, .csv and folders: the model input each example goes to (default: unnamed)"
        ),
        parser.add_argument("--columns", metavar="A,B,...", help="CSV: the feature columns (default: all but key/id)"),
        parser.add_argument(
            "--dtype", help="cast numeric inputs to this NumPy dtype, e.g. float32; string: a .csv's columns are texts"
        ),
        parser.add_argument(
            "--varying-shapes",
            action="store_true",
            help=".jsonl: rows may differ in their inputs' sizes, not rank (inputs of any length, for a --preprocess)",
        ),
    ]
    return tuple(flag.dest for flag in flags)


def positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argparse type: ``kind`` above 0."""
    return _at_least(kind, zero_allowed=False)


def not_negative(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argparse type: ``kind``, 0 or more."""
    return _at_least(kind, zero_allowed=True)


def _at_least(kind: Callable[[str], float | int], zero_allowed: bool) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < 0 or (value == 0 and not zero_allowed):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero_allowed else 'positive'}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def at_most(parse: Callable[[str], float | int], high: float, limit: str) -> Callable[[str], float | int]:
    """An argparse type: ``parse``, and no more than ``high`` (``limit`` says it in the error)."""

    def parse_at_most(text: str) -> float | int:
        value = parse(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {text}")
        return value

    parse_at_most.__name__ = getattr(parse, "__name__", "value")
    return parse_at_most


#: the longest wait a tool's seconds flag takes (a day); more overflows the clock's calls
MAX_SECONDS = 86_400.0
#: the lowest rate a tool's rate flag takes (messages a second): one every 10,000 s
MIN_RATE = 1e-4
#: an argparse type: seconds above 0, at most a day
seconds = at_most(positive(float), MAX_SECONDS, f"{MAX_SECONDS:,.0f} seconds (a day)")


def rate(text: str) -> float:
    """An argparse type: messages a second, at least ``MIN_RATE``."""
    value = float(positive(float)(text))
    if value < MIN_RATE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_RATE:g} (a message every 10,000 s), got {text}")
    return value


def topic(text: str) -> str:
    """An argparse type: a name Kafka takes for a topic."""
    problem = topic_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
