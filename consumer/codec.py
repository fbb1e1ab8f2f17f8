"""Wire format v1: the contract with every producer and consumer, in any language.

Input value (msgpack map): ``inputs`` (one TENSOR or ``{name: TENSOR}``), optional ``id``
(any msgpack value, echoed), optional ``v`` (int, 1). A TENSOR is a raw-bytes map
``{"dtype", "shape", "data"}`` (C order, little-endian), a nested list of numbers, or
``bin`` for a scalar string. Output value: ``outputs``, ``id``, ``model``, ``source``, ``v``.

Decoding is strict and bounded: every failure raises a :class:`~consumer.errors.CodecError`
subclass, never anything else, and no input can make it allocate more than the limits allow.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from consumer import errors
from consumer.json_output import NUMPY_KINDS, NotNumpy, json_numbers, json_rows, numpy_rows

FORMAT_VERSION = 1
#: how many lists or maps deep an input's ``id`` may nest
MAX_ID_DEPTH = 32

#: dtype names a raw-bytes TENSOR may carry.
SUPPORTED_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)

#: The dtype of a string output TENSOR, whose ``data`` is a list of bin (outputs only).
STRING_DTYPE = "string"

#: The key under which a single unnamed input or output travels internally.
SINGLE = ""

#: A decoded TENSOR before it meets a model: an array (raw form), a nested list, or bytes.
WireTensor = np.ndarray | list[Any] | bytes


@dataclass(frozen=True)
class Limits:
    """Bounds on what one untrusted message may make us allocate."""

    max_message_bytes: int = 16 * 1024 * 1024
    max_tensor_elements: int = 16 * 1024 * 1024
    max_dims: int = 8


@dataclass(frozen=True)
class InputEnvelope:
    """A decoded input message. ``inputs`` is keyed by name, or by ``SINGLE`` if unnamed."""

    inputs: dict[str, WireTensor]
    id: Any = None
    has_id: bool = False


def unpack_input(value: bytes | None, limits: Limits) -> InputEnvelope:
    """Decode one input message value; raise a ``CodecError`` subclass if it is not v1."""
    return envelope_of(read_message(value, limits), limits)


def read_message(value: bytes | None, limits: Limits) -> Any:
    """The msgpack object an input message holds, checked against ``limits`` before parsing."""
    if value is None:
        raise errors.NotMsgpackError("the message has no value (a tombstone); expected a msgpack map")
    if len(value) > limits.max_message_bytes:
        raise errors.TooLargeError(
            f"message is {len(value)} bytes; the limit is {limits.max_message_bytes} (max_message_bytes)"
        )
    return unpack_value(value, limits)


def envelope_of(obj: Any, limits: Limits) -> InputEnvelope:
    """A parsed input message as an envelope; a ``CodecError`` subclass if it is not v1."""
    if not isinstance(obj, dict):
        raise errors.NotAMapError(f"the value is a msgpack {type(obj).__name__}, not a map")
    _check_version(obj.get("v", FORMAT_VERSION))
    if "inputs" not in obj:
        raise errors.MissingInputsError('the map has no "inputs" key')
    raw = obj["inputs"]
    if isinstance(raw, dict) and not _is_raw_tensor_map(raw):
        inputs = {_input_name(k): decode_tensor(t, limits, name=k) for k, t in raw.items()}
        if not inputs:
            raise errors.MissingInputsError('"inputs" is an empty map')
    else:
        inputs = {SINGLE: decode_tensor(raw, limits, name="inputs")}
    ident, has_id = id_of(obj)
    return InputEnvelope(inputs=inputs, id=ident, has_id=has_id)


def id_of(obj: Mapping[Any, Any]) -> tuple[Any, bool]:
    """The message's ``id`` and whether it has one. An id nested more than ``MAX_ID_DEPTH`` lists or
    maps deep is refused: ids are echoed, and JSON output walks them."""
    ident = obj.get("id")
    if isinstance(ident, list | dict) and _nesting(ident) > MAX_ID_DEPTH:
        raise errors.TooLargeError(
            f'"id" is nested more than {MAX_ID_DEPTH} lists or maps deep; send a flat id (a number, a string)'
        )
    return ident, "id" in obj


def _nesting(value: list[Any] | dict[Any, Any]) -> int:
    """How many lists or maps deep ``value`` goes, counted up to just past ``MAX_ID_DEPTH``."""
    depth, level = 0, [value]
    while level and depth <= MAX_ID_DEPTH:
        depth += 1
        members = (v for item in level for v in (item.values() if isinstance(item, dict) else item))
        level = [v for v in members if isinstance(v, list | dict)]
    return depth


def unpack_value(value: bytes, limits: Limits) -> Any:
    """One msgpack object within ``limits``; ``NotMsgpackError`` if the bytes are anything else."""
    try:
        return unpack_strict(value, limits)
    except Exception as exc:  # msgpack raises several unrelated types; all mean "not v1"
        reason = str(exc) or _UNSAID.get(type(exc).__name__, type(exc).__name__)
        raise errors.NotMsgpackError(f"not a single complete msgpack object: {reason}") from None


#: what msgpack's exceptions that carry no message mean
_UNSAID = {
    "FormatError": "it holds a byte that starts no msgpack value (0xc1)",
    "StackError": "lists or maps nested too deep",
}


def unpack_strict(value: bytes, limits: Limits) -> Any:
    """``msgpack.unpackb`` within ``limits``; raises whatever msgpack raises."""
    return msgpack.unpackb(
        value,
        raw=False,
        strict_map_key=False,
        max_bin_len=limits.max_message_bytes,
        max_str_len=limits.max_message_bytes,
        max_array_len=limits.max_tensor_elements,
        max_map_len=4096,
        max_ext_len=0,
    )


def _check_version(version: Any) -> None:
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise errors.UnsupportedVersionError(
            f'"v" is {version!r}; this consumer reads wire format version {FORMAT_VERSION}'
        )


def _input_name(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise errors.MalformedTensorError(f"input names must be non-empty strings, got {key!r}")
    return key


def _is_raw_tensor_map(obj: Mapping[Any, Any]) -> bool:
    return "dtype" in obj and "data" in obj


def decode_tensor(obj: Any, limits: Limits, name: Any = "inputs") -> WireTensor:
    """Decode one TENSOR: raw-bytes map → read-only array, list → list, bin/str → bytes."""
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and _is_raw_tensor_map(obj):
        return _decode_raw_tensor(obj, limits, name)
    raise errors.MalformedTensorError(
        f"input {name!r} is a {type(obj).__name__}; expected a raw-bytes tensor map "
        "{dtype, shape, data}, a nested list of numbers, or bin"
    )


def _decode_raw_tensor(obj: Mapping[str, Any], limits: Limits, name: Any) -> np.ndarray:
    dtype_name, shape, data = obj.get("dtype"), obj.get("shape", []), obj.get("data")
    if not isinstance(dtype_name, str) or dtype_name not in SUPPORTED_DTYPES:
        raise errors.UnknownDtypeError(
            f"input {name!r} has dtype {dtype_name!r}; supported: {', '.join(sorted(SUPPORTED_DTYPES))}"
        )
    if not isinstance(data, bytes):
        raise errors.MalformedTensorError(f'input {name!r}: "data" must be bin, got {type(data).__name__}')
    dims = _checked_shape(shape, limits, name)
    dtype = np.dtype(dtype_name).newbyteorder("<")
    expected = math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise errors.ShapeDataMismatchError(
            f"input {name!r}: shape {dims} of {dtype_name} needs {expected} bytes, data has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _checked_shape(shape: Any, limits: Limits, name: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise errors.MalformedTensorError(f'input {name!r}: "shape" must be a list of non-negative ints')
    if len(shape) > limits.max_dims:
        raise errors.TooLargeError(f"input {name!r} has {len(shape)} dimensions; the limit is {limits.max_dims}")
    if not shape_within(shape, limits.max_tensor_elements):
        elements = math.prod(shape)  # over the limit, or 0: an empty dimension beside ones that are
        raise errors.TooLargeError(
            f"input {name!r} declares {elements} elements; the limit is {limits.max_tensor_elements}"
            if elements
            else f"input {name!r} declares shape {shape}: empty, but its other dimensions multiply past the limit "
            f"of {limits.max_tensor_elements} elements"
        )
    return tuple(shape)


def shape_within(shape: list[int], max_elements: int) -> bool:
    """Whether ``shape`` holds at most ``max_elements``, counting each empty dimension as one: a shape
    with one, whose other dimensions multiply past what an array's size can be, NumPy refuses."""
    return math.prod(max(d, 1) for d in shape) <= max_elements


def wire_array(array: Any) -> np.ndarray:
    """``array`` as a TENSOR carries it: little-endian, and bfloat16 widened to float32 (exactly:
    NumPy alone cannot read bfloat16)."""
    arr = np.asarray(array)
    if arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def is_string_array(arr: np.ndarray) -> bool:
    """A ``tf.string`` output (NumPy object array of bytes) or any array of str/bytes."""
    return arr.dtype.kind in "OSU"


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """The raw-bytes TENSOR form of ``array`` (little-endian, C order); for strings, ``data`` is
    the list of their bytes in C order (dtype ``string``)."""
    arr = wire_array(array)
    if is_string_array(arr):
        return {"dtype": STRING_DTYPE, "shape": list(arr.shape), "data": [_as_bytes(v) for v in arr.reshape(-1)]}
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": np.ascontiguousarray(arr).tobytes()}


def encode_tensor_as_list(array: np.ndarray) -> list[Any] | Any:
    """The nested-list TENSOR form of ``array`` (what JSON-minded producers send)."""
    return np.asarray(array).tolist()


def pack_input(
    inputs: np.ndarray | bytes | Mapping[str, np.ndarray | bytes],
    id: Any = None,
    *,
    as_lists: bool = False,
) -> bytes:
    """Encode one input message (producer side). ``id`` is omitted when None."""
    encode = encode_tensor_as_list if as_lists else encode_tensor

    def one(t: np.ndarray | bytes) -> Any:
        return t if isinstance(t, bytes) else encode(t)

    body = {k: one(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) else one(inputs)
    message: dict[str, Any] = {"inputs": body, "v": FORMAT_VERSION}
    if id is not None:
        message["id"] = id
    try:
        return msgpack.packb(message, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise errors.CodecError(
            f"cannot encode the message ({exc}): ids and inputs must be msgpack values, integers within 64 bits"
        ) from None


def output_envelope(
    body: Any,
    *,
    model: Mapping[str, str],
    source: Mapping[str, Any],
    id: Any = None,
    has_id: bool = False,
) -> dict[str, Any]:
    """The output map; ``body`` is one encoded TENSOR or a map of them."""
    message = {"outputs": body, "model": model, "source": source, "v": FORMAT_VERSION}
    if has_id:
        message["id"] = id
    return message


def json_data(array: np.ndarray) -> tuple[str, Any]:
    """The JSON output form of a batch of TENSORs (a model's output): the wire dtype, and the values
    as nested lists, one item a row (bytes for strings, which JSON output writes as base64 text;
    NaN and the infinities as strings). One conversion a batch, not one a row."""
    arr = wire_array(array)
    if is_string_array(arr):
        return STRING_DTYPE, np.vectorize(_as_bytes, otypes=[object])(arr).tolist() if arr.size else arr.tolist()
    return arr.dtype.name, json_numbers(arr)


def json_data_rows(array: np.ndarray) -> tuple[str, list[bytes]]:
    """A batch of TENSORs (a model's output) for JSON output: the wire dtype, and each row's data as
    JSON text (``json_data``'s values; finite numbers written from the array at once)."""
    arr = wire_array(array)
    if arr.dtype.kind in NUMPY_KINDS and (arr.dtype.kind != "f" or np.isfinite(arr).all()):
        try:
            return arr.dtype.name, numpy_rows(arr)
        except NotNumpy:  # a type orjson does not write (float128): the values, one by one
            pass
    dtype, values = json_data(arr)
    return dtype, json_rows(values)


_packers = threading.local()


def _packer() -> msgpack.Packer:
    """One reusable packer per thread: ``msgpack.packb`` allocates a fresh 1 MiB buffer per call,
    which in a many-threaded process (TensorFlow's) costs an mmap/munmap pair each time."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer


def pack_output(envelope: Mapping[str, Any]) -> bytes:
    return _packer().pack(envelope)


def output_map(obj: Any) -> dict[str, Any]:
    """A decoded output message (msgpack or JSON), checked to be a map with ``outputs``."""
    if not isinstance(obj, dict) or "outputs" not in obj:
        raise errors.NotAMapError('not a v1 output message: expected a map with "outputs"')
    return obj


def unpack_output(value: bytes) -> dict[str, Any]:
    """Decode an output message (consumer side): TENSORs become NumPy arrays."""
    obj = output_map(msgpack.unpackb(value, raw=False, strict_map_key=False))
    out = obj["outputs"]
    limits = Limits(max_message_bytes=len(value) + 1, max_tensor_elements=len(value) + 1)
    if isinstance(out, dict) and not _is_raw_tensor_map(out):
        obj["outputs"] = {k: _decode_output(v, limits, name=k) for k, v in out.items()}
    else:
        obj["outputs"] = _decode_output(out, limits, name="outputs")
    return obj


def _decode_output(obj: Any, limits: Limits, name: Any) -> WireTensor:
    """An output TENSOR; a string one becomes a NumPy object array of bytes."""
    if isinstance(obj, dict) and obj.get("dtype") == STRING_DTYPE and isinstance(obj.get("data"), list):
        return string_array(obj["data"], _checked_shape(obj.get("shape", []), limits, name))
    return decode_tensor(obj, limits, name)


def string_array(strings: list[bytes], shape: Any) -> np.ndarray:
    """A string TENSOR's flat list of bytes as a NumPy object array of ``shape`` (``np.array`` would
    make fixed-width ``S`` items instead, dropping trailing NUL bytes)."""
    array = np.empty(len(strings), dtype=object)
    array[:] = strings
    return array.reshape(shape)
