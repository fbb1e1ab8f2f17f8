"""Wire format v1: round trips for every form, and a corpus of malformed inputs."""

from __future__ import annotations

import contextlib
import json
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from consumer import codec, errors
from consumer.codec import SINGLE, Limits, pack_input, unpack_input
from consumer.json_output import json_numbers, json_value
from consumer.signature import Signature, TensorSpec
from consumer.validate import BatchDecoder

LIMITS = Limits(max_message_bytes=1 << 20, max_tensor_elements=1 << 16, max_dims=6)
DTYPES = sorted(codec.SUPPORTED_DTYPES)
arrays = st.sampled_from(DTYPES).flatmap(
    lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
)


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)


@given(arrays, st.one_of(st.none(), MSGPACK_INTS, st.text(max_size=20), st.binary(max_size=10)))
def test_raw_tensor_round_trips_bit_exactly_with_its_id(array: np.ndarray, ident: object) -> None:
    envelope = unpack_input(pack_input(array, id=ident), LIMITS)
    decoded = envelope.inputs[SINGLE]
    assert isinstance(decoded, np.ndarray)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()
    assert envelope.has_id == (ident is not None) and envelope.id == ident


@pytest.mark.parametrize("ident", [2**64, -(2**63) - 1])
def test_an_id_msgpack_cannot_hold_is_a_codec_error_not_a_crash(ident: int) -> None:
    with pytest.raises(errors.CodecError, match="64 bits"):
        pack_input(np.zeros(2, "float32"), id=ident)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), elements=st.floats(-1e6, 1e6)))
def test_nested_list_form_round_trips(array: np.ndarray) -> None:
    decoded = unpack_input(pack_input(array, as_lists=True), LIMITS).inputs[SINGLE]
    assert np.array_equal(np.asarray(decoded), array)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in {"dtype", "data"}), arrays, min_size=1, max_size=3
    )
)
def test_named_inputs_round_trip(inputs: dict[str, np.ndarray]) -> None:
    decoded = unpack_input(pack_input(inputs), LIMITS).inputs
    assert set(decoded) == set(inputs)
    for name, array in inputs.items():
        assert np.asarray(decoded[name]).tobytes() == array.tobytes()


def test_bin_and_str_inputs_become_bytes() -> None:
    assert unpack_input(packb({"inputs": b"\xff\xd8jpeg"}), LIMITS).inputs[SINGLE] == b"\xff\xd8jpeg"
    assert unpack_input(packb({"inputs": "héllo"}), LIMITS).inputs[SINGLE] == "héllo".encode()


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.arange(3, dtype=">i4")
    raw = msgpack.unpackb(pack_input(array))["inputs"]
    assert raw["dtype"] == "int32" and raw["data"] == np.arange(3, dtype="<i4").tobytes()


def test_output_envelope_round_trips() -> None:
    outputs = {"probs": codec.encode_tensor(np.array([0.25, 0.75], "float32"))}
    value = codec.pack_output(
        codec.output_envelope(
            outputs,
            model={"name": "m", "version": "1"},
            source={"topic": "t", "partition": 0, "offset": 5, "timestamp": 1},
            id="a",
            has_id=True,
        )
    )
    decoded = codec.unpack_output(value)
    assert decoded["id"] == "a" and decoded["v"] == 1 and decoded["source"]["offset"] == 5
    assert np.array_equal(decoded["outputs"]["probs"], np.array([0.25, 0.75], "float32"))


def raw(dtype: object = "float32", shape: object = (2,), data: object = b"\0" * 8) -> dict[str, object]:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data": data}


MALFORMED = [
    (b"", errors.NotMsgpackError),
    (b"\xc1", errors.NotMsgpackError),  # a byte msgpack never uses
    (packb({"inputs": [1.0]}) + b"\x00", errors.NotMsgpackError),  # trailing bytes
    (packb({"inputs": [1.0]})[:-1], errors.NotMsgpackError),  # truncated
    (None, errors.NotMsgpackError),  # tombstone
    (b"\x91" * 5000 + b"\xc0", errors.NotMsgpackError),  # nested 5000 deep
    (packb([1, 2, 3]), errors.NotAMapError),
    (packb("inputs"), errors.NotAMapError),
    (packb({"id": 1}), errors.MissingInputsError),
    (packb({"inputs": {}}), errors.MissingInputsError),
    (packb({"inputs": [1.0], "v": 2}), errors.UnsupportedVersionError),
    (packb({"inputs": [1.0], "v": "1"}), errors.UnsupportedVersionError),
    (packb({"inputs": 3.5}), errors.MalformedTensorError),
    (packb({"inputs": None}), errors.MalformedTensorError),
    (packb({"inputs": {1: [1.0]}}), errors.MalformedTensorError),
    (packb({"inputs": raw(data="text")}), errors.MalformedTensorError),
    (packb({"inputs": raw(shape=[-1])}), errors.MalformedTensorError),
    (packb({"inputs": raw(shape="2")}), errors.MalformedTensorError),
    (packb({"inputs": raw(shape=[2.0])}), errors.MalformedTensorError),
    (packb({"inputs": raw(shape=[True, 2])}), errors.MalformedTensorError),
    (packb({"inputs": raw(dtype="float128")}), errors.UnknownDtypeError),
    (packb({"inputs": raw(dtype="object")}), errors.UnknownDtypeError),
    (packb({"inputs": raw(dtype=7)}), errors.UnknownDtypeError),
    (packb({"inputs": raw(data=b"\0" * 7)}), errors.ShapeDataMismatchError),
    (packb({"inputs": raw(shape=[1_000_000_000, 1_000_000_000], data=b"")}), errors.TooLargeError),
    (packb({"inputs": raw(shape=[1] * 7, data=b"\0" * 4)}), errors.TooLargeError),
    (packb({"inputs": raw(data=b"\0" * (1 << 20))}), errors.TooLargeError),  # message over the limit
    (packb({"inputs": {"a": raw(), "b": 3}}), errors.MalformedTensorError),
]


@pytest.mark.parametrize(("value", "error"), MALFORMED, ids=[e.__name__ + str(i) for i, (_, e) in enumerate(MALFORMED)])
def test_each_malformed_input_raises_its_own_error(value: bytes | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        unpack_input(value, LIMITS)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xc1", "it holds a byte that starts no msgpack value (0xc1)"),
        (b"\x91" * 5000 + b"\xc0", "lists or maps nested too deep"),
        (b"\x01\x02", "unpack(b) received extra data."),
    ],
)
def test_bytes_that_are_not_msgpack_say_why_even_where_msgpack_gives_no_message(value: bytes, reason: str) -> None:
    """Found by hand: a dead letter's reason for 0xc1 was ``not a single complete msgpack object: ``."""
    with pytest.raises(errors.NotMsgpackError) as info:
        unpack_input(value, LIMITS)
    assert str(info.value) == f"not a single complete msgpack object: {reason}"


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_errors(value: bytes) -> None:
    with contextlib.suppress(errors.CodecError):
        unpack_input(value, LIMITS)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=16),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(-(2**63), 2**64 - 1), children, max_size=4)
    ),
    max_leaves=20,
)
tensor_like = st.fixed_dictionaries(
    {"dtype": st.sampled_from([*DTYPES, "complex64", "", "float32 "]), "data": st.binary(max_size=64)},
    optional={"shape": st.lists(st.integers(-3, 2**40), max_size=10) | msgpack_values},
)


@settings(max_examples=400)
@given(
    st.one_of(
        msgpack_values,
        st.fixed_dictionaries(
            {
                "inputs": st.one_of(
                    msgpack_values,
                    tensor_like,
                    st.dictionaries(st.text(max_size=3), tensor_like | msgpack_values, max_size=3),
                )
            }
        ),
    )
)
def test_arbitrary_msgpack_structures_raise_only_codec_errors(obj: object) -> None:
    try:
        envelope = unpack_input(packb(obj), LIMITS)
    except errors.CodecError:
        return
    for tensor in envelope.inputs.values():
        if isinstance(tensor, np.ndarray):
            assert tensor.size <= LIMITS.max_tensor_elements and tensor.ndim <= LIMITS.max_dims


def test_huge_declared_shape_is_rejected_before_any_allocation() -> None:
    value = packb({"inputs": raw(shape=[2**31, 2**31, 2**31], data=b"\0" * 16)})
    with pytest.raises(errors.TooLargeError, match="elements"):
        unpack_input(value, Limits(max_tensor_elements=math.prod([1000, 1000])))


def _peak_bytes(action: object) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        with contextlib.suppress(errors.InputError):
            action()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "value",
    [
        b"\x91" * 100_000 + b"\xc0",  # 100,000 nested arrays
        b"\x81\xa1a" * 50_000 + b"\xc0",  # 50,000 nested maps
        packb({"inputs": raw(shape=[10**9], data=b"\0" * 8)}),  # a billion elements declared, 8 bytes given
        packb({"inputs": raw(shape=[2**62, 4], data=b"")}),
        packb({"inputs": [[[[[[[[[[1.0]]]]]]]]]]}),  # nesting deeper than max_dims
        b"\xdd\xff\xff\xff\xff",  # an array header announcing 4 billion items, then nothing
        b"\xc6\xff\xff\xff\xff" + b"\0" * 16,  # a bin header announcing 4 GiB
    ],
    ids=["deep-arrays", "deep-maps", "billion-elements", "overflowing-shape", "deep-list", "huge-array", "huge-bin"],
)
def test_hostile_structures_are_input_errors_in_bounded_memory(value: bytes) -> None:
    from consumer.signature import Signature, TensorSpec
    from consumer.validate import conform

    signature = Signature((TensorSpec("x", "float32", (2,)),), ("y",), named_inputs=False)

    def decode_and_fit() -> None:
        conform(unpack_input(value, LIMITS), signature, LIMITS)

    with pytest.raises(errors.InputError):
        decode_and_fit()
    assert _peak_bytes(decode_and_fit) < 16 * len(value) + 2**20


def test_a_100_mb_data_field_is_refused_before_it_is_parsed() -> None:
    value = packb({"inputs": raw(shape=[25 * 2**20], data=b"\0" * (100 * 2**20))})
    with pytest.raises(errors.TooLargeError, match="bytes; the limit"):
        unpack_input(value, Limits())  # the default 16 MiB message limit
    assert _peak_bytes(lambda: unpack_input(value, Limits())) < 2**20  # no copy of the 100 MB


def test_json_output_writes_non_finite_numbers_and_non_text_keys_as_strings() -> None:
    """JSON has no NaN or infinities and only text keys: strict parsers refused the old output."""
    assert json_numbers(np.array(np.nan, np.float32)) == "NaN"
    assert json_numbers(np.array([[1, np.inf, -np.inf]], np.float16)) == [[1.0, "Infinity", "-Infinity"]]
    assert json_numbers(np.array([1, 2], np.int8)) == [1, 2]
    ident = {True: 1, None: 2, 1.5: b"\xff", b"k": [float("nan")], "s": (float("-inf"),)}
    text = json.dumps(json_value(ident), allow_nan=False)
    assert json.loads(text) == {"true": 1, "null": 2, "1.5": "/w==", "aw==": ["NaN"], "s": ["-Infinity"]}


DECODED_BY = [
    Signature((TensorSpec("x", "float32", (3,)),), ("y",), named_inputs=False),
    Signature((TensorSpec("x", "float32", (None, None, None)),), ("y",), named_inputs=False),
    Signature((TensorSpec("x", "int8", (None, 2)),), ("y",), named_inputs=False),
    Signature((TensorSpec("text", "string", ()),), ("y",), named_inputs=False),
    Signature((TensorSpec("a", "float32", (2,)), TensorSpec("b", "int32", ())), ("y",), named_inputs=True),
]
fast_tensor = st.fixed_dictionaries(  # in the fast path's key order, so that it is tried first
    {
        "dtype": st.sampled_from(["float32", "int8", "int32", "float64"]),
        "shape": st.lists(st.sampled_from([0, 1, 2, 3, 2**20, 2**40]) | st.integers(0, 2**64 - 1), max_size=4),
        "data": st.binary(max_size=48),
    }
)
envelopes = st.one_of(
    msgpack_values,
    st.fixed_dictionaries({"inputs": st.one_of(fast_tensor, tensor_like, msgpack_values)}, optional={"v": st.just(1)}),
    st.fixed_dictionaries({"inputs": st.dictionaries(st.sampled_from(["a", "b", "x"]), fast_tensor, max_size=2)}),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DECODED_BY), st.lists(envelopes | st.binary(max_size=40), min_size=1, max_size=6))
def test_a_batch_of_anything_decodes_into_rows_and_failures_never_an_exception(
    signature: Signature, values: list[object]
) -> None:
    """What a producer sends reaches the batch decoder whole, fast path first: each message is a row or
    a failure of its own, whatever it holds, for every kind of model input."""
    decoder = BatchDecoder(signature, LIMITS)
    batch = decoder.decode([value if isinstance(value, bytes) else packb(value) for value in values])
    failed = [row for row, error in batch.failures]
    assert sorted(batch.rows + failed) == list(range(len(values)))
    assert all(isinstance(error, errors.InputError) for _, error in batch.failures)
