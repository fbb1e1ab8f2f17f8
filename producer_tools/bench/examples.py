"""Examples a bench run sends from a file (``bench --inputs FILE``) instead of random ones: for a
model or preprocess function that parses what it is given (an image decoder), or to measure real
data. Any file ``publish`` takes; its first ``GIVEN_MAX`` examples, checked as the consumer checks
a message before anything is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from consumer.codec import Limits, pack_input
from consumer.errors import ConfigError
from consumer.signature import Signature

#: examples of the file used, at most; the bench cycles through them as it does through random ones
GIVEN_MAX = 4096


def read_examples(path: Path, sent: Signature) -> dict[str, np.ndarray]:
    """The file's first examples by input name, each column an object array of one value a row
    (an array, or a string's bytes). ``sent``: what messages carry for the model."""
    from producer_tools.sources import ReadOptions, read_inputs

    varying = path.suffix.lower() == ".jsonl" and any(spec.variable for spec in sent.inputs)
    examples = read_inputs(path, ReadOptions(varying_shapes=varying))[:GIVEN_MAX]
    names = list(sent.input_names)
    columns = {name: np.empty(len(examples), dtype=object) for name in names}
    for row, example in enumerate(examples):
        values = _by_name(example.inputs, names, path, row)
        for name in names:
            columns[name][row] = values[name]
    return columns


def _by_name(inputs: Any, names: list[str], path: Path, row: int) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        if len(names) > 1:
            raise ConfigError(
                f"--inputs {str(path)!r}: the model takes {len(names)} inputs, {names}, and the file's examples are "
                'one each: give a file that names them (a .npz\'s arrays, a .jsonl\'s {"inputs": {"name": …}})'
            )
        return {names[0]: inputs}
    if set(inputs) != set(names):
        raise ConfigError(
            f"--inputs {str(path)!r}: example {row} gives inputs {sorted(inputs)}, and the model takes {names}: "
            "name them as it does"
        )
    return inputs


def check_examples(columns: dict[str, np.ndarray], sent: Signature, path: Path) -> None:
    """Each example packed and decoded as the consumer decodes a message: one it would refuse (and
    dead-letter, so the run would measure failures) is refused now, saying why."""
    from consumer.validate import BatchDecoder

    rows = len(next(iter(columns.values())))
    if not sent.named_inputs:
        values = [pack_input(columns[sent.inputs[0].name][row]) for row in range(rows)]
    else:
        values = [pack_input({name: column[row] for name, column in columns.items()}) for row in range(rows)]
    decoded = BatchDecoder(sent, Limits()).decode(values)  # type: ignore[arg-type]  # no tombstone here
    if decoded.failures:
        row, error = decoded.failures[0]
        raise ConfigError(
            f"--inputs {str(path)!r}: example {row} is not what the consumer takes for this model "
            f"({sent.describe()}): {error}"
        )
