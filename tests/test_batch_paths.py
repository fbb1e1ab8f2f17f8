"""The batch-at-once paths (decode, output packing, acknowledgement, latency sampling) agree with
the per-message definitions they replace, on valid and hostile input alike."""

from __future__ import annotations

import json

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from consumer import errors
from consumer.codec import (
    Limits,
    encode_tensor,
    json_data,
    output_envelope,
    pack_input,
    pack_output,
    unpack_input,
    wire_array,
)
from consumer.envelopes import OutputPacker
from consumer.json_output import encode_json, json_value
from consumer.layout import CanonicalLayout
from consumer.offsets import OffsetTracker
from consumer.outputs import OutputEncoder
from consumer.pipeline import Batch
from consumer.signature import Signature, TensorSpec
from consumer.timing import Timeline
from consumer.validate import BatchDecoder, conform

LIMITS = Limits(max_message_bytes=1 << 16, max_tensor_elements=1 << 12, max_dims=4)
SINGLE = Signature((TensorSpec("x", "float32", (3,)),), ("y",), named_inputs=False)
MULTI = Signature((TensorSpec("a", "float32", (2,)), TensorSpec("b", "int64", ())), ("y",), named_inputs=True)
MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)
BOTH_FORMS = st.booleans()  # tensors as raw bytes or as nested lists


def _good(signature: Signature, as_lists: st.SearchStrategy[bool] = BOTH_FORMS) -> st.SearchStrategy[bytes]:
    def one(spec: TensorSpec) -> st.SearchStrategy[np.ndarray]:
        return hnp.arrays(np.dtype(spec.dtype), spec.shape)

    if not signature.named_inputs:
        body = one(signature.inputs[0])
    else:
        body = st.fixed_dictionaries({s.name: one(s) for s in signature.inputs})
    ids = st.none() | MSGPACK_INTS | st.text(max_size=4)
    return st.builds(lambda b, i, lists: pack_input(b, id=i, as_lists=lists), body, ids, as_lists)


def _hostile() -> st.SearchStrategy[bytes | None]:
    tensors = st.fixed_dictionaries(
        {"dtype": st.sampled_from(["float32", "float64", "int64", "int8", "bool"]), "data": st.binary(max_size=24)},
        optional={"shape": st.lists(st.integers(-1, 4) | st.floats(0, 3) | st.booleans(), max_size=3)},
    )
    maps = st.fixed_dictionaries(
        {"inputs": tensors | st.dictionaries(st.sampled_from(["a", "b", "x", "c"]), tensors, max_size=3)},
        optional={"v": st.sampled_from([1, 2, True, 1.0]), "id": MSGPACK_INTS},
    )
    return st.none() | st.binary(max_size=40) | maps.map(lambda m: msgpack.packb(m, use_bin_type=True))


def _one_by_one(values: list[bytes | None], signature: Signature, finite: bool) -> list[object]:
    """What each message becomes by the per-message definition: its arrays and id, or its error type."""
    results: list[object] = []
    for value in values:
        try:
            envelope = unpack_input(value, LIMITS)
            example = conform(envelope, signature, LIMITS, reject_non_finite=finite)
            results.append(({k: np.asarray(v) for k, v in example.items()}, (envelope.id, envelope.has_id)))
        except errors.InputError as error:
            results.append(type(error))
    return results


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([SINGLE, MULTI]).flatmap(
        lambda sig: st.tuples(st.just(sig), st.lists(_good(sig) | _hostile(), max_size=12), st.booleans())
    )
)
def test_batch_decode_agrees_with_decoding_each_message_alone(case: tuple[Signature, list[bytes | None], bool]) -> None:
    signature, values, finite = case
    expected = _one_by_one(values, signature, finite)
    decoded = BatchDecoder(signature, LIMITS, reject_non_finite=finite).decode(values)
    assert [type(e) for _, e in decoded.failures] == [r for r in expected if isinstance(r, type)]
    assert sorted(decoded.rows + [i for i, _ in decoded.failures]) == list(range(len(values)))
    for position, row in enumerate(decoded.rows):
        arrays, ident = expected[row]  # type: ignore[misc]
        assert decoded.ids[position] == ident
        for name, array in arrays.items():
            column = decoded.inputs[name]
            assert column.dtype == array.dtype and column.shape[1:] == array.shape
            assert column[position].tobytes() == array.tobytes()


def _string_id(text: bytes, form: int) -> bytes:
    """A msgpack str of ``text``'s bytes: 0 the smallest header, 1-3 str8, str16, str32 (longer
    than need be, which msgpack reads all the same); 4 a str8 and a byte after it (not one object)."""
    if form == 4:
        return bytes([0xD9, len(text)]) + text + b"\0" if len(text) < 256 else b"\xc1"
    if form == 0:
        return msgpack.packb(
            text.decode("utf-8", "surrogateescape"), use_bin_type=True, unicode_errors="surrogateescape"
        )
    marker, size = ((0xD9, 1), (0xDA, 2), (0xDB, 4))[form - 1]
    return bytes([marker]) + len(text).to_bytes(size, "big") + text


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3, 4]),
            st.binary(max_size=40)
            | st.text(max_size=300).map(str.encode)
            | st.sampled_from([b"", b"a\0", b"\0\0", b"\xff", b"\xc3"]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.none() | MSGPACK_INTS, max_size=3),
)
def test_string_ids_in_every_msgpack_form_decode_as_each_message_alone(texts: list, others: list) -> None:
    """String ids are read a batch at once from the canonical layout (since 2026-12-05): fixstr,
    str8, str16 and str32, empty, with trailing zero bytes, not UTF-8 (which msgpack refuses), or
    followed by a stray byte,
    beside integer ids and none, all as the per-message definition reads them."""
    row = np.arange(3, dtype="float32")
    plain = pack_input(row)
    with_id = [b"\x83" + plain[1:] + msgpack.packb("id") + _string_id(text, form) for form, text in texts]
    values: list[bytes | None] = [*with_id, *(pack_input(row, id=i) for i in others)]
    expected = _one_by_one(values, SINGLE, False)
    decoded = BatchDecoder(SINGLE, LIMITS).decode(values)
    assert [type(e) for _, e in decoded.failures] == [r for r in expected if isinstance(r, type)]
    assert [decoded.ids[i] for i in range(len(decoded.rows))] == [expected[r][1] for r in decoded.rows]  # type: ignore[index]
    assert sorted(decoded.rows + [i for i, _ in decoded.failures]) == list(range(len(values)))


def test_a_batch_of_string_ids_takes_the_sliced_path() -> None:
    """Else the test above would pass on the per-message path alone."""
    layout = CanonicalLayout(SINGLE, LIMITS)
    values = [pack_input(np.arange(3, dtype="float32"), id=ident) for ident in ("a", "order-17", "é" * 40, "")]
    sliced = layout.slice_batch(values)
    assert sliced is not None
    assert sliced[1] == [("a", True), ("order-17", True), ("é" * 40, True), ("", True)]
    bad = [*values[:1], values[1][:-8] + b"\xff" * 8]  # "order-17" with bytes that are not UTF-8
    assert layout.slice_batch(bad) is None


def _exact(signature: Signature) -> st.SearchStrategy[bytes]:
    """Messages carrying exactly the model's dtypes and shapes, in the raw-bytes form."""
    return _good(signature, as_lists=st.just(False))


def _near_miss(signature: Signature) -> st.SearchStrategy[bytes | None]:
    """One field off from exact: each must leave the whole-batch path and be judged on its own."""
    spec = signature.inputs[0]
    tensor = {"dtype": spec.dtype, "shape": list(spec.shape), "data": bytes(np.zeros(spec.shape, spec.dtype))}
    others = {s.name: encode_tensor(np.zeros(s.shape, s.dtype)) for s in signature.inputs[1:]}

    def message(change: dict[str, object], top: dict[str, object]) -> bytes:
        inputs = {**tensor, **change}
        body = {spec.name: inputs, **others} if signature.named_inputs else inputs
        return msgpack.packb({"inputs": body, **top}, use_bin_type=True)

    changes = st.sampled_from([
        ({"shape": [True] * len(spec.shape)}, {}), ({"data": b"\0"}, {}), ({"dtype": "float64"}, {}),
        ({}, {"v": True}), ({}, {"v": 2}), ({"shape": [float(d) for d in spec.shape]}, {}),
    ])  # fmt: skip
    return st.none() | st.just(b"\xc1") | changes.map(lambda c: message(*c))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([SINGLE, MULTI]).flatmap(
        lambda sig: st.tuples(
            st.just(sig), st.lists(_exact(sig), min_size=1, max_size=12), st.lists(_near_miss(sig), max_size=1)
        )
    )
)
def test_whole_batch_path_takes_exact_batches_and_nothing_else(
    case: tuple[Signature, list[bytes], list[bytes | None]],
) -> None:
    signature, exact, miss = case
    values: list[bytes | None] = [*exact, *miss]
    decoder = BatchDecoder(signature, LIMITS)
    assert (decoder._decode_exact(values) is None) == bool(miss)
    expected = _one_by_one(values, signature, finite=False)
    decoded = decoder.decode(values)
    assert [type(e) for _, e in decoded.failures] == [r for r in expected if isinstance(r, type)]
    for position, row in enumerate(decoded.rows):
        arrays, ident = expected[row]  # type: ignore[misc]
        assert decoded.ids[position] == ident
        for name, array in arrays.items():
            assert decoded.inputs[name][position].tobytes() == array.tobytes()


def _canonical(signature: Signature) -> st.SearchStrategy[bytes]:
    """What ``pack_input`` writes, with ids of every msgpack integer width (and none, and strings)."""
    ids = (
        st.none()
        | MSGPACK_INTS
        | st.sampled_from([0, 127, 128, -32, -33, 255, 256, 2**16, 2**32, 2**63])
        | st.text(max_size=2)
    )
    return st.builds(lambda b, i: pack_input(b, id=i), _good(signature, as_lists=st.just(False)).map(_inputs_of), ids)


def _inputs_of(value: bytes) -> object:
    inputs = unpack_input(value, LIMITS).inputs
    return next(iter(inputs.values())) if set(inputs) == {""} else inputs


def _mutated(signature: Signature) -> st.SearchStrategy[bytes]:
    """A canonical message with one byte changed, cut short or followed by a stray byte."""

    def mutate(value: bytes, at: int, byte: int, how: int) -> bytes:
        at %= len(value)
        if how == 0:
            return value[:at] + bytes([byte]) + value[at + 1 :]
        return value[:at] if how == 1 else value + bytes([byte])

    return st.builds(mutate, _canonical(signature), st.integers(0, 400), st.integers(0, 255), st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([SINGLE, MULTI]).flatmap(
        lambda sig: st.tuples(
            st.just(sig), st.lists(_canonical(sig), min_size=1, max_size=12), st.lists(_mutated(sig), max_size=2)
        )
    ),
    st.randoms(use_true_random=False),
)
def test_canonical_layout_is_read_as_msgpack_reads_it(
    case: tuple[Signature, list[bytes], list[bytes]], shuffle: object
) -> None:
    """Slicing canonical messages (all at once, or one by one) gives what parsing gives, whatever
    the id widths; a message one byte off is judged as parsing judges it."""
    signature, canonical, mutated = case
    values: list[bytes | None] = [*canonical, *mutated]
    shuffle.shuffle(values)  # type: ignore[attr-defined]
    expected = _one_by_one(values, signature, finite=False)
    decoded = BatchDecoder(signature, LIMITS).decode(values)
    assert [type(e) for _, e in decoded.failures] == [r for r in expected if isinstance(r, type)]
    assert decoded.rows == [i for i, r in enumerate(expected) if not isinstance(r, type)]
    for position, row in enumerate(decoded.rows):
        arrays, ident = expected[row]  # type: ignore[misc]
        assert decoded.ids[position] == ident and type(decoded.ids[position][0]) is type(ident[0])
        for name, array in arrays.items():
            assert decoded.inputs[name][position].tobytes() == array.tobytes()


def test_canonical_batches_are_sliced_at_once() -> None:
    """The whole-batch slicing path really runs (not only the per-message fallback)."""
    layout = CanonicalLayout(SINGLE, LIMITS)
    ids = [0, 200, -5, 70_000, 2**64 - 1, -(2**63)]
    values = [pack_input(np.array([i, i + 1, i + 2], "float32"), id=ident) for i, ident in enumerate(ids)]
    sliced = layout.slice_batch(values)
    assert sliced is not None
    columns, found = sliced
    assert found == [(ident, True) for ident in ids]
    assert np.frombuffer(columns[0].tobytes(), "<f4").reshape(-1, 3)[:, 0].tolist() == list(range(len(ids)))
    assert layout.slice_batch([*values, pack_input(np.zeros(3, "float32"), id=1.5)]) is None  # ids of other types
    without_id = layout.slice_batch([pack_input(np.ones(3, "float32"))])
    assert (
        without_id is not None
        and without_id[1] == [(None, False)]
        and without_id[0][0].tobytes() == bytes(np.ones(3, "<f4"))
    )


def test_a_mixed_batch_keeps_row_order_and_sends_only_bad_rows_away() -> None:
    values = [
        pack_input(np.array([1, 2, 3], "float32"), id=0),
        pack_input(np.array([4, 5, 6], "float64"), id=1),  # general path: a cast
        msgpack.packb([1, 2, 3]),
        pack_input(np.array([7, np.nan, 9], "float32"), id=3),
        pack_input(np.array([[1.0, 2.0, 3.0]], "float32").tolist()[0], id=4, as_lists=True),
    ]
    decoded = BatchDecoder(SINGLE, LIMITS, reject_non_finite=True).decode(values)
    assert decoded.rows == [0, 1, 4] and [i for i, _ in decoded.ids] == [0, 1, 4]
    assert [(i, type(e)) for i, e in decoded.failures] == [(2, errors.NotAMapError), (3, errors.NonFiniteError)]
    assert decoded.inputs["x"].tolist() == [[1, 2, 3], [4, 5, 6], [1, 2, 3]]


OUTPUT_ARRAYS = st.sampled_from(["float32", ">f8", "int64", "uint8", "bool"]).flatmap(
    lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=6), OUTPUT_ARRAYS, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 1000), MSGPACK_INTS | st.text(max_size=3) | st.none(), st.booleans())),
)
def test_packed_rows_are_byte_for_byte_the_output_envelope(outputs: dict[str, np.ndarray], rows: list) -> None:
    count = min([len(rows), *(len(a) for a in outputs.values())])
    sources = [("topic-a", r[0] % 7, r[0] * 2**33, 1_700_000_000_000 + r[0]) for r in rows[:count]]
    assert_packed_as_envelopes(outputs, sources, [(r[1], r[2]) for r in rows[:count]])


#: integers on each side of every boundary between msgpack's integer formats, and the extremes
FORMAT_EDGES = st.sampled_from(
    sorted(
        {
            e + d
            for e in (-(2**63), -(2**31), -(2**15), -128, -32, 0, 128, 256, 2**16, 2**32, 2**63 - 1)
            for d in (-1, 0, 1)
        }
    )
).filter(lambda v: -(2**63) <= v <= 2**64 - 1)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=6), OUTPUT_ARRAYS, min_size=1, max_size=3),
    st.lists(
        st.tuples(
            st.integers(0, 3),  # partition
            FORMAT_EDGES.filter(lambda v: 0 <= v < 2**63) | st.integers(0, 2**40),  # offset
            FORMAT_EDGES.filter(lambda v: v < 2**63) | st.integers(-1, 2**45),  # timestamp
            FORMAT_EDGES | st.integers(-(2**63), 2**64 - 1),  # id
        ),
        max_size=64,
    ),
    st.booleans(),
)
def test_rows_with_integer_ids_are_packed_as_blocks_byte_for_byte_the_output_envelope(
    outputs: dict[str, np.ndarray], rows: list, has_id: bool
) -> None:
    """Every id an integer (or none at all): the block path, its rows grouped by partition and by the
    msgpack format of each integer (an id above 2**63 - 1 sends the batch row by row)."""
    count = min([len(rows), *(len(a) for a in outputs.values())])
    sources = [(f"topic-{p % 2}", p, offset, timestamp) for p, offset, timestamp, _ in rows[:count]]
    assert_packed_as_envelopes(outputs, sources, [(r[3] if has_id else None, has_id) for r in rows[:count]])


def assert_packed_as_envelopes(outputs: dict[str, np.ndarray], sources: list, ids: list) -> None:
    """``pack_rows`` gives, for each row, what ``pack_output(output_envelope(...))`` gives."""
    count = len(sources)
    outputs = {k: v[:count] for k, v in outputs.items()}
    model = {"name": "m", "version": "7"}
    coords = [((topic, partition), offset) for topic, partition, offset, _ in sources]
    packed = OutputPacker(model).pack_rows(outputs, coords, [s[3] for s in sources], ids)
    assert len(packed) == count
    for row in range(count):
        tensors = {k: encode_tensor(v[row]) for k, v in outputs.items()}
        body = next(iter(tensors.values())) if len(tensors) == 1 else tensors
        source = dict(zip(("topic", "partition", "offset", "timestamp"), sources[row], strict=True))
        envelope = output_envelope(body, model=model, source=source, id=ids[row][0], has_id=ids[row][1])
        assert packed[row] == pack_output(envelope)


JSON_OUTPUT_ARRAYS = st.sampled_from(
    ["float32", "float16", ">f8", "float64", "int64", "uint64", "int8", "uint8", "bool"]
).flatmap(
    lambda d: (
        hnp.arrays(
            np.dtype(d), hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), elements={"allow_nan": True}
        )
        if np.dtype(d).kind == "f"
        else hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    )
) | hnp.arrays(object, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3), elements=st.binary(max_size=5))
JSON_IDS = st.recursive(
    st.none() | st.booleans() | MSGPACK_INTS | st.floats() | st.text(max_size=3) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2) | st.integers(), inner, max_size=2),
    max_leaves=4,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=6), JSON_OUTPUT_ARRAYS, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 2**40), JSON_IDS, st.booleans()), max_size=12),
    st.sampled_from(["in", "100%", 'a"b']),
    st.sampled_from([{"name": "m", "version": "7"}, {"name": "50%s", "version": "%d"}]),
)
def test_json_outputs_say_what_the_envelope_says_each_float_as_its_own_type_writes_it(
    outputs: dict[str, np.ndarray], rows: list, topic: str, model: dict[str, str]
) -> None:
    """The JSON packer against the envelope written whole (``encode_json(output_envelope(...))``, the
    JSON path before 2026-12-05): the same text, but that a finite float32 or float16 output is
    written as its own type's shortest text, which reads back as the same value of its type."""
    count = min([len(rows), *(len(a) for a in outputs.values())])
    outputs = {name: array[:count] for name, array in outputs.items()}
    coords = [((topic, r[0] % 5), r[0]) for r in rows[:count]]
    timestamps = [1_700_000_000_000 + r[0] for r in rows[:count]]
    ids = [(r[1], r[2]) for r in rows[:count]]
    batch = Batch(0, [None] * count, coords, timestamps, {}, ids, 0.0)  # type: ignore[list-item]
    written = OutputEncoder(model, "json").values(batch, outputs)
    assert len(written) == count
    columns = {name: (*json_data(array), list(array.shape[1:])) for name, array in outputs.items()}
    for row, ((_, partition), offset) in enumerate(coords):
        tensors = {name: {"dtype": d, "shape": shape, "data": data[row]} for name, (d, data, shape) in columns.items()}
        body = next(iter(tensors.values())) if len(tensors) == 1 else tensors
        source = {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamps[row]}
        whole = encode_json(
            output_envelope(body, model=model, source=source, id=json_value(ids[row][0]), has_id=ids[row][1])
        )
        narrow = [name for name, a in outputs.items() if a.dtype.itemsize < 8 and a.dtype.kind == "f"]
        if not any(np.isfinite(outputs[name]).all() for name in narrow):
            assert written[row] == whole
            continue
        got, expected = json.loads(written[row]), json.loads(whole)
        for name in narrow:
            dtype = wire_array(outputs[name]).dtype
            at = (lambda e: e["outputs"]) if len(outputs) == 1 else (lambda e, n=name: e["outputs"][n])
            got_data, expected_data = at(got).pop("data"), at(expected).pop("data")
            if np.isfinite(outputs[name]).all():
                assert np.array_equal(np.asarray(got_data, dtype), np.asarray(expected_data, dtype))
                assert np.array_equal(np.asarray(got_data, dtype), outputs[name][row])
            else:
                assert got_data == expected_data
        assert got == expected


def test_marking_a_batch_done_at_once_equals_marking_each_offset() -> None:
    one, many = OffsetTracker(), OffsetTracker()
    fetched = [(("in", p), o) for o in range(10) for p in (0, 1)]
    one.add_many(fetched)
    many.add_many(fetched)
    batch = [f for f in fetched if f[1] != 4]
    for partition, offset in batch:
        one.done(partition, offset)
    many.done_many(batch)
    assert one.committable() == many.committable() == {("in", 0): 4, ("in", 1): 4}


def test_latency_reservoir_stays_bounded_and_keeps_the_distribution() -> None:
    timeline = Timeline(reservoir=1000)
    now_ms = 1e12  # far in the past against time.time(): latencies are "now - ts", so offset them
    for start in range(0, 20_000, 500):
        timeline.acknowledged_many([int(now_ms - i) for i in range(start, start + 500)])
    summary = timeline.latency_ms()
    assert summary["count"] == 20_000
    assert len(timeline._end_to_end) == 1000  # bounded whatever the stream length
    spread = summary["p99"] - summary["p50"]  # latencies run uniformly over 20,000 ms
    assert 0.4 * 20_000 < spread < 0.6 * 20_000
