"""Fitting decoded inputs to a model's signature."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from consumer import errors, validate
from consumer.codec import Limits, pack_input, unpack_input
from consumer.signature import Signature, TensorSpec
from consumer.validate import conform, stack

SINGLE = Signature((TensorSpec("x", "float32", (3,)),), ("y",), named_inputs=False)
MULTI = Signature((TensorSpec("a", "float32", (2,)), TensorSpec("b", "int32", ())), ("y",), named_inputs=True)
TEXT = Signature((TensorSpec("text", "string", ()),), ("y",), named_inputs=False)
LIMITS = Limits()


def fit(value: object, signature: Signature = SINGLE, **kwargs: bool) -> dict[str, object]:
    return conform(
        unpack_input(pack_input(value) if not isinstance(value, bytes) else value, LIMITS), signature, LIMITS, **kwargs
    )


def test_single_input_is_keyed_by_the_model_input_name() -> None:
    out = fit(np.array([1, 2, 3], "float32"))
    assert list(out) == ["x"] and out["x"].dtype == np.float32  # type: ignore[union-attr]


def test_nested_lists_are_cast_to_the_model_dtype() -> None:
    out = conform(unpack_input(pack_input(np.array([1, 2, 3]), as_lists=True), LIMITS), SINGLE, LIMITS)
    assert out["x"].dtype == np.float32 and out["x"].tolist() == [1.0, 2.0, 3.0]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [
        ("uint8", [0, 17, 255], [0, 17, 255]),  # a list of pixel values: int64 until cast (refused before)
        ("uint8", np.array([3, 4, 5], "int32"), [3, 4, 5]),
        ("int32", [-1, 0, 2**31 - 1], [-1, 0, 2**31 - 1]),
        ("uint16", np.array([1, 2, 3], "uint64"), [1, 2, 3]),
        ("float16", [1.5, -2, 65504], [1.5, -2.0, 65504.0]),
    ],
)
def test_integers_fit_any_integer_type_and_floats_any_float_type(dtype: str, value: object, expected: list) -> None:
    signature = Signature((TensorSpec("x", dtype, (3,)),), ("y",), named_inputs=False)
    out = fit(value, signature)["x"]
    assert out.dtype == np.dtype(dtype) and out.tolist() == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("uint8", [0, 1, 256]),
        ("uint8", [-1, 0, 1]),
        ("int32", [0, 1, 3_000_000_000]),  # was wrapped round to -1,294,967,296
        ("float16", [1e6, 0, 1]),  # was made inf
        ("float16", [3_000_000_000, 0, 1]),
    ],
)
def test_a_value_outside_the_model_dtype_is_refused_not_wrapped_or_made_inf(
    dtype: str, value: list, recwarn: pytest.WarningsRecorder
) -> None:
    signature = Signature((TensorSpec("x", dtype, (3,)),), ("y",), named_inputs=False)
    with pytest.raises(errors.WrongDtypeError, match=f"input 'x' holds values outside the range of {dtype}"):
        fit(value, signature)
    assert not recwarn.list  # no RuntimeWarning printed per message either


def test_named_inputs_must_match_exactly() -> None:
    assert set(fit({"a": np.zeros(2, "float32"), "b": np.array(3, "int32")}, MULTI)) == {"a", "b"}
    with pytest.raises(errors.WrongInputsError, match="missing"):
        fit({"a": np.zeros(2, "float32")}, MULTI)
    with pytest.raises(errors.WrongInputsError, match="unknown"):
        fit({"a": np.zeros(2, "float32"), "b": np.array(3, "int32"), "c": np.zeros(1)}, MULTI)
    with pytest.raises(errors.WrongInputsError, match="named inputs"):
        fit(np.zeros(2, "float32"), MULTI)


def test_wrong_shape_and_kind_changing_casts_are_rejected() -> None:
    with pytest.raises(errors.WrongShapeError):
        fit(np.zeros(4, "float32"))
    with pytest.raises(errors.WrongDtypeError):
        fit({"a": np.zeros(2, "float32"), "b": np.array(3.5, "float64")}, MULTI)
    with pytest.raises(errors.WrongDtypeError):
        fit(np.zeros(3, "float32"), TEXT)


def test_float64_is_accepted_for_a_float32_model() -> None:
    assert fit(np.zeros(3, "float64"))["x"].dtype == np.float32  # type: ignore[union-attr]


def test_ragged_and_non_numeric_lists_are_malformed() -> None:
    for bad in ([[1, 2], [3]], ["a", "b", "c"], [{"k": 1}] * 3):
        with pytest.raises(errors.MalformedTensorError):
            fit(msgpack.packb({"inputs": bad}))


def test_non_finite_values_are_rejected_only_when_asked() -> None:
    value = np.array([1, np.nan, 3], "float32")
    assert np.isnan(fit(value)["x"]).any()  # type: ignore[arg-type]
    with pytest.raises(errors.NonFiniteError):
        fit(value, reject_non_finite=True)


def test_string_inputs_take_bin() -> None:
    assert fit(msgpack.packb({"inputs": b"raw"}), TEXT) == {"text": b"raw"}


def test_stack_pads_with_zero_rows() -> None:
    batch = stack([{"x": np.ones(3, "float32")}], SINGLE, rows=4)
    assert batch["x"].shape == (4, 3) and batch["x"][1:].sum() == 0 and batch["x"][0].sum() == 3


ANY_LENGTH = Signature((TensorSpec("x", "float32", (None, 2)),), ("y",), named_inputs=False)


def test_a_dimension_of_any_size_takes_every_size_there_and_only_there() -> None:
    for rows in (0, 1, 5):
        assert fit(np.ones((rows, 2), "float64"), ANY_LENGTH)["x"].shape == (rows, 2)  # type: ignore[union-attr]
    for wrong in (np.ones((3, 3), "float32"), np.ones(2, "float32")):
        with pytest.raises(errors.WrongShapeError) as info:
            fit(wrong, ANY_LENGTH)
        assert str(info.value).endswith("; the preprocess function takes [None, 2], None: any size")


def test_inputs_of_any_size_are_decoded_into_a_column_of_their_own_arrays_and_non_finite_rows_refused() -> None:
    from consumer.validate import BatchDecoder

    sent = [np.full((n, 2), n, "float32") for n in (2, 0, 5)]
    values = [pack_input(x, id=i) for i, x in enumerate(sent)]
    values.insert(1, pack_input(np.array([[1.0, np.inf]], "float32"), id=9))
    values.append(msgpack.packb({"inputs": [[1, 2], [3, 4], [5, 6]], "id": 4}))
    batch = BatchDecoder(ANY_LENGTH, LIMITS, reject_non_finite=True).decode(values)
    assert batch.rows == [0, 2, 3, 4] and [row for row, _ in batch.failures] == [1]
    assert isinstance(batch.failures[0][1], errors.NonFiniteError)
    column = batch.inputs["x"]
    assert column.dtype == object and [row.shape for row in column] == [(2, 2), (0, 2), (5, 2), (3, 2)]
    np.testing.assert_array_equal(column[3], [[1, 2], [3, 4], [5, 6]])
    assert [row.dtype for row in column] == [np.float32] * 4
    padded = stack([], ANY_LENGTH, rows=2)["x"]
    assert [row.shape for row in padded] == [(0, 2), (0, 2)]


def test_an_input_of_any_size_is_held_to_max_tensor_elements_on_the_fast_path_too() -> None:
    from consumer.validate import BatchDecoder

    tokens = Signature((TensorSpec("t", "int32", (None,)),), ("y",), named_inputs=False)
    decoder = BatchDecoder(tokens, Limits(max_tensor_elements=100))
    batch = decoder.decode([pack_input(np.arange(n, dtype="int32"), id=n) for n in (100, 101)])
    assert batch.rows == [0] and [row for row, _ in batch.failures] == [1]
    assert isinstance(batch.failures[0][1], errors.TooLargeError)


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "parsed"])
def test_an_empty_input_whose_other_dimensions_multiply_past_any_array_is_refused_not_raised(fast: bool) -> None:
    """Found by hypothesis: shape [0, 2**40, 2**40] holds no element, so it passed the element limit,
    and NumPy's reshape raised ``array is too big`` out of the decoder, for the whole batch."""
    from consumer.validate import BatchDecoder

    cube = Signature((TensorSpec("x", "float32", (None, None, None)),), ("y",), named_inputs=False)
    decoder = BatchDecoder(cube, Limits())
    tensor = {"dtype": "float32", "shape": [0, 2**40, 2**40], "data": b""}
    hostile = msgpack.packb({"inputs": tensor, "v": 1} if fast else {"v": 1, "inputs": tensor})
    batch = decoder.decode([hostile, pack_input(np.ones((1, 2, 2), "float32"))])
    assert batch.rows == [1] and [row for row, _ in batch.failures] == [0]
    assert str(batch.failures[0][1]) == (
        "input 'inputs' declares shape [0, 1099511627776, 1099511627776]: empty, but its other dimensions "
        "multiply past the limit of 16777216 elements"
    )


@pytest.mark.parametrize(
    ("model", "sent", "outside"),
    [("float32", "float64", 1e39), ("float16", "float64", 1e6), ("int32", "int64", 2**40), ("uint8", "int64", -1)],
)
def test_numpy_s_default_dtypes_are_read_a_batch_at_once_and_cast_as_each_message_would_be(
    model: str, sent: str, outside: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float64 and int64 (what NumPy and JSON make by default) for a float32 or int32 model: parsed
    one message at a time, 22 and 35 µs a message; now sliced as a batch and cast at once. A value
    outside the model's dtype still refuses its own message alone, with the same reason."""
    from consumer.validate import BatchDecoder

    signature = Signature((TensorSpec("x", model, (2, 3)),), ("y",), named_inputs=False)
    decoder = BatchDecoder(signature, Limits())
    rows = np.arange(24, dtype=sent).reshape(4, 2, 3)
    with monkeypatch.context() as patched:  # the batch is not parsed message by message
        patched.setattr(validate, "conform", lambda *args: pytest.fail("parsed one message at a time"))
        batch = decoder.decode([pack_input(row, id=i) for i, row in enumerate(rows)])
    assert batch.rows == [0, 1, 2, 3] and batch.inputs["x"].dtype == np.dtype(model)
    np.testing.assert_array_equal(batch.inputs["x"], rows.astype(model))
    each = [decoder.decode([pack_input(row, id=i)]).inputs["x"][0] for i, row in enumerate(rows)]
    np.testing.assert_array_equal(batch.inputs["x"], np.stack(each))  # as the message alone gives it
    rows = rows.astype("float64" if sent == "float64" else "int64")
    rows[2, 1, 1] = outside
    batch = decoder.decode([pack_input(row, id=i) for i, row in enumerate(rows)])
    assert batch.rows == [0, 1, 3] and [row for row, _ in batch.failures] == [2]
    assert str(batch.failures[0][1]) == f"input 'x' holds values outside the range of {model}, the model's dtype"


def test_a_batch_of_nested_lists_is_made_one_array_an_input_and_cast_as_each_message_would_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lists (what JSON-minded producers and the README's simplest JavaScript send) were conformed one
    message at a time: 20-30 µs a message for 64 floats, now 7-9. A message among them that is
    not the model's shape or dtype sends the batch back to that path, which refuses it alone."""
    from consumer.validate import BatchDecoder

    signature = Signature((TensorSpec("a", "float32", (2, 2)), TensorSpec("b", "int32", (1,))), ("y",), True)
    decoder = BatchDecoder(signature, Limits())
    rows = [{"a": [[i, 0.5], [1, 2]], "b": [i]} for i in range(4)]
    ids: list[object] = ["order-0", 1, None, {"k": [1]}]
    values = [
        msgpack.packb({"inputs": row, "id": ident} if ident is not None else {"inputs": row})
        for row, ident in zip(rows, ids, strict=True)
    ]
    with monkeypatch.context() as patched:
        patched.setattr(validate, "conform", lambda *args: pytest.fail("conformed one message at a time"))
        batch = decoder.decode(values)
    assert batch.rows == [0, 1, 2, 3] and batch.ids == [("order-0", True), (1, True), (None, False), ({"k": [1]}, True)]
    assert batch.inputs["a"].dtype == np.float32 and batch.inputs["b"].dtype == np.int32
    each = [conform(unpack_input(value, Limits()), signature, Limits()) for value in values]  # one by one
    for name in ("a", "b"):
        np.testing.assert_array_equal(batch.inputs[name], np.stack([row[name] for row in each]))
    for bad, reason in [
        ({"a": [[1, 2], [3]], "b": [1]}, "input 'a' is not a regular nested list of numbers"),
        ({"a": [[1, 2], [3, 4]], "b": [1.5]}, "input 'b' is float64; the model takes int32 and that cast"),
        ({"a": [[1, 2], [3, 4]], "b": [2**40]}, "input 'b' holds values outside the range of int32"),
        ({"a": [1, 2, 3, 4], "b": [1]}, "input 'a' has shape [4]; the model takes [2, 2]"),
    ]:
        batch = decoder.decode([*values[:2], msgpack.packb({"inputs": bad}), *values[2:]])
        assert batch.rows == [0, 1, 3, 4] and [row for row, _ in batch.failures] == [2]
        assert str(batch.failures[0][1]).startswith(reason), batch.failures
