"""Fit a decoded input to a model's signature: names, dtype, shape, finiteness.

Runs on every message, so it stays in NumPy and raises only ``InputError`` subclasses.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from consumer import errors
from consumer.codec import (
    SINGLE,
    InputEnvelope,
    Limits,
    WireTensor,
    envelope_of,
    id_of,
    read_message,
    shape_within,
    unpack_strict,
)
from consumer.layout import CanonicalLayout, Sliced
from consumer.signature import STRING, Signature, TensorSpec

Example = dict[str, np.ndarray | bytes]
_NUMERIC_KINDS = frozenset("biuf")
_INT = frozenset({int})


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
    if not spec.fits_shape(array.shape):
        takes = f"the preprocess function takes {list(spec.shape)}, None: any size" if spec.variable else None
        raise errors.WrongShapeError(
            f"input {spec.name!r} has shape {list(array.shape)}; {takes or f'the model takes {list(spec.shape)}'}"
        )
    array = _cast(array, spec)
    if reject_non_finite and is_float(array.dtype) and not np.isfinite(array).all():
        raise errors.NonFiniteError(f"input {spec.name!r} holds NaN or infinity")
    return array


def is_float(dtype: np.dtype) -> bool:
    """Floating point, bfloat16 included (NumPy gives it kind ``V``)."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


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
    """Integers to any integer type, integers and floats to any float type, when every value fits:
    one that does not (300 for uint8, 1e6 for float16) is refused, never wrapped round or made inf."""
    target = np.dtype(spec.dtype)
    if array.dtype == target or array.size == 0:
        return array.astype(target, copy=False)
    integers = array.dtype.kind in "iu" and target.kind in "iu"
    if not integers and not np.can_cast(array.dtype, target, casting="same_kind"):
        raise errors.WrongDtypeError(
            f"input {spec.name!r} is {array.dtype.name}; the model takes {spec.dtype} "
            "and that cast would change the kind of value"
        )
    if integers and not _fits(array, np.iinfo(target)):
        raise _out_of_range(spec)
    with np.errstate(over="ignore"):
        cast = array.astype(target)
    if is_float(target) and (np.isinf(cast) & np.isfinite(array)).any():
        raise _out_of_range(spec)
    return cast


def _fits(array: np.ndarray, limits: np.iinfo) -> bool:
    return bool(limits.min <= array.min() and array.max() <= limits.max)


def _out_of_range(spec: TensorSpec) -> errors.WrongDtypeError:
    return errors.WrongDtypeError(
        f"input {spec.name!r} holds values outside the range of {spec.dtype}, the model's dtype"
    )


def stack(examples: list[Example], signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Stack examples into batch arrays of ``rows`` rows; rows past the examples stay zero/empty.
    An input whose examples vary in size (``TensorSpec.variable``) is a column of arrays: an
    object array of ``rows`` items, each an example's own array."""
    batch: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if spec.dtype == STRING:  # one string an example, as [] or as [1] (Keras' Input((1,), dtype="string"))
            column = np.full((rows, *spec.fixed_shape), b"", dtype=object)
        elif spec.variable:
            column = np.empty((rows,), dtype=object)
            empty = np.zeros([d or 0 for d in spec.shape], dtype=spec.dtype)
            for row in range(rows):  # not column[:] = [...]: NumPy would stack the arrays
                column[row] = empty
        else:
            column = np.zeros((rows, *spec.fixed_shape), dtype=spec.dtype)
        for row, example in enumerate(examples):
            column[row] = example[spec.name]
        batch[spec.name] = column
    return batch


@dataclass
class DecodedBatch:
    """The inputs of the rows that decoded, stacked; ``rows`` index the given values."""

    rows: list[int]
    inputs: dict[str, np.ndarray]
    ids: list[tuple[Any, bool]]
    failures: list[tuple[int, errors.InputError]]


class BatchDecoder:
    """Decodes and conforms a batch of message values into stacked model inputs.

    Most messages carry exactly the model's dtype and shape in the raw-bytes form: for them the
    checks are a few comparisons, and each input's rows become one array from one joined buffer.
    Anything else takes the general path (``unpack_input`` + ``conform``), which converts what can
    be converted and raises the precise ``InputError`` for what cannot.
    """

    def __init__(self, signature: Signature, limits: Limits, reject_non_finite: bool = False) -> None:
        self.signature, self.limits, self.reject_non_finite = signature, limits, reject_non_finite
        numeric = all(spec.dtype != STRING for spec in signature.inputs)
        #: every input numeric and of a fixed shape: a batch may be sliced as a whole, not parsed
        self._fast = numeric and not any(spec.variable for spec in signature.inputs)
        #: per input, for messages parsed: its spec, its dims, and its byte size when fixed (None: any size)
        self._raw = (
            {spec.name: (spec, list(spec.shape), _fixed_bytes(spec)) for spec in signature.inputs} if numeric else {}
        )
        self._single = None if signature.named_inputs else signature.inputs[0].name
        self._unpack = functools.partial(unpack_strict, limits=limits)
        self._layout = CanonicalLayout(signature, limits) if self._fast else None
        #: the model's inputs as NumPy and JSON make them by default (float64, int64), and their layout
        self._wide = widened(signature) if self._fast else None
        self._wide_layout = CanonicalLayout(self._wide, limits) if self._wide is not None else None

    def decode(self, values: list[bytes | None]) -> DecodedBatch:
        whole = (self._decode_exact(values) or self._decode_lists(values)) if self._fast and values else None
        batch = whole or self._decode_each(values)
        return self._drop_non_finite(batch) if self.reject_non_finite else batch

    def _decode_exact(self, values: list[bytes | None]) -> DecodedBatch | None:
        """The whole batch at once when every message is exactly what the model takes, else None:
        then each message goes its own way. A batch all in the canonical layout is sliced as one
        block; otherwise each message is sliced or parsed alone."""
        assert self._layout is not None
        try:
            if max(map(len, values)) > self.limits.max_message_bytes:  # type: ignore[arg-type]
                return None
            sliced = self._layout.slice_batch(values)  # type: ignore[arg-type]
            if sliced is None and (wide := self._decode_wide(values)) is not None:  # type: ignore[arg-type]
                return wide
            if sliced is None:
                found = []
                for value in values:  # up to the first that is not exact: parsed again then, on its own path
                    if (one := self._exact_one(value)) is None:  # type: ignore[arg-type]
                        return None
                    found.append(one)
                sliced = _as_columns(found, len(self.signature.inputs))
        except Exception:  # a tombstone (None) or bytes that are not msgpack: each message decides
            return None
        columns, ids = sliced
        inputs = {
            spec.name: _from_wire(column, spec, (len(values), *spec.fixed_shape))
            for spec, column in zip(self.signature.inputs, columns, strict=True)
        }
        return DecodedBatch(list(range(len(values))), inputs, ids, [])

    def _decode_wide(self, values: list[bytes]) -> DecodedBatch | None:
        """A batch all in the canonical layout of the widened inputs (``widened``), sliced as a whole
        and cast to the model's dtypes at once; None if it is not, or if a value falls outside them
        (then each message is refused on its own, saying which)."""
        if self._wide is None or self._wide_layout is None:
            return None
        sliced = self._wide_layout.slice_batch(values)
        if sliced is None:
            return None
        columns, ids = sliced
        inputs = {}
        for spec, wide, column in zip(self.signature.inputs, self._wide.inputs, columns, strict=True):
            array = _from_wire(column, wide, (len(values), *spec.fixed_shape))
            try:
                inputs[spec.name] = _cast(array, spec)
            except errors.WrongDtypeError:
                return None
        return DecodedBatch(list(range(len(values))), inputs, ids, [])

    def _decode_lists(self, values: list[bytes | None]) -> DecodedBatch | None:
        """A batch whose every message sends its inputs as nested lists (what JSON-minded producers
        and the README's simplest JavaScript send), each input of all rows made one array and cast at
        once; None at the first message that does not, or if the batch's arrays are not the model's
        shapes or fall outside its dtypes: then each message goes its own way, and says what is wrong."""
        rows: list[dict[str, WireTensor]] = []
        ids: list[tuple[Any, bool]] = []
        for value in values:
            try:
                envelope = envelope_of(read_message(value, self.limits), self.limits)
                named = _match_names(envelope.inputs, self.signature)
            except errors.InputError:
                return None
            if any(type(tensor) is not list for tensor in named.values()):
                return None
            rows.append(named)
            ids.append((envelope.id, envelope.has_id))
        inputs = {}
        for spec in self.signature.inputs:
            try:
                array = np.asarray([row[spec.name] for row in rows])
                if array.dtype.kind not in _NUMERIC_KINDS or array.shape != (len(rows), *spec.fixed_shape):
                    return None
                inputs[spec.name] = _cast(array, spec)
            except (ValueError, TypeError, RecursionError, errors.WrongDtypeError):  # ragged, or out of range
                return None
        return DecodedBatch(list(range(len(values))), inputs, ids, [])

    def _exact_one(self, value: bytes) -> Sliced | None:
        """Sliced when in the canonical layout (the usual case, a few byte comparisons), else parsed."""
        assert self._layout is not None
        sliced = self._layout.slice(value)
        if sliced is not None:
            return sliced
        fast = self._fast_path(self._unpack(value))
        return None if fast is None else ([fast[0][name] for name in self._raw], fast[1])  # type: ignore[misc]  # bytes: fixed shapes

    def _decode_each(self, values: list[bytes | None]) -> DecodedBatch:
        rows: list[int] = []
        parts: list[dict[str, bytes | np.ndarray]] = []
        ids: list[tuple[Any, bool]] = []
        failures: list[tuple[int, errors.InputError]] = []
        for index, value in enumerate(values):
            try:
                decoded = self._decode_one(value)
            except errors.InputError as error:
                failures.append((index, error))
                continue
            rows.append(index)
            parts.append(decoded[0])
            ids.append(decoded[1])
        return DecodedBatch(rows, self._stack(parts), ids, failures)

    def _decode_one(self, value: bytes | None) -> tuple[dict[str, Any], tuple[Any, bool]]:
        obj = read_message(value, self.limits)  # parsed once, for both paths
        fast = self._fast_path(obj) if self._raw else None
        if fast is not None:
            return fast
        envelope = envelope_of(obj, self.limits)
        return conform(envelope, self.signature, self.limits), (envelope.id, envelope.has_id)

    def _fast_path(self, obj: Any) -> tuple[dict[str, bytes | np.ndarray], tuple[Any, bool]] | None:
        """The raw ``data`` of each input when the message is exactly what the model takes, else None;
        for an input of any size (``TensorSpec.variable``), already its array."""
        if type(obj) is not dict or (version := obj.get("v", 1)) != 1 or version is True:
            return None
        given = obj.get("inputs")
        tensors = {self._single: given} if self._single is not None else given
        if type(tensors) is not dict or len(tensors) != len(self._raw):
            return None
        found: dict[str, bytes | np.ndarray] = {}
        for name, (spec, dims, nbytes) in self._raw.items():
            tensor = tensors.get(name)
            if type(tensor) is not dict or tensor.get("dtype") != spec.dtype:
                return None
            shape: Any = tensor.get("shape")
            data = tensor.get("data")
            if type(data) is not bytes:
                return None
            if nbytes is not None:  # the usual case: a fixed shape, its bytes stacked later
                if len(data) != nbytes or not _same_shape(shape, dims):
                    return None
                found[name] = data
            elif _takes_shape(shape, dims) and self._fits_limit(shape, len(data), spec):
                found[name] = _from_wire(data, spec, tuple(shape))
            else:
                return None
        return found, id_of(obj)

    def _fits_limit(self, shape: list[int], nbytes: int, spec: TensorSpec) -> bool:
        """Whether ``nbytes`` of data are exactly ``shape`` of the spec's dtype, within ``max_tensor_elements``
        (else the general path says which is wrong)."""
        elements = math.prod(shape)
        fits = shape_within(shape, self.limits.max_tensor_elements)
        return fits and nbytes == elements * np.dtype(spec.dtype).itemsize

    def _stack(self, parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if parts and all(type(v) is bytes for part in parts for v in part.values()) and self._fast:
            return self._join(parts)
        examples = [{spec.name: _as_array(p[spec.name], spec) for spec in self.signature.inputs} for p in parts]
        return stack(examples, self.signature, len(parts))

    def _join(self, parts: list[dict[str, bytes]]) -> dict[str, np.ndarray]:
        """Fast-path rows (each input's raw bytes) as one array per input, from one joined buffer."""
        return {
            spec.name: _from_wire(b"".join([p[spec.name] for p in parts]), spec, (len(parts), *spec.fixed_shape))
            for spec in self.signature.inputs
        }

    def _drop_non_finite(self, batch: DecodedBatch) -> DecodedBatch:
        bad: dict[int, str] = {}  # row → the first input holding NaN or infinity
        if not batch.rows:
            return batch
        for spec in self.signature.inputs:
            column = batch.inputs[spec.name]
            if spec.dtype != STRING and is_float(np.dtype(spec.dtype) if spec.variable else column.dtype):
                for row in np.flatnonzero(~_finite_rows(column)):
                    bad.setdefault(int(row), spec.name)
        if not bad:
            return batch
        good = np.array([row not in bad for row in range(len(batch.rows))])
        failures = batch.failures + [
            (batch.rows[row], errors.NonFiniteError(f"input {name!r} holds NaN or infinity"))
            for row, name in bad.items()
        ]
        return DecodedBatch(
            [r for r, g in zip(batch.rows, good, strict=True) if g],
            {name: column[good] for name, column in batch.inputs.items()},
            [i for i, g in zip(batch.ids, good, strict=True) if g],
            sorted(failures, key=lambda f: f[0]),
        )


#: per model dtype, what a producer's defaults send for it: NumPy's and JSON's numbers are float64
#: and int64
_WIDER = dict.fromkeys(("float16", "float32"), "float64") | dict.fromkeys(
    ("int8", "int16", "int32", "uint8", "uint16", "uint32"), "int64"
)


def widened(signature: Signature) -> Signature | None:
    """The signature with each input's dtype as NumPy's or JSON's default sends it (float64, int64),
    or None when none differs: messages in its layout are read a batch at once too, then cast."""
    inputs = tuple(replace(spec, dtype=_WIDER.get(spec.dtype, spec.dtype)) for spec in signature.inputs)
    return None if inputs == signature.inputs else replace(signature, inputs=inputs)


def _finite_rows(column: np.ndarray) -> np.ndarray:
    """Per row, whether all its values are finite (a column of arrays: row by row)."""
    if column.dtype == object:
        return np.array([bool(np.isfinite(row).all()) for row in column], dtype=bool)
    return np.isfinite(column).reshape(len(column), -1).all(axis=1)


def _as_columns(rows: list[Sliced], inputs: int) -> tuple[list[np.ndarray], list[tuple[Any, bool]]]:
    """Per-message slices as one joined byte array per input, and the ids."""
    columns = [np.frombuffer(b"".join([data[i] for data, _ in rows]), np.uint8) for i in range(inputs)]
    return columns, [ident for _, ident in rows]


def _fixed_bytes(spec: TensorSpec) -> int | None:
    """An example's size in bytes; None for an input of any size."""
    return None if spec.variable else math.prod(spec.fixed_shape) * np.dtype(spec.dtype).itemsize


def _takes_shape(given: Any, dims: list[int | None]) -> bool:
    """A wire shape that an input with dimensions of any size (None) takes: ints, of its rank."""
    return (
        type(given) is list
        and len(given) == len(dims)
        and set(map(type, given)) <= _INT
        and all(g >= 0 and (d is None or g == d) for g, d in zip(given, dims, strict=True))
    )


def _same_shape(given: Any, shape: list[int | None]) -> bool:
    # [True] == [1] and [3.0] == [3]: the dims must also all be ints (a set of types: no Python loop)
    return type(given) is list and given == shape and set(map(type, given)) <= _INT


def _as_array(value: Any, spec: TensorSpec) -> Any:
    """A fast-path row's raw bytes as the model's array; general-path rows are already conformed."""
    if type(value) is bytes and spec.dtype != STRING:
        return _from_wire(value, spec, spec.fixed_shape)
    return value


def _from_wire(data: bytes | np.ndarray, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Little-endian wire bytes as the model's (native) dtype: no copy on little-endian hosts."""
    wire = np.dtype(spec.dtype).newbyteorder("<")
    return np.frombuffer(data, wire).reshape(shape).astype(spec.dtype, copy=False)


def pad_rows(columns: dict[str, np.ndarray], signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Stacked inputs grown to ``rows`` rows; the added rows are zeros (or empty strings)."""
    have = len(next(iter(columns.values()))) if columns else 0
    if have == rows:
        return columns
    padded = stack([], signature, rows)
    for name, column in columns.items():
        padded[name][:have] = column
    return padded
