"""Fit a decoded input to a model's signature: names, dtype, shape, finiteness.

Runs on every message, so it stays in NumPy and raises only ``InputError`` subclasses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from consumer import errors
from consumer.codec import SINGLE, InputEnvelope, Limits, WireTensor
from consumer.signature import STRING, Signature, TensorSpec

Example = dict[str, np.ndarray | bytes]
_NUMERIC_KINDS = frozenset("biuf")


def conform(envelope: InputEnvelope, signature: Signature, limits: Limits, reject_non_finite: bool = False) -> Example:
    """Return the inputs keyed by the model's input names, cast to the model's dtypes."""
    named = _match_names(envelope.inputs, signature)
    return {spec.name: _conform_tensor(named[spec.name], spec, limits, reject_non_finite) for spec in signature.inputs}


def _match_names(inputs: dict[str, WireTensor], signature: Signature) -> dict[str, WireTensor]:
    names = signature.input_names
    if set(inputs) == {SINGLE}:
        if len(names) != 1:
            raise errors.WrongInputsError(f'the model takes named inputs {list(names)}; send "inputs" as a map of them')
        return {names[0]: inputs[SINGLE]}
    missing, unknown = set(names) - set(inputs), set(inputs) - set(names)
    if missing or unknown:
        raise errors.WrongInputsError(
            f"inputs {sorted(inputs)} do not match the model's {list(names)}"
            + (f"; missing {sorted(missing)}" if missing else "")
            + (f"; unknown {sorted(unknown)}" if unknown else "")
        )
    return inputs


def _conform_tensor(value: WireTensor, spec: TensorSpec, limits: Limits, reject_non_finite: bool) -> np.ndarray | bytes:
    if spec.dtype == STRING:
        if not isinstance(value, bytes):
            raise errors.WrongDtypeError(f"input {spec.name!r} is a string input; send bin")
        return value
    if isinstance(value, bytes):
        raise errors.WrongDtypeError(f"input {spec.name!r} takes {spec.dtype}, got bin")
    array = _list_to_array(value, spec, limits) if isinstance(value, list) else value
    if array.shape != spec.shape:
        raise errors.WrongShapeError(
            f"input {spec.name!r} has shape {list(array.shape)}; the model takes {list(spec.shape)}"
        )
    array = _cast(array, spec)
    if reject_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise errors.NonFiniteError(f"input {spec.name!r} holds NaN or infinity")
    return array


def _list_to_array(value: list[Any], spec: TensorSpec, limits: Limits) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise errors.MalformedTensorError(
            f"input {spec.name!r} is not a regular nested list of numbers: {exc}"
        ) from None
    if array.ndim > limits.max_dims:
        raise errors.TooLargeError(f"input {spec.name!r} has {array.ndim} dimensions; the limit is {limits.max_dims}")
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise errors.MalformedTensorError(
            f"input {spec.name!r} is a list of {array.dtype.kind!r}-kind values, not numbers"
        )
    return array


def _cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    target = np.dtype(spec.dtype)
    if array.dtype == target:
        return array
    if array.size == 0 or np.can_cast(array.dtype, target, casting="same_kind"):
        return array.astype(target)
    raise errors.WrongDtypeError(
        f"input {spec.name!r} is {array.dtype.name}; the model takes {spec.dtype} "
        "and that cast would change the kind of value"
    )


def stack(examples: list[Example], signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Stack examples into batch arrays of ``rows`` rows; rows past the examples stay zero/empty."""
    batch: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if spec.dtype == STRING:
            column = np.full((rows,), b"", dtype=object)
        else:
            column = np.zeros((rows, *spec.shape), dtype=spec.dtype)
        for row, example in enumerate(examples):
            column[row] = example[spec.name]
        batch[spec.name] = column
    return batch
