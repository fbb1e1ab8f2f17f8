"""The worker against the real broker, with real models."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import structlog
import structlog.testing
from confluent_kafka import Consumer, Producer

from consumer import joining, json_output, logs
from consumer.codec import pack_input, unpack_output
from consumer.delivery import wait_until
from consumer.envelopes import OutputPacker
from consumer.errors import ConfigError, DeliveryError
from consumer.pipeline import Batch
from consumer.positions import new_group_notice
from consumer.serving import Serving
from consumer.timing import STAGES
from producer_tools import groups
from producer_tools.collect import Collected, JsonLines, decode_output, write_npz
from producer_tools.dead_letters import reason as dead_letter_reason
from producer_tools.reader import read_topic
from tests import models
from tests.helpers import (
    Background,
    Topics,
    committed,
    configured_topic,
    limited_topics,
    outputs,
    publish,
    publish_to_partition,
    run_worker,
    settings,
)
from tests.preprocessors import pad_or_cut

pytestmark = pytest.mark.integration


def test_each_input_yields_one_output_equal_to_the_model(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out")
    x = np.random.default_rng(0).normal(size=(300, 4)).astype("float32")
    publish(
        bootstrap,
        inp,
        ((f"k{i}".encode(), pack_input(row, id=i)) for i, row in enumerate(x)),
        headers=[("trace-id", b"abc")],
    )
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, model_version="v7"))
    got = outputs(bootstrap, out, 300)
    ids = Counter(record["id"] for _, record in got)
    assert len(got) == 300 and set(ids) == set(range(300)) and max(ids.values()) == 1
    expected = models.offline_predict(mlp_path, x)
    for msg, record in got:
        i = record["id"]
        np.testing.assert_allclose(record["outputs"], expected[i], atol=1e-5)
        assert msg.key() == f"k{i}".encode()
        assert record["model"] == {"name": "mlp", "version": "v7"} and record["v"] == 1
        assert record["source"]["topic"] == inp
        headers = dict(msg.headers())
        assert headers["trace-id"] == b"abc" and headers["tfstream.model.version"] == b"v7"
    assert summary["predicted"] == 300 and summary["traces_after_warmup"] == 0
    assert sum(committed(bootstrap, group, inp, 3).values()) == 300
    # the worker's share of the latency, timed stage by stage for every batch
    timed = {name: row["count"] for name, row in summary["stages_ms"].items()}
    assert timed == dict.fromkeys(STAGES, summary["batches"])


def test_output_headers_source_carries_the_inputs_own_headers_and_none_of_the_workers(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out")
    x = np.random.default_rng(1).normal(size=(40, 4)).astype("float32")
    # an input's copy of a worker header (a replayed dead letter's) is dropped, as with all headers
    traced = [("trace-id", b"t1"), ("tfstream.model.name", b"old")]
    publish(bootstrap, inp, ((f"t{i}".encode(), pack_input(x[i], id=i)) for i in range(20)), headers=traced)
    publish(bootstrap, inp, ((f"u{i}".encode(), pack_input(x[i], id=i)) for i in range(20, 40)))
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, model_version="v3", output_headers="source"))
    got = outputs(bootstrap, out, 40)
    assert summary["predicted"] == 40 and len(got) == 40
    expected = models.offline_predict(mlp_path, x)
    for msg, record in got:
        np.testing.assert_allclose(record["outputs"], expected[record["id"]], atol=1e-5)
        assert record["model"] == {"name": "mlp", "version": "v3"}  # the value still says which model
        assert msg.headers() == ([("trace-id", b"t1")] if msg.key().startswith(b"t") else None)


@pytest.mark.parametrize("fmt", ["keras", "saved_model"])
def test_multi_input_models_predict_like_the_model(
    bootstrap: str, topics: Topics, group: str, multi_path: Path, tmp_path: Path, fmt: str
) -> None:
    path = multi_path if fmt == "keras" else models.saved_model(multi_path, tmp_path / "sm")
    inp, out = topics("in", "out")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 10, (40, 2)).astype("int32")
    publish(bootstrap, inp, ((None, pack_input({"a": a[i], "b": b[i]}, id=i)) for i in range(40)))
    run_worker(settings(bootstrap, path, inp, out, group))
    expected = models.offline_predict(multi_path, {"a": a, "b": b})
    got = outputs(bootstrap, out, 40)
    assert len(got) == 40
    for _, record in got:
        for name in ("score", "embed"):
            np.testing.assert_allclose(record["outputs"][name], expected[name][record["id"]], atol=1e-5)


def test_a_multi_input_model_s_vectorized_preprocess_gives_each_input_as_the_model_takes_it(
    bootstrap: str, topics: Topics, group: str, multi_path: Path
) -> None:
    """A preprocess function of named inputs (a dict in, a dict out), run over whole batches."""
    inp, out = topics("in", "out")
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 256, (40, 4)).astype("uint8"), rng.integers(-5, 20, (40, 2)).astype("int64")
    publish(bootstrap, inp, ((None, pack_input({"a": a[i], "b": b[i]}, id=i)) for i in range(40)))
    with structlog.testing.capture_logs() as captured:
        run_worker(
            settings(bootstrap, multi_path, inp, out, group, preprocess="tests.preprocessors:scale_and_clip_named")
        )
    assert [e["vectorized"] for e in captured if e["event"] == "preprocess function ready"] == [True]
    made = {"a": a.astype("float32") / 255.0, "b": np.clip(b, 0, 9).astype("int32")}
    expected = models.offline_predict(multi_path, made)
    got = outputs(bootstrap, out, 40)
    assert sorted(record["id"] for _, record in got) == list(range(40))
    for _, record in got:
        for name in ("score", "embed"):
            np.testing.assert_allclose(record["outputs"][name], expected[name][record["id"]], atol=1e-5)


def test_a_worker_says_while_it_waits_for_its_first_assignment_and_how_long_the_join_took(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join here takes about 3 s (the suite's short group timeouts); the notice comes sooner than
    its 10 s so the test sees it. Before 2026-12-05 nothing was said between ``worker ready`` and
    ``partitions assigned``: about 20 s on the embedded broker with librdkafka's defaults."""
    monkeypatch.setattr(joining, "JOIN_NOTICE_AFTER_SECONDS", 0.2)
    monkeypatch.setattr(joining, "JOIN_NOTICE_EVERY_SECONDS", 0.5)
    inp, out = topics("in", "out", partitions=1)
    publish(bootstrap, inp, [(None, pack_input(np.ones(4, "float32"), id=i)) for i in range(5)])
    with structlog.testing.capture_logs() as captured:
        assert run_worker(settings(bootstrap, mlp_path, inp, out, group))["predicted"] == 5
    events = [e["event"] for e in captured]
    waits = [e for e in captured if e["event"] == joining.JOIN_EVENT]
    first = next(e for e in captured if e["event"] == "partitions assigned")
    assert waits and events.index(joining.JOIN_EVENT) < events.index("partitions assigned")
    assert all(e["group"] == group for e in waits)
    assert [e["waited_s"] for e in waits] == sorted(e["waited_s"] for e in waits)
    assert first["joined_in_s"] >= waits[-1]["waited_s"] >= 0.2


def test_bad_inputs_go_to_the_dead_letter_topic_with_their_reasons(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    good = pack_input(np.ones(4, "float32"), id="good")
    bad = {
        b"not-msgpack": (b"\xc1\xc1", "NotMsgpackError", "decode"),
        b"no-inputs": (msgpack.packb({"id": 1}), "MissingInputsError", "decode"),
        b"bad-dtype": (
            msgpack.packb({"inputs": {"dtype": "complex64", "shape": [4], "data": b"\0" * 32}}),
            "UnknownDtypeError",
            "decode",
        ),
        b"wrong-shape": (pack_input(np.ones(5, "float32")), "WrongShapeError", "validate"),
        b"nan": (pack_input(np.array([1, np.nan, 0, 0], "float32")), "NonFiniteError", "validate"),
    }
    records = [(b"g0", good)] + [(k, v) for k, (v, _, _) in bad.items()] + [(b"g1", good)]
    # as when dead letters are replayed into the input topic: the worker's own headers are not repeated
    earlier_run = [(f"tfstream.{name}", b"old") for name in ("errors.stage", "errors.group", "model.name")]
    publish(bootstrap, inp, records, headers=[("trace-id", b"t1"), *earlier_run])
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, reject_non_finite=True))
    dead = read_topic(bootstrap, dlq, min_count=len(bad))
    # each is said in the log too, with its reason (before 2026-12-05 only inputs skipped were)
    said = [e for e in captured if e["event"] == "input dead-lettered"]
    assert sorted((e["offset"], e["error"], e["stage"]) for e in said) == [
        (i + 1, error, stage) for i, (_, error, stage) in enumerate(bad.values())
    ]
    assert all(e["log_level"] == "warning" and e["reason"] for e in said)
    predicted = outputs(bootstrap, out, 2)
    assert summary["dead_lettered"] == len(bad) and len(predicted) == 2
    for msg, _ in predicted:
        names = [name for name, _ in msg.headers()]
        assert len(names) == len(set(names)) and not any(name.startswith("tfstream.errors.") for name in names)
        assert dict(msg.headers())["tfstream.model.name"] == b"mlp"
    assert {m.key() for m in dead} == set(bad)
    for msg in dead:
        value, error, stage = bad[msg.key()]
        names = [name for name, _ in msg.headers()]
        assert len(names) == len(set(names)), names
        headers = dict(msg.headers())
        assert msg.value() == value and headers["trace-id"] == b"t1"
        assert headers["tfstream.errors.exception.class.name"] == error.encode()
        assert headers["tfstream.errors.stage"] == stage.encode()
        assert headers["tfstream.errors.topic"] == inp.encode() and headers["tfstream.errors.group"] == group.encode()
        assert int(headers["tfstream.errors.offset"]) == [k for k, _ in records].index(msg.key())
        assert dead_letter_reason(msg).startswith(f"{error}: ")  # as the demo prints it (was "None: None")
    assert committed(bootstrap, group, inp, 1) == {0: len(records)}


def test_a_stream_of_bad_inputs_without_a_dead_letter_topic_writes_a_few_lines_not_one_each(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """A producer writing JSON to the input topic: each input is skipped and counted, and the log gets
    ``SAMPLED_LINES`` of them a window and one line for the rest (before: a line per input, 50,000
    lines for 50,000 inputs)."""
    inp, out = topics("in", "out", partitions=1)
    good = pack_input(np.ones(4, "float32"), id="good")
    records = [(b"g0", good)] + [(b"json", b'{"features": [1, 2, 3, 4]}')] * 300 + [(b"g1", good)]
    publish(bootstrap, inp, records)
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group))
    one_by_one = [e for e in captured if e["event"] == "input skipped (no dead-letter topic)"]
    held = [e for e in captured if e["event"] == "input skipped (no dead-letter topic): more, not written one by one"]
    assert summary["dead_lettered"] == 300 and len(outputs(bootstrap, out, 2)) == 2
    assert len(one_by_one) + sum(e["count"] for e in held) == 300  # every one said, one way or the other
    assert logs.SAMPLED_LINES <= len(one_by_one) < 60 and len(held) < 10  # a few windows at most
    assert (one_by_one[0]["offset"], one_by_one[0]["error"], one_by_one[0]["stage"]) == (1, "NotMsgpackError", "decode")
    assert {kind for e in held for kind in e["by_kind"]} == {"NotMsgpackError"} and held[-1]["last"]["offset"] == 300
    assert committed(bootstrap, group, inp, 1) == {0: len(records)}


def test_inputs_the_model_raises_on_are_isolated_and_dead_lettered(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    path = models.strict_saved_model(tmp_path / "strict")
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    x = np.ones((12, 4), "float32")
    x[5, 2] = np.nan
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(x)))
    summary = run_worker(settings(bootstrap, path, inp, out, group, dlq_topic=dlq, max_wait_ms=500))
    dead = read_topic(bootstrap, dlq, min_count=1)
    assert [dict(m.headers())["tfstream.errors.stage"] for m in dead] == [b"predict"]
    assert sorted(r["id"] for _, r in outputs(bootstrap, out, 11)) == [i for i in range(12) if i != 5]
    assert summary["predicted"] == 11


def test_a_model_that_raises_on_every_batch_writes_a_few_lines_not_one_a_batch(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    path = models.strict_saved_model(tmp_path / "strict")
    inp, out = topics("in", "out", partitions=1)
    x = np.full((120, 4), np.nan, "float32")  # every input: the model raises on all of them
    x[-1] = 1.0
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(x)))
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(settings(bootstrap, path, inp, out, group, max_batch_size=2, max_wait_ms=1))
    event = "predict failed on a batch; running its inputs apart"
    one_by_one = [e for e in captured if e["event"] == event]
    held = [e for e in captured if e["event"] == f"{event}: more, not written one by one"]
    failed = len(one_by_one) + sum(e["count"] for e in held)  # every failed batch said, one way or the other
    assert 60 <= failed <= 119  # 119 inputs the model raises on, in batches of one or two
    assert logs.SAMPLED_LINES <= len(one_by_one) < 60 and 1 <= len(held) < 10
    assert {kind for e in held for kind in e["by_kind"]} == {"InvalidArgumentError"}
    assert (summary["predicted"], summary["dead_lettered"]) == (1, 119)
    assert committed(bootstrap, group, inp, 1) == {0: 120}


def test_preprocess_runs_per_example_and_isolates_failures(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    x = np.random.default_rng(3).normal(size=(20, 4)).astype("float32")
    values = [msgpack.packb({"inputs": row.tobytes(), "id": i}) for i, row in enumerate(x)]
    values[7] = msgpack.packb({"inputs": b"\x00\x01\x02", "id": 7})  # not four floats: preprocess fails
    publish(bootstrap, inp, ((None, v) for v in values))
    run_worker(
        settings(
            bootstrap,
            mlp_path,
            inp,
            out,
            group,
            dlq_topic=dlq,
            max_wait_ms=500,
            preprocess="tests.preprocessors:decode_floats",
        )
    )
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 19)}
    assert sorted(got) == [i for i in range(20) if i != 7]
    expected = models.offline_predict(mlp_path, x)
    for i, value in got.items():
        np.testing.assert_allclose(value, expected[i], atol=1e-5)
    dead = read_topic(bootstrap, dlq, min_count=1)
    assert [dict(m.headers())["tfstream.errors.stage"] for m in dead] == [b"preprocess"]


def test_a_preprocess_tensorflow_vectorizes_runs_over_whole_batches_and_still_isolates_failures(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """Before 2026-12-05 every preprocess ran example by example (``tf.map_fn``); one that TensorFlow
    can vectorize now runs over the whole batch at once. A failing example fails its batch, whose
    inputs are then tried one by one, as before: only it is dead-lettered."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    pixels = np.random.default_rng(4).integers(0, 200, (40, 4)).astype("uint8")
    pixels[13, 2] = 250  # the preprocess function's assertion fails on it
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(pixels)))
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(
            settings(
                bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, max_batch_size=16, max_wait_ms=200,
                preprocess="tests.preprocessors:scale_pixels_below_200",
            )
        )  # fmt: skip
    (ready,) = [e for e in captured if e["event"] == "preprocess function ready"]
    assert ready["vectorized"] is True
    assert (summary["predicted"], summary["dead_lettered"]) == (39, 1)
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 39)}
    assert sorted(got) == [i for i in range(40) if i != 13]
    expected = models.offline_predict(mlp_path, pixels.astype("float32") / 255.0)
    for i, value in got.items():
        np.testing.assert_allclose(value, expected[i], atol=1e-5)
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert msgpack.unpackb(dead.value())["id"] == 13 and headers["tfstream.errors.stage"] == b"preprocess"
    assert b"a pixel is 200 or more" in headers["tfstream.errors.exception.message"]


def test_a_preprocess_that_takes_inputs_of_any_length_gets_each_as_it_was_sent(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """Token lists of any length (a text model's input), cut or padded by the preprocess function;
    raw bytes and lists both; batches of several lengths, and a preprocess failure among them."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    lengths = [3, 0, 1, 7, 4, 20, 2, 5, 9, 6]
    tokens = [np.arange(1, n + 1, dtype="int32") * (i + 1) for i, n in enumerate(lengths)]
    values = [pack_input(t, id=i) for i, t in enumerate(tokens)]
    values[6] = msgpack.packb({"inputs": tokens[6].tolist(), "id": 6})  # a list
    values[7] = pack_input(tokens[7].astype("int64"), id=7)  # another integer type, cast
    bad = {
        10: pack_input(np.array([4, -1, 2], "int32"), id=10),  # the preprocess function fails on it
        11: msgpack.packb({"inputs": [1.5, 2.0], "id": 11}),  # floats for integer tokens
        12: pack_input(np.ones((2, 2), "int32"), id=12),  # a matrix, not a list of tokens
    }
    publish(bootstrap, inp, ((None, v) for v in [*values, *bad.values()]))
    summary = run_worker(
        settings(
            bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, max_batch_size=4, max_wait_ms=200,
            preprocess="tests.preprocessors:first_four_tokens",
        )
    )  # fmt: skip
    assert (summary["predicted"], summary["dead_lettered"]) == (10, 3)
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 10)}
    expected = models.offline_predict(mlp_path, np.stack([pad_or_cut(t) for t in tokens]))
    assert sorted(got) == list(range(10))
    for i, value in got.items():
        np.testing.assert_allclose(value, expected[i], atol=1e-5)
    dead = {msgpack.unpackb(m.value())["id"]: dict(m.headers()) for m in read_topic(bootstrap, dlq, min_count=3)}
    assert {i: h["tfstream.errors.stage"] for i, h in dead.items()} == {
        10: b"preprocess",
        11: b"validate",
        12: b"validate",
    }
    assert b"a token is negative" in dead[10]["tfstream.errors.exception.message"]
    assert dead[12]["tfstream.errors.exception.class.name"] == b"WrongShapeError"


@pytest.mark.parametrize("kind", ["keras", "saved_model"])
def test_a_model_that_takes_tokens_of_any_length_is_served_at_the_length_its_preprocess_gives(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, kind: str
) -> None:
    inp, out = topics("in", "out", partitions=1)
    rng = np.random.default_rng(8)
    tokens = [rng.integers(0, 50, size=n).astype("int32") for n in (5, 1, 0, 4, 12, 3, 2)]
    publish(bootstrap, inp, ((None, pack_input(t, id=i)) for i, t in enumerate(tokens)))
    padded = np.stack([pad_or_cut(t) for t in tokens])
    if kind == "keras":
        model, preprocess = models.token_classifier(tmp_path / "tokens.keras"), "four_token_ids"
        expected = models.offline_predict(model, padded.astype("int32"))
    else:
        model, preprocess = models.shaped_saved_model(tmp_path / "double", [None, None]), "four_token_floats"
        expected = padded * 2
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(
            settings(
                bootstrap, model, inp, out, group, max_batch_size=4, max_wait_ms=200,
                preprocess=f"tests.preprocessors:{preprocess}",
            )
        )  # fmt: skip
    assert (summary["predicted"], summary["traces_after_warmup"]) == (7, 0)
    said = {e["event"]: e for e in captured}
    name, dtype = ("tokens", "int32") if kind == "keras" else ("x", "float32")
    assert said["model ready"]["inputs"] == f"{name}: {dtype}[4]"  # compiled at the function's shape
    assert said["preprocess function ready"]["takes"] == f"{name}: int32[None]"  # what messages carry
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 7)}
    assert sorted(got) == list(range(7))
    for i, value in got.items():
        np.testing.assert_allclose(value, expected[i], atol=1e-5)  # type: ignore[index]


def test_a_keras_text_model_of_one_string_an_example_as_input_1_is_served(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """``keras.Input((1,), dtype="string")``, as Keras' text tutorials write it: each message's one
    string fills the example's [1]. It failed every worker at warm-up with a TypeError."""
    model = models.word_classifier(tmp_path / "words.keras")
    inp, out = topics("in", "out", partitions=1)
    words = [b"cat", b"fish", b"unknown", b"dog", "cat"]  # a str is taken as UTF-8
    publish(bootstrap, inp, ((None, msgpack.packb({"inputs": w, "id": i})) for i, w in enumerate(words)))
    summary = run_worker(settings(bootstrap, model, inp, out, group, max_batch_size=4, max_wait_ms=200))
    assert summary["predicted"] == 5
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 5)}
    import keras
    import tensorflow as tf

    texts = tf.constant([[w if isinstance(w, bytes) else w.encode()] for w in words])
    expected = keras.saving.load_model(model)(texts).numpy()
    assert not np.allclose(expected[0], expected[1])  # the words give different outputs
    for i in range(5):
        np.testing.assert_allclose(got[i], expected[i], atol=1e-5)


@pytest.mark.usefixtures("keras_code_restored")
def test_a_model_saved_with_its_own_keras_code_is_served_with_custom_objects_and_trust_model_code(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """A custom layer (registered with Keras or not), a custom activation and a ``Lambda`` layer:
    such a model could not be served at all, every worker failing to load it."""
    path, model = models.with_custom_code(tmp_path / "custom.keras", lambda_layer=True)
    inp, out = topics("in", "out", partitions=1)
    x = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(x)))
    code = {"custom_objects": "tests.custom_layers", "trust_model_code": True}  # as the flags give them
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(settings(bootstrap, path, inp, out, group, max_batch_size=4, max_wait_ms=200, **code))
    assert summary["predicted"] == 6
    ready = next(e for e in captured if e["event"] == "custom objects ready")
    assert (ready["modules"], ready["names"], ready["trust_model_code"]) == (
        ["tests.custom_layers"],
        ["Scale", "Shift", "half_tanh"],
        True,
    )
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 6)}
    np.testing.assert_allclose(np.stack([got[i] for i in range(6)]), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.usefixtures("keras_code_restored")
@pytest.mark.parametrize(
    ("lambda_layer", "given", "says"),
    [
        (
            False,
            {},
            "it was saved with a custom class, Shift, which Keras cannot find: name the module that defines it "
            "with --custom-objects MODULE",
        ),
        (
            True,
            {"custom_objects": ["tests.custom_layers"]},
            "it holds Python code in a Lambda layer, which Keras loads only from a file you trust: if you trust "
            "this one, run with --trust-model-code",
        ),
    ],
    ids=["a class not given", "a Lambda not trusted"],
)
def test_a_model_whose_keras_code_is_not_given_is_refused_in_one_line_that_says_which_flag_to_pass(
    lambda_layer: bool, given: dict[str, Any], says: str, tmp_path: Path
) -> None:
    """Keras' own message was printed whole: a model's entire config, thousands of characters, or a
    hint at a function argument the user cannot reach. (``Scale`` is registered with Keras when the
    tests import ``tests.custom_layers``, so ``Shift``, which is not, is the class missing.)"""
    from consumer.errors import ModelError
    from consumer.worker import Worker

    path, _ = models.with_custom_code(tmp_path / "custom.keras", lambda_layer)
    with pytest.raises(ModelError) as info:
        Worker(
            settings("127.0.0.1:1", path, "in", "out", "g", **given)
        ).start()  # the model is loaded before the broker is contacted
    assert str(info.value) == f"cannot load model {str(path)!r}: {says}"


def test_a_preprocess_gets_a_variable_input_beside_a_fixed_one_and_non_finite_ones_are_refused(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    model = models.multi_input(tmp_path / "multi.keras")
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    rng = np.random.default_rng(5)
    examples = [
        {"a": rng.normal(size=(n, 2)).astype("float32"), "b": np.array([i % 10, 3], "int32")}
        for i, n in enumerate([1, 4, 2, 9, 3, 1])
    ]
    examples[4]["a"][1, 0] = np.nan
    publish(bootstrap, inp, ((None, pack_input(e, id=i)) for i, e in enumerate(examples)))
    summary = run_worker(
        settings(
            bootstrap, model, inp, out, group, dlq_topic=dlq, max_batch_size=4, max_wait_ms=200,
            preprocess="tests.preprocessors:mean_of_pairs", reject_non_finite=True,
        )
    )  # fmt: skip
    assert (summary["predicted"], summary["dead_lettered"]) == (5, 1)
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 5)}
    kept = [i for i in range(6) if i != 4]
    assert sorted(got) == kept
    a = np.stack([np.tile(examples[i]["a"].mean(axis=0), 2) for i in kept])
    expected = models.offline_predict(model, {"a": a, "b": np.stack([examples[i]["b"] for i in kept])})
    for row, i in enumerate(kept):
        for name in ("score", "embed"):
            np.testing.assert_allclose(got[i][name], expected[name][row], atol=1e-5)  # type: ignore[index]
    dead = read_topic(bootstrap, dlq, min_count=1)
    assert dict(dead[0].headers())["tfstream.errors.exception.class.name"] == b"NonFiniteError"


def test_inputs_for_which_the_model_returns_no_row_go_to_the_dead_letter_topic(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """Outputs are matched to inputs by row: a batch whose outputs have fewer rows than inputs is
    run again one input at a time, and the inputs the model still drops become dead letters."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    x = np.ones((20, 4), "float32")
    x[[3, 11], 0] = 1000.0  # the model drops these rows
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(x)))
    model = models.row_per_input_or_not(tmp_path / "drops", scalar_output=False)
    summary = run_worker(settings(bootstrap, model, inp, out, group, dlq_topic=dlq, max_wait_ms=500))
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 18)}
    assert sorted(got) == [i for i in range(20) if i not in (3, 11)]
    for value in got.values():
        np.testing.assert_array_equal(value, np.full(4, 2.0, "float32"))
    dead = read_topic(bootstrap, dlq, min_count=2)
    assert sorted(int(dict(m.headers())["tfstream.errors.offset"]) for m in dead) == [3, 11]
    assert summary["dead_lettered"] == 2
    for m in dead:
        headers = dict(m.headers())
        assert headers["tfstream.errors.stage"] == b"predict"
        assert b"output 'y' has shape [0, 4] for a batch of 1" in headers["tfstream.errors.exception.message"]


@pytest.mark.parametrize("output_format", ["msgpack", "json"])
def test_string_and_bfloat16_outputs_arrive_readable(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, output_format: str
) -> None:
    """A string output used to go out as ``dtype: object`` with 8 bytes of a memory address as its
    data, and a bfloat16 one as a dtype NumPy cannot read."""
    inp, out = topics("in", "out", partitions=1)
    x = np.random.default_rng(3).permuted(np.tile(np.arange(4, dtype="float32"), (40, 1)), axis=1)
    publish(bootstrap, inp, ((None, pack_input(row, id=i)) for i, row in enumerate(x)))
    model = models.labels_and_halves(tmp_path / "labels")
    run_worker(settings(bootstrap, model, inp, out, group, output_format=output_format))
    got = {
        record["id"]: record["outputs"]
        for record in (decode_output(m.value()) for m in read_topic(bootstrap, out, min_count=40))
    }
    assert sorted(got) == list(range(40))
    labels = [label.encode() for label in models.LABELS]
    for i, row in enumerate(x):
        outs = got[i]
        assert outs["label"].dtype == object and outs["label"].shape == ()
        assert outs["label"].item() == labels[int(row.argmax())]
        assert outs["top2"].tolist() == [labels[int(j)] for j in np.argsort(-row)[:2]]
        assert outs["half"].dtype == np.float32  # widened exactly: these values are bfloat16's too
        np.testing.assert_array_equal(outs["half"], row)
        assert outs["score"] == row.max()
    path = tmp_path / "collected.npz"
    collected = Collected()
    for m in read_topic(bootstrap, out, min_count=40):  # one partition: in id order
        collected.add(m)
    assert write_npz(path, collected, None) == 40
    with np.load(path) as saved:  # strings as bytes, not pickled objects: no allow_pickle needed
        assert saved["outputs.label"].dtype.kind == "S" and saved["outputs.top2"].shape == (40, 2)
        assert saved["outputs.label"].tolist() == [labels[int(row.argmax())] for row in x]


@pytest.mark.parametrize("output_format", ["msgpack", "json"])
def test_outputs_and_collect_are_strict_json_whatever_the_ids_and_the_model_return(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, tmp_path: Path, output_format: str
) -> None:
    """An id that is a map with a `bin` key killed a JSON-output worker (`keys must be str`), again
    at each restart, and `collect` to JSON Lines; NaN and infinite outputs or ids were written as
    `NaN`/`Infinity`, which JSON parsers (JavaScript's, Go's, Jackson by default) refuse; an id
    above int64 made `collect` to `.npz` fail."""
    inp, out = topics("in", "out", partitions=1)
    ids: list[Any] = [{b"k": 1, 2: [float("-inf")]}, float("nan"), float("inf"), 2**64 - 1, "plain"]
    x = np.ones((5, 4), "float32")
    x[1] = [3e38, 3e38, -3e38, 3e38]  # overflows the model's layers: non-finite outputs
    values = [msgpack.packb({"inputs": row.tolist(), "id": ident, "v": 1}) for row, ident in zip(x, ids, strict=True)]
    publish(bootstrap, inp, ((None, value) for value in values))
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, output_format=output_format))
    assert summary["predicted"] == 5
    expected = np.asarray(models.offline_predict(mlp_path, x))
    assert not np.isfinite(expected[1]).all()
    texts = ["NaN" if np.isnan(v) else "Infinity" if v > 0 else "-Infinity" for v in expected[1] if not np.isfinite(v)]

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    records = read_topic(bootstrap, out, min_count=5)
    # a bin key is base64 text in JSON output, like every bin there; collect writes it as UTF-8 text
    first_id = {"aw==" if output_format == "json" else "k": 1, "2": ["-Infinity"]}
    if output_format == "json":
        strict = [json.loads(m.value(), parse_constant=refuse) for m in records]
        assert [r["id"] for r in strict] == [first_id, "NaN", "Infinity", 2**64 - 1, "plain"]
        assert [item for item in strict[1]["outputs"]["data"] if isinstance(item, str)] == texts
    collected = Collected()
    for m in records:
        collected.add(m)
    got = np.stack([r["outputs"] for r in collected.records])  # JSON's strings read back as numbers
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    path = tmp_path / "collected.jsonl"
    with JsonLines(path, None) as jsonl:
        for record, key in zip(collected.records, collected.keys, strict=True):
            jsonl.write(record, key)
    lines = [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == [first_id, "NaN", "Infinity", 2**64 - 1, "plain"]
    assert [item for item in lines[1]["outputs"] if isinstance(item, str)] == texts
    write_npz(tmp_path / "collected.npz", Collected(records=collected.records[3:4], keys=collected.keys[3:4]), None)
    with np.load(tmp_path / "collected.npz") as saved:
        assert saved["ids"].tolist() == [2**64 - 1]


def test_an_id_nested_past_the_limit_is_dead_lettered_not_fatal(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """A list 900 deep as an id (msgpack reads up to 1,024) made JSON output raise RecursionError in
    the predict thread: the worker died, and again after each restart, on the same input."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    row = msgpack.packb([1.0, 2.0, 3.0, 4.0])
    values = [b"\x83\xa6inputs" + row + b"\xa1v\x01\xa2id" + b"\x91" * depth + b"\x07" for depth in (32, 900)]
    publish(bootstrap, inp, ((None, value) for value in [*values, pack_input(np.ones(4, "float32"), id=2)]))
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, output_format="json", dlq_topic=dlq))
    assert summary["predicted"] == 2 and summary["dead_lettered"] == 1
    ids = [json.loads(m.value())["id"] for m in read_topic(bootstrap, out, min_count=2)]
    assert ids == [json.loads("[" * 32 + "7" + "]" * 32), 2]
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert headers["tfstream.errors.offset"] == b"1"
    assert b'"id" is nested more than 32 lists or maps deep' in headers["tfstream.errors.exception.message"]


@pytest.mark.parametrize("output_format", ["msgpack", "json"])
def test_an_output_that_cannot_be_encoded_is_dead_lettered_alone(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch, output_format: str
) -> None:
    """Defence against the next such bug (two were found, both on ids in JSON output): an encoding
    failure used to kill the worker, and again at each restart on the same input, stalling its
    partition. Now the batch is encoded row by row and only the row that fails is dead-lettered."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(40)))

    def refuse_13(ident: Any) -> None:
        if ident == 13:
            raise ValueError("injected: cannot encode id 13")

    if output_format == "json":
        id_part = json_output._id_part
        monkeypatch.setattr(json_output, "_id_part", lambda ident, has: (refuse_13(ident), id_part(ident, has))[1])
    else:
        pack_rows = OutputPacker.pack_rows

        def packing(self: OutputPacker, outs: Any, coords: Any, timestamps: Any, ids: Any) -> list[bytes]:
            for ident, _ in ids:
                refuse_13(ident)
            return pack_rows(self, outs, coords, timestamps, ids)

        monkeypatch.setattr(OutputPacker, "pack_rows", packing)
    s = settings(bootstrap, mlp_path, inp, out, group, output_format=output_format, dlq_topic=dlq)
    summary = run_worker(s)
    assert summary["predicted"] == 39 and summary["dead_lettered"] == 1
    got = sorted(decode_output(m.value())["id"] for m in read_topic(bootstrap, out, min_count=39))
    assert got == [i for i in range(40) if i != 13]
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert headers["tfstream.errors.stage"] == b"emit" and headers["tfstream.errors.offset"] == b"13"
    assert headers["tfstream.errors.exception.message"].endswith(b"ValueError: injected: cannot encode id 13")
    assert committed(bootstrap, group, inp, 1) == {0: 40}


def test_outputs_json_cannot_carry_are_each_dead_lettered_and_the_stream_goes_on(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """A real model's outputs, no injection: complex numbers, which msgpack carries and JSON has no
    numbers for. Each batch fails to encode, then each row alone: every input a dead letter saying
    why, none an output, all committed, the worker alive to the end."""
    model = models.complex_saved_model(tmp_path / "complex")
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(12)))
    summary = run_worker(settings(bootstrap, model, inp, out, group, output_format="json", dlq_topic=dlq))
    assert summary["predicted"] == 0 and summary["dead_lettered"] == 12
    dead = read_topic(bootstrap, dlq, min_count=12)
    assert sorted(int(dict(m.headers())["tfstream.errors.offset"]) for m in dead) == list(range(12))
    for message in dead:
        headers = dict(message.headers())
        assert headers["tfstream.errors.stage"] == b"emit"
        assert b"TypeError" in headers["tfstream.errors.exception.message"]
    assert read_topic(bootstrap, out, min_count=0, timeout=2) == []
    assert committed(bootstrap, group, inp, 1) == {0: 12}


def test_a_model_taking_bfloat16_is_served_from_float32_inputs(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """It failed to load (``expected number as argument to bfloat16 constructor``), and NumPy
    gives bfloat16 the kind ``V``, which the NaN check skipped."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    x = np.arange(40, dtype="float32").reshape(10, 4) / 4  # exact in bfloat16
    records = [pack_input(row, id=i) for i, row in enumerate(x)]
    records += [pack_input(x[0].tolist(), id=10), pack_input(np.array([1, np.nan, 2, 3], "float32"), id=11)]
    publish(bootstrap, inp, ((None, r) for r in records))
    model = models.bfloat16_input(tmp_path / "b16")
    summary = run_worker(settings(bootstrap, model, inp, out, group, dlq_topic=dlq, reject_non_finite=True))
    got = {r["id"]: r["outputs"] for _, r in outputs(bootstrap, out, 11)}
    assert sorted(got) == list(range(11)) and summary["dead_lettered"] == 1
    for i in range(11):
        np.testing.assert_array_equal(got[i], x[i % 10] * 2)
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    assert dict(dead.headers())["tfstream.errors.exception.class.name"] == b"NonFiniteError"


def test_a_trickle_of_varied_batch_sizes_adds_zero_traces(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=1)
    worker = Background(settings(bootstrap, mlp_path, inp, out, group, stop_at_end=False, max_wait_ms=30))
    sent = 0
    for size in [1, 3, 7, 2, 13, 5, 32, 9, 1, 20]:
        publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=sent + i)) for i in range(size)))
        sent += size
        time.sleep(0.15)
    got = outputs(bootstrap, out, sent)
    worker.stop()
    assert worker.error is None and worker.result is not None
    rows = {int(dict(m.headers())["tfstream.batch.rows"]) for m, _ in got}
    assert len(got) == sent and len(rows) >= 3
    assert worker.result["traces_after_warmup"] == 0


def test_a_stop_pushes_every_fetched_input_through_a_full_pipeline_in_front_of_a_slow_model(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    """Stopping while batches wait in front of a slow model (a full pipeline queue, more read ahead
    in the batcher): every fetched input is predicted and committed before the worker stops."""
    inp, out = topics("in", "out", partitions=1)
    total = 160
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(total)))
    model = models.slow_saved_model(tmp_path / "slow")  # about 0.2 s per batch here
    s = settings(
        bootstrap, model, inp, out, group, stop_at_end=False, max_batch_size=8, pipeline_depth=1, drain_timeout_s=60
    )
    worker = Background(s)
    deadline = time.monotonic() + 90
    while worker.worker.counters.snapshot()["consumed"] < total and time.monotonic() < deadline:
        time.sleep(0.05)  # stop once all is fetched: a batch at the model, one queued, the rest read ahead
    worker.stop(timeout=120)
    assert worker.error is None and worker.result is not None
    print(f"stopped with {worker.result['consumed']} consumed, {worker.result['predicted']} predicted")
    assert worker.result["consumed"] == total and worker.result["predicted"] == total
    assert committed(bootstrap, group, inp, 1) == {0: total}


def test_a_stop_that_meets_an_assignment_ends_cleanly(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while the group is assigning partitions (a rolling deploy stops and starts workers
    at once): the assignment arrives during the drain. Handed to the close, where librdkafka can no
    longer read committed offsets, it crashed the worker with a traceback and exit 1 (seen in a
    bench run), and later froze the close for good (two suite runs of the last six, on this test).
    Now the worker serves it before the close, stops cleanly and does not start on what it is
    leaving."""
    from consumer.worker import Worker

    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(10)))
    drain = Worker._drain

    def drain_after_the_join(self: Worker, predict: Any) -> None:
        time.sleep(8)  # no poll meanwhile: the join completes, its assignment waits for the stop
        drain(self, predict)

    class ClosingSaid(Consumer):
        def close(self) -> None:
            structlog.get_logger().info("consumer closing")
            super().close()

    monkeypatch.setattr(Worker, "_drain", drain_after_the_join)
    monkeypatch.setattr("consumer.worker.Consumer", ClosingSaid)
    with structlog.testing.capture_logs() as logs:
        worker = Background(settings(bootstrap, mlp_path, inp, out, group, stop_at_end=False))
        worker.worker.request_stop()  # before the first poll: the stop comes first, the join during it
        worker.thread.join(60)
    assert not worker.thread.is_alive()
    events = [entry["event"] for entry in logs]
    assert events.index("partitions assigned while stopping; leaving them") < events.index("consumer closing")
    assert worker.error is None, f"the worker failed: {worker.error!r}"
    assert worker.result is not None and worker.result["consumed"] == 0
    assert committed(bootstrap, group, inp, 2) == {0: -1001, 1: -1001}  # nothing taken, nothing committed


def test_a_model_slower_than_the_stuck_limits_allow_is_said_at_start_with_the_fix(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """A full batch near ``stuck_kill_s`` would have the supervisor kill the worker as stuck in the
    normal course (and near ``stuck_batch_s``, /readyz call it not ready): the worker says so once
    its model is warm, before it joins. Limits far below any model's batch time make it certain."""
    from consumer.stuck import slow_batch_warnings
    from consumer.worker import Worker

    assert slow_batch_warnings(2.0, stuck_batch_s=60, stuck_kill_s=300) == []
    assert slow_batch_warnings(2.0, stuck_batch_s=60, stuck_kill_s=0) == []  # 0: never killed
    assert len(slow_batch_warnings(30.0, stuck_batch_s=60, stuck_kill_s=300)) == 1
    inp, out = topics("in", "out", partitions=1)
    limits = {"stuck_batch_s": 1e-6, "stuck_kill_s": 1e-6}
    with structlog.testing.capture_logs() as logs:
        summary = Worker(settings(bootstrap, mlp_path, inp, out, group, **limits)).run()  # an empty topic: done at once
    assert summary["consumed"] == 0
    warnings = [e["event"] for e in logs if e["log_level"] == "warning" and "at warm-up" in e["event"]]
    assert [w.split(", and ")[1].split("=")[0] for w in warnings] == ["stuck_kill_s", "stuck_batch_s"]
    assert all(w.endswith("to 1 or more") for w in warnings), warnings  # three full batches of a small MLP


def test_a_held_worker_commits_its_end_before_it_says_it_reached_it(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """Workers that leave together (a bounded run of several workers) each commit their end while
    holding, not in the drain after the first has left, during the rebalance its leaving starts.
    Periodic commits are off here, so only that commit can have moved the offsets by the time the
    worker reports its end."""
    from consumer.worker import Worker

    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(60)))
    worker = Worker(settings(bootstrap, mlp_path, inp, out, group, commit_interval_ms=600_000))
    seen: dict[int, int] = {}

    def at_end() -> None:  # in the worker's own loop: its drain cannot have run yet
        seen.update(committed(bootstrap, group, inp, 2))
        worker.request_stop()

    worker.bounded.hold, worker.bounded.on_end_reached = True, at_end
    summary = worker.run()
    assert summary["predicted"] == 60
    assert sum(seen.values()) == 60, f"committed when the worker reported its end: {seen}"


def test_periodic_commits_do_not_wait_for_the_broker_and_their_results_are_taken(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetch loop's periodic commits are sent without waiting (a synchronous commit held up
    fetching and batching for a round trip every second). Their results still reach the worker:
    while it runs, the broker holds every input as committed and so does the worker's tracker (which
    only the commit results update), and no commit waited."""
    from consumer import kafka_io

    inp, out = topics("in", "out", partitions=2)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(200)))
    waited: list[object] = []
    synchronous = kafka_io.commit
    monkeypatch.setattr(kafka_io, "commit", lambda *args: waited.append(args) or synchronous(*args))
    run = Background(settings(bootstrap, mlp_path, inp, out, group, commit_interval_ms=100, stop_at_end=False))
    tracker = run.worker.tracker

    def settled() -> bool:
        return sum(committed(bootstrap, group, inp, 2).values()) == 200 and tracker.uncommitted() == 0

    try:
        assert wait_until(settled, 60, lambda: time.sleep(0.2)), f"uncommitted {tracker.uncommitted()}"
        assert not waited, "a periodic commit waited for the broker"
    finally:
        run.stop()
    assert run.error is None and run.result is not None and run.result["uncommitted"] == 0


def test_a_worker_behind_its_backlog_reads_ahead_only_a_few_batches(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While full batches wait for the model, the fetch loop stops reading (``HOLD_BATCHES``) rather
    than take the interpreter lock from the predict thread to read what would only wait; the
    backlog still drains whole. Batches of 8 make the model far slower than the reads."""
    from consumer.fetch_loop import HOLD_BATCHES, READ_AHEAD_CHUNK, FetchLoop
    from consumer.worker import Worker

    inp, out = topics("in", "out", partitions=1)
    total = 6000
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(total)))
    held: list[int] = []
    turn = FetchLoop.turn

    def watched(loop: FetchLoop) -> None:
        turn(loop)
        held.append(len(loop.batcher))

    monkeypatch.setattr(FetchLoop, "turn", watched)
    summary = Worker(settings(bootstrap, mlp_path, inp, out, group, max_batch_size=8)).run()
    assert summary["predicted"] == total
    # one read past the hold, and while holding, one record every POLL_SECONDS (the run takes seconds)
    assert max(held) <= HOLD_BATCHES * 8 + READ_AHEAD_CHUNK + 100, f"read ahead up to {max(held)} records"


def test_the_fetch_loop_waits_out_a_partial_batch_without_spinning(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trickle once the worker runs: each input is a batch of its own, closed by ``max_wait_ms``.
    The fetch loop waits for the batch's deadline in ``consume``. Given the last fraction of a
    millisecond, ``consume`` returned at once (confluent-kafka truncates to whole ms), and the loop
    spun through dozens of empty reads per batch, holding the interpreter lock the predict thread
    needs."""
    from consumer.fetch_loop import FetchLoop

    seen = Counter[str]()
    route, close_batch = FetchLoop._route, FetchLoop.close_batch

    def watched_route(loop: FetchLoop, messages: list[Any]) -> None:
        if not messages and len(loop.batcher):
            seen["empty reads with a batch open"] += 1
        route(loop, messages)

    def watched_close(loop: FetchLoop) -> None:
        seen["batches"] += 1
        close_batch(loop)

    monkeypatch.setattr(FetchLoop, "_route", watched_route)
    monkeypatch.setattr(FetchLoop, "close_batch", watched_close)
    inp, out = topics("in", "out", partitions=1)
    run = Background(settings(bootstrap, mlp_path, inp, out, group, stop_at_end=False, max_wait_ms=10))
    try:
        publish(bootstrap, inp, [(None, pack_input(np.ones(4, "float32"), id=0))])
        outputs(bootstrap, out, 1, timeout=60)  # the worker holds the partition and serves
        seen.clear()
        for i in range(1, 21):
            publish(bootstrap, inp, [(None, pack_input(np.ones(4, "float32"), id=i))])
            time.sleep(0.05)
        got = outputs(bootstrap, out, 21)
        trickle = seen.copy()
    finally:
        run.stop()
    assert run.error is None and len(got) == 21
    assert trickle["batches"] >= 10, f"the trickle came in {trickle['batches']} batches"
    assert trickle["empty reads with a batch open"] <= 5 * trickle["batches"], dict(trickle)


def test_inputs_that_come_while_a_slow_model_computes_wait_for_it_in_one_batch(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model slower than ``max_wait_ms``: inputs that come while it computes a batch join one
    batch, which goes when the model is free. Before, the first of them went alone once its
    ``max_wait_ms`` was up, as a small batch queued behind the one computing, and the rest made a
    third batch behind it: with a model whose batch costs the same whatever its rows (this one, and
    a GPU below saturation, much as it), a whole batch time more for them."""
    from consumer.fetch_loop import FetchLoop

    sizes: list[int] = []
    close_batch = FetchLoop.close_batch

    def watched(loop: FetchLoop) -> None:
        sizes.append(len(loop.batcher))
        close_batch(loop)

    monkeypatch.setattr(FetchLoop, "close_batch", watched)
    inp, out = topics("in", "out", partitions=1)
    model = models.slow_saved_model(tmp_path / "slow", iterations=3000)  # about 0.5 s per batch here
    run = Background(settings(bootstrap, model, inp, out, group, stop_at_end=False, max_wait_ms=10))
    try:
        publish(bootstrap, inp, [(None, pack_input(np.ones(4, "float32"), id=0))])
        outputs(bootstrap, out, 1, timeout=60)  # one batch through: the model's batch time is known
        publish(bootstrap, inp, [(None, pack_input(np.ones(4, "float32"), id=1))])
        assert wait_until(lambda: run.worker.serving.batch_started_at is not None, 30, lambda: time.sleep(0.001))
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        for i in range(2, 7):  # while the model computes input 1's batch, each in a fetch of its own
            producer.produce(inp, pack_input(np.ones(4, "float32"), id=i))
            producer.poll(0.02)
        assert producer.flush(30) == 0
        got = outputs(bootstrap, out, 7)
        batch_seconds = run.worker.serving.batch_seconds
    finally:
        run.stop()
    print(f"batches of {sizes}; the model took {batch_seconds:.3f} s a batch")
    assert run.error is None and len(got) == 7
    assert sizes == [1, 1, 5], f"batches of {sizes} (the model took {batch_seconds:.3f} s a batch)"


def test_a_batch_time_average_starts_at_its_first_figure_and_then_moves_a_fifth_of_the_way() -> None:
    from consumer.timing import moving_average

    assert moving_average(0.0, 0.4) == 0.4
    assert moving_average(0.4, 0.9) == pytest.approx(0.5)


def test_a_predict_thread_that_dies_with_batches_queued_ends_the_worker_with_its_error(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that ends the predict thread while batches wait in the full pipeline queue: the worker
    stops with that error (the supervisor then restarts it) instead of hanging; nothing past the
    failure is committed."""
    inp, out = topics("in", "out", partitions=1)
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(160)))
    model = models.slow_saved_model(tmp_path / "slow")  # about 0.2 s per batch: the queue fills
    predict = Serving._predict
    calls: list[int] = []

    def failing_at_the_third_batch(self: Serving, batch: Batch, inputs: Any) -> None:
        calls.append(batch.id)
        if len(calls) == 3:
            raise RuntimeError("injected: a bug in the predict thread")
        predict(self, batch, inputs)

    monkeypatch.setattr(Serving, "_predict", failing_at_the_third_batch)
    s = settings(bootstrap, model, inp, out, group, stop_at_end=False, max_batch_size=8, pipeline_depth=1)
    worker = Background(s)
    worker.thread.join(120)
    assert not worker.thread.is_alive(), "the worker hung after its predict thread died"
    assert isinstance(worker.error, RuntimeError) and "injected" in str(worker.error)
    assert committed(bootstrap, group, inp, 1)[0] <= 16  # at most the two batches before the failure


def test_a_predict_thread_that_dies_on_the_last_input_ends_the_worker_at_once(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quiet case: nothing arrives after the batch the predict thread dies on. tf.data's
    thread was then waiting for the next batch, and tearing the dataset down waited for it: the
    worker hung, alive and holding its partitions, until another input came."""
    inp, out = topics("in", "out", partitions=1)

    def failing(self: Serving, batch: Batch, inputs: Any) -> None:
        raise RuntimeError("injected: a bug in the predict thread")

    monkeypatch.setattr(Serving, "_predict", failing)
    worker = Background(settings(bootstrap, mlp_path, inp, out, group, stop_at_end=False))
    publish(bootstrap, inp, ((None, pack_input(np.ones(4, "float32"), id=i)) for i in range(3)))
    worker.thread.join(60)
    assert not worker.thread.is_alive(), "the worker hung after its predict thread died"
    assert isinstance(worker.error, RuntimeError) and "injected" in str(worker.error)
    assert committed(bootstrap, group, inp, 1)[0] <= 0  # nothing committed but where the partition starts


def test_time_window_processes_exactly_the_inputs_inside_it(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out = topics("in", "out", partitions=2)
    base = 1_700_000_000_000
    stamps = [base + i * 1000 for i in range(30)]
    publish(
        bootstrap,
        inp,
        ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(30)),
        timestamps=stamps,
    )
    s = settings(
        bootstrap,
        mlp_path,
        inp,
        out,
        group,
        from_beginning=False,
        from_timestamp="2023-11-14T22:13:30Z",
        until_timestamp="2023-11-14T22:13:40Z",
    )
    summary = run_worker(s)
    assert (s.from_ms, s.until_ms) == (base + 10_000, base + 20_000)
    got = sorted(r["id"] for _, r in outputs(bootstrap, out, 10))
    assert got == list(range(10, 20)) and summary["predicted"] == 10


def test_a_new_group_starts_at_the_end_of_every_partition(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """Kafka's ``auto.offset.reset=latest`` for a group that never committed anything: the inputs
    already there are skipped, and where each partition starts is committed. A bounded run says so
    in a warning naming the flag that reads them (before: a backfill that read nothing, silently)."""
    inp, out = topics("in", "out", partitions=2)
    publish_to_partition(bootstrap, inp, 0, range(12), one_batch_each=True)
    publish_to_partition(bootstrap, inp, 1, range(12, 20), one_batch_each=True)
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, from_beginning=False))
    assert summary["predicted"] == 0 and committed(bootstrap, group, inp, 2) == {0: 12, 1: 8}
    notices = [e for e in captured if "never committed" in e["event"]]
    assert [(e["log_level"], e["event"]) for e in notices] == [("warning", new_group_notice(group, inp, "latest"))]
    assert "--from-beginning" in notices[0]["event"]


@pytest.mark.parametrize("start", ["from_beginning", "earliest", "empty"])
def test_no_new_group_notice_where_nothing_is_skipped(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, start: str
) -> None:
    """The notice is not given where the run reads what is there: with --from-beginning, with
    ``auto.offset.reset=earliest``, or on a topic that holds nothing yet."""
    inp, out = topics("in", "out", partitions=2)
    if start != "empty":
        publish_to_partition(bootstrap, inp, 0, range(5))
    extra: dict[str, Any] = {"from_beginning": start == "from_beginning"}
    if start == "earliest":
        extra["kafka_consumer"] = {"auto.offset.reset": "earliest"}
    with structlog.testing.capture_logs() as captured:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, **extra))
    assert summary["predicted"] == (0 if start == "empty" else 5)
    assert not [e for e in captured if "never committed" in e["event"]]


def test_a_partition_added_to_the_topic_of_a_group_that_has_run_is_read_from_its_first_record(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """The group committed partition 0 only: partition 1 is new to it, added to the topic since it
    started (as far as the group can tell: the embedded broker cannot add partitions, so the topic
    is made with two and the group's past is written by hand). Before, partition 1 started at the
    latest offset, as for a new group, and the 20 inputs written to it before the group found it
    were skipped."""
    inp, out = topics("in", "out", partitions=2)
    publish_to_partition(bootstrap, inp, 0, range(10))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        groups.commit(consumer, inp, {0: 10})  # the group's past: partition 0 read to its end
    finally:
        consumer.close()
    publish_to_partition(bootstrap, inp, 1, range(10, 30))
    publish_to_partition(bootstrap, inp, 0, range(30, 40))
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, from_beginning=False))
    got = sorted(record["id"] for _, record in outputs(bootstrap, out, 30))
    assert got == list(range(10, 40)) and summary["predicted"] == 30
    assert committed(bootstrap, group, inp, 2) == {0: 20, 1: 20}


#: the output producer's ``message.max.bytes`` in the tests of outputs too large for it
SMALL_PRODUCER_BYTES = 2000


def run_small_producer(bootstrap: str, model: Path, inp: str, out: str, group: str, **extra: Any) -> dict[str, Any]:
    """A worker whose output producer refuses records over ``SMALL_PRODUCER_BYTES`` (librdkafka's own check)."""
    producer = {"message.max.bytes": SMALL_PRODUCER_BYTES}
    return run_worker(settings(bootstrap, model, inp, out, group, kafka_producer=producer, **extra))


def test_offsets_are_never_committed_ahead_of_acknowledged_outputs(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path
) -> None:
    path = models.widening_saved_model(tmp_path / "widening")
    inp, out = topics("in", "out", partitions=2)
    ok = ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(600))
    publish(bootstrap, inp, ok)
    # This input makes its whole batch's outputs 1,000 times wider, more than the producer may send:
    # librdkafka refuses them (a real failure, not a mock), and no input is to blame for it.
    wide = pack_input(np.array([1000, 1, 1, 1], "float32"), id=-1)
    publish(bootstrap, inp, ((b"big", wide),))
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(600, 900)))
    with pytest.raises(DeliveryError, match="not committed: the model's outputs for one input are larger"):
        run_small_producer(bootstrap, path, inp, out, group)
    delivered = {(r["source"]["partition"], r["source"]["offset"]) for _, r in outputs(bootstrap, out, 0)}
    commits = committed(bootstrap, group, inp, 2)
    for partition, offset in commits.items():
        assert all((partition, o) in delivered for o in range(max(offset, 0)))
    assert sum(max(o, 0) for o in commits.values()) < 901


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_input_whose_output_is_too_large_is_dead_lettered_and_the_stream_goes_on(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    """Its key, headers or id go into its output: too large for the producer, the output is refused
    (by librdkafka, for real), and the input goes to the dead letters, itself cut to fit, instead of
    ending the run, which every restart would meet again (before 2026-12-03)."""
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    one = np.ones(4, "float32")
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(300)))
    # an input's own header may carry our prefix (only the worker's own names are ours): it is dropped too
    theirs = [("pad", b"x" * 2000), ("tfstream.trace", b"y" * 2500)]
    publish(bootstrap, inp, ((b"headers", pack_input(one, id=-1)),), headers=theirs)
    publish(bootstrap, inp, ((b"id", pack_input(one, id=b"x" * 3000)), (b"k" * 3000, pack_input(one, id=-3))))
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(300, 600)))
    summary = run_small_producer(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, delivery=delivery)
    assert (summary["predicted"], summary["dead_lettered"]) == (600, 3)
    assert sorted(record["id"] for _, record in outputs(bootstrap, out, 600)) == list(range(600))
    dead = {int(dict(m.headers())["tfstream.errors.offset"]): m for m in read_topic(bootstrap, dlq, min_count=3)}
    assert sorted(dead) == [300, 301, 302]
    for msg in dead.values():
        headers = dict(msg.headers())
        assert headers["tfstream.errors.exception.class.name"] == b"OutputTooLargeError"
        assert headers["tfstream.errors.stage"] == b"emit"
        assert b"over the producer's message.max.bytes (2,000)" in headers["tfstream.errors.exception.message"]
    # each dead letter cut to fit: the input's headers, its value (holding the id), its key
    assert not {"pad", "tfstream.trace"} & set(dict(dead[300].headers())) and dead[300].key() == b"headers"
    assert int(dict(dead[300].headers())["tfstream.errors.headers.omitted.bytes"]) > 4000
    assert not dead[301].value() and dead[301].key() == b"id"
    omitted = dict(dead[301].headers())["tfstream.errors.value.omitted.bytes"]
    assert omitted == str(len(pack_input(one, id=b"x" * 3000))).encode()
    assert dead[302].key() is None and dict(dead[302].headers())["tfstream.errors.key.omitted.bytes"] == b"3000"
    assert dead[302].value() == pack_input(one, id=-3)
    assert committed(bootstrap, group, inp, 1) == {0: 603}


def test_a_dead_letter_is_cut_to_its_topic_s_own_limit_and_the_worker_says_so(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """The dead-letter topic takes records up to 2,000 bytes (its ``max.message.bytes``), fewer than
    the producer's limit: a large bad input's dead letter is cut to fit the topic, and the worker
    warns at start, for the output topic too. (The embedded broker does not enforce the limit; Kafka
    refuses such a record, and before, the run stopped on it, at every restart.)"""
    (inp,) = topics("in", partitions=1)
    out, dlq = limited_topics(bootstrap, out=1500, dlq=2000)
    one = np.ones(4, "float32")
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(10)))
    publish(bootstrap, inp, ((b"big", b"\xc1" * 5000),))
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(10, 20)))
    with structlog.testing.capture_logs() as logs:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq))
    assert (summary["predicted"], summary["dead_lettered"]) == (20, 1)
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert not dead.value() and dead.key() == b"big" and headers["tfstream.errors.value.omitted.bytes"] == b"5000"
    warnings = [e["event"] for e in logs if e["log_level"] == "warning" and "max.message.bytes" in e["event"]]
    print("\n".join(warnings))
    assert len(warnings) == 2
    assert f"topic {dlq!r} takes records up to 2,000 bytes" in warnings[0] + warnings[1]
    assert any("dead letters are cut to fit it" in w for w in warnings)
    output_warning = f"topic {out!r} takes records up to 1,500 bytes"
    assert any(output_warning in w and "an output over it goes to the dead letters" in w for w in warnings)
    assert all("the producer's batches are kept to 1,500 bytes (batch.size)" in w for w in warnings)


def test_an_output_over_its_topic_s_own_limit_is_dead_lettered_and_batches_are_kept_under_it(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output topic takes records up to 1,500 bytes, fewer than the producer's limit: an output
    that its input's key makes larger goes to the dead letters, checked by the worker before it is
    produced (the embedded broker takes it; Kafka refuses it, and before, the run stopped on it, at
    every restart), and the producer builds no batch larger than the topic takes."""
    from consumer import producing

    inp, dlq = topics("in", "dlq", partitions=1)
    (out,) = limited_topics(bootstrap, out=1500)
    stats: list[str] = []
    output_rules = producing.output_rules

    def watched(settings: Any, producer_config: dict[str, Any], *rest: Any) -> Any:
        # librdkafka's statistics of the worker's own producer (made right after): its batches' sizes
        producer_config |= {"statistics.interval.ms": 100, "stats_cb": stats.append}
        return output_rules(settings, producer_config, *rest)

    monkeypatch.setattr(producing, "output_rules", watched)
    s = settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, stop_at_end=False)
    worker = Background(s)
    try:
        assert wait_until(lambda: worker.error is not None or worker.worker._joined, 60, lambda: time.sleep(0.05))
        one = np.ones(4, "float32")
        publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(200)))
        publish(bootstrap, inp, ((b"k" * 1400, pack_input(one, id=-1)),))
        publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(200, 400)))
        outputs(bootstrap, out, 400)
        time.sleep(0.5)  # the statistics of the last batches sent
    finally:
        worker.stop()
    assert worker.error is None and worker.result is not None
    assert (worker.result["predicted"], worker.result["dead_lettered"]) == (400, 1)
    seen = [json.loads(line)["topics"].get(out) for line in stats]
    batches = [t["batchsize"] for t in seen if t and t["batchsize"]["cnt"]]
    assert 0 < max(b["max"] for b in batches) <= 1500 and sum(b["cnt"] for b in batches) >= 400 * 150 // 1500
    assert sorted(record["id"] for _, record in outputs(bootstrap, out, 400)) == list(range(400))
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert dead.key() == b"k" * 1400 and headers["tfstream.errors.offset"] == b"200"
    assert headers["tfstream.errors.exception.class.name"] == b"OutputTooLargeError"
    reason = headers["tfstream.errors.exception.message"].decode()
    assert f"over topic {out!r}'s max.message.bytes (1,500, a record batch's 61-byte header included)" in reason
    assert committed(bootstrap, group, inp, 1) == {0: 401}


def test_outputs_over_their_topic_s_own_limit_whatever_the_input_stop_the_run_before_any_is_sent(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """The model's outputs alone are larger than the output topic takes: no input is to blame, so the
    run ends, saying so, and nothing is sent or committed (before, every output went to a broker that
    refuses them: Kafka; the embedded broker took them)."""
    (inp,) = topics("in", partitions=1)
    (out,) = limited_topics(bootstrap, out=200)
    publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(50)))
    pattern = rf"over topic {out!r}'s max\.message\.bytes \(200, .*the model's outputs for one input are larger"
    with pytest.raises(DeliveryError, match=pattern):
        run_worker(settings(bootstrap, mlp_path, inp, out, group))
    assert outputs(bootstrap, out, 0, timeout=3) == []
    assert committed(bootstrap, group, inp, 1) == {0: 0}  # where it started, nothing past


@pytest.mark.parametrize("limited", ["producer", "topic"])
def test_a_dead_letter_that_cannot_fit_stops_the_run_saying_it_is_a_dead_letter(
    bootstrap: str, topics: Topics, mlp_path: Path, limited: str
) -> None:
    """Its own headers (here the group's long name) are larger than the producer takes, or than the
    dead-letter topic's own ``max.message.bytes``: the error says it is the dead letter that was
    refused, not the model's outputs (as before 2026-12-03), and names the topic's limit (before
    2026-12-03's fifth session, such a dead letter went to brokers that refuse it)."""
    inp, out = topics("in", "out", partitions=1)
    (dlq,) = limited_topics(bootstrap, dlq=SMALL_PRODUCER_BYTES) if limited == "topic" else topics("dlq")
    publish(bootstrap, inp, ((b"bad", b"\xc1" * 10),))
    group = f"group-{uuid.uuid4().hex[:8]}-" + "g" * SMALL_PRODUCER_BYTES
    refused = r"a dead letter, even cut to fit, is larger than the producer's message\.max\.bytes or the dead-letter"
    if limited == "topic":
        refused = rf"over topic {dlq!r}'s max\.message\.bytes \(2,000, .*" + refused
    producer = {"message.max.bytes": SMALL_PRODUCER_BYTES} if limited == "producer" else {}
    with pytest.raises(DeliveryError, match=refused):
        run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, kafka_producer=producer))
    assert read_topic(bootstrap, dlq, timeout=3) == []


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_input_without_a_key_goes_to_the_dead_letters_when_the_output_topic_is_compacted(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    """A compacted topic takes no record without a key, and an output has its input's key: the worker,
    told at start that the output topic is compacted, sends a keyless input to the dead letters, and
    the stream goes on (the embedded broker takes such a record; Kafka refuses it, and before
    2026-12-03's fifth session the run ended on it, at every restart)."""
    (inp, dlq) = topics("in", "dlq", partitions=1)
    out = configured_topic(bootstrap, "out", {"cleanup.policy": "compact"})
    one = np.ones(4, "float32")
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(100)))
    publish(bootstrap, inp, ((None, pack_input(one, id=-1)),))
    publish(bootstrap, inp, ((str(i).encode(), pack_input(one, id=i)) for i in range(100, 200)))
    with structlog.testing.capture_logs() as logs:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq, delivery=delivery))
    assert (summary["predicted"], summary["dead_lettered"]) == (200, 1)
    got = outputs(bootstrap, out, 200)
    assert sorted(record["id"] for _, record in got) == list(range(200)) and all(m.key() for m, _ in got)
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert dead.key() is None and dead.value() == pack_input(one, id=-1)
    assert headers["tfstream.errors.exception.class.name"] == b"UnkeyedOutputError"
    assert headers["tfstream.errors.stage"] == b"emit" and headers["tfstream.errors.offset"] == b"100"
    reason = headers["tfstream.errors.exception.message"].decode()
    assert reason == f"its input has no key, so neither would its output: topic {out!r} is compacted " + (
        "(cleanup.policy compact): it takes no record without a key"
    )
    assert any(f"topic {out!r} is compacted" in e["event"] and e["log_level"] == "warning" for e in logs)
    assert committed(bootstrap, group, inp, 1) == {0: 201}


def _keyed_stream_with_tombstones() -> list[tuple[bytes | None, bytes | None]]:
    """60 inputs over 2 keys, the key of every 5th deleted (a record without a value) just after it,
    input 23 a NaN (which the strict model raises on: its batch is predicted one input at a time), and
    a tombstone without a key last."""
    records: list[tuple[bytes | None, bytes | None]] = []
    for i in range(60):
        key = f"k{i % 2}".encode()
        records.append((key, pack_input(np.full(4, np.nan if i == 23 else i, "float32"), id=i)))
        if i % 5 == 4:
            records.append((key, None))
    return [*records, (None, None)]


def _per_key(records: list[tuple[bytes | None, Any]]) -> dict[bytes | None, list[Any]]:
    """Each key's values in order: an id, or None for a record without a value."""
    keys: dict[bytes | None, list[Any]] = {}
    for key, value in records:
        keys.setdefault(key, []).append(value)
    return keys


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_tombstones_forwarded_delete_their_key_s_outputs_each_in_its_place(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, delivery: str
) -> None:
    """Found by hand: a compacted input topic's deletions were dead-lettered, each as not msgpack, and
    its outputs kept every deleted key's last prediction. Forwarded, each follows its key's outputs
    before it and precedes those after it, in a batch predicted whole or one input at a time."""
    path = models.strict_saved_model(tmp_path / "strict")
    (inp, dlq) = topics("in", "dlq", partitions=1)
    out = configured_topic(bootstrap, "out", {"cleanup.policy": "compact"})
    records = _keyed_stream_with_tombstones()
    publish(bootstrap, inp, records)
    s = settings(
        bootstrap, path, inp, out, group, dlq_topic=dlq, delivery=delivery, tombstones="forward", max_batch_size=16
    )
    summary = run_worker(s)
    assert (summary["predicted"], summary["dead_lettered"], summary["skipped"]) == (59, 2, 12)
    got = read_topic(bootstrap, out, min_count=71)
    sent = [(m.key(), None if m.value() is None else unpack_output(m.value())["id"]) for m in got]
    expected = [(key, None if value is None else msgpack.unpackb(value)["id"]) for key, value in records]
    assert _per_key(sent) == _per_key([(key, value) for key, value in expected[:-1] if value != 23])
    dead = [dict(m.headers()) for m in read_topic(bootstrap, dlq, min_count=2)]
    assert [(h["tfstream.errors.stage"], h["tfstream.errors.offset"]) for h in dead] == [
        (b"predict", b"27"), (b"decode", b"72")
    ]  # fmt: skip
    assert dead[1]["tfstream.errors.exception.message"].startswith(b"the message has no value (a tombstone)")
    assert committed(bootstrap, group, inp, 1) == {0: 73}
    found = Collected()  # collect counts them apart, not as undecodable
    for msg in got:
        found.add(msg)
    assert (found.decoded, found.deletions, found.undecodable) == (59, 12, 0)


@pytest.mark.parametrize(("mode", "dead_lettered", "skipped"), [("skip", 1, 13), ("dead-letter", 14, 0)])
def test_tombstones_skipped_or_dead_lettered_send_nothing_to_the_output_topic(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, mode: str, dead_lettered: int, skipped: int
) -> None:
    """``skip``: done and counted, without a word; ``dead-letter`` (the default): each one a dead letter,
    and a line at start, the input topic being compacted, naming the other two."""
    path = models.strict_saved_model(tmp_path / "strict")
    (out, dlq) = topics("out", "dlq", partitions=1)
    inp = configured_topic(bootstrap, "in", {"cleanup.policy": "compact"})
    publish(bootstrap, inp, _keyed_stream_with_tombstones())
    with structlog.testing.capture_logs() as logs:
        s = settings(bootstrap, path, inp, out, group, dlq_topic=dlq, tombstones=mode, max_batch_size=16)
        summary = run_worker(s)
    notes = [e["event"] for e in logs if e["event"].startswith("input topic")]
    assert notes == (
        [] if mode == "skip" else [
            f"input topic {inp!r} is compacted (cleanup.policy compact): its deletions (records without a value) "
            "go to the dead letters; --tombstones forward deletes their keys' predictions from the output topic "
            "too, --tombstones skip passes over them"
        ]
    )  # fmt: skip
    assert (summary["predicted"], summary["dead_lettered"], summary["skipped"]) == (59, dead_lettered, skipped)
    got = read_topic(bootstrap, out, min_count=59)
    assert sorted(unpack_output(m.value())["id"] for m in got) == [i for i in range(60) if i != 23]
    assert len(read_topic(bootstrap, dlq, min_count=dead_lettered)) == dead_lettered
    assert committed(bootstrap, group, inp, 1) == {0: 73}


def test_without_a_dead_letter_topic_a_keyless_input_for_a_compacted_output_topic_is_skipped_and_said(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """As any bad input without a dead-letter topic: skipped, counted and logged with its reason."""
    (inp,) = topics("in", partitions=1)
    out = configured_topic(bootstrap, "out", {"cleanup.policy": "compact"})
    records = [(str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(20)]
    publish(bootstrap, inp, [*records[:10], (None, pack_input(np.ones(4, "float32"), id=-1)), *records[10:]])
    with structlog.testing.capture_logs() as logs:
        summary = run_worker(settings(bootstrap, mlp_path, inp, out, group))
    assert (summary["predicted"], summary["dead_lettered"]) == (20, 1)
    skipped = [e for e in logs if e["event"] == "input skipped (no dead-letter topic)"]
    assert [(e["error"], e["offset"]) for e in skipped] == [("UnkeyedOutputError", 10)]
    assert sorted(record["id"] for _, record in outputs(bootstrap, out, 20)) == list(range(20))
    assert committed(bootstrap, group, inp, 1) == {0: 21}


def test_a_keyless_bad_input_stops_the_run_when_the_dead_letter_topic_is_compacted(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """A dead letter has its input's key: a compacted dead-letter topic cannot take one without. The
    worker warns at start, and the run ends on such an input saying what to change, with nothing
    committed past it (before 2026-12-03's fifth session it went to brokers that refuse it)."""
    inp, out = topics("in", "out", partitions=1)
    dlq = configured_topic(bootstrap, "dlq", {"cleanup.policy": "compact,delete"})
    good = ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(10))
    publish(bootstrap, inp, [*good, (b"keyed", b"\xc1"), (None, b"\xc1")])
    refused = rf"topic {dlq!r} is compacted .*: give the dead-letter topic cleanup\.policy delete"
    with structlog.testing.capture_logs() as logs, pytest.raises(DeliveryError, match=refused):
        run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq))
    assert any(f"dead-letter topic {dlq!r} is compacted" in e["event"] for e in logs)
    assert [m.key() for m in read_topic(bootstrap, dlq, min_count=1)] == [b"keyed"]
    assert committed(bootstrap, group, inp, 1)[0] <= 11


def test_a_dead_letter_cut_for_a_compacted_dead_letter_topic_keeps_its_key(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """A dead letter is cut to fit its topic's limit, largest part first; the key was such a part. A
    compacted dead-letter topic takes no record without a key, so there the value and headers go and
    the key stays (before, this input's key went first, and the keyless dead letter ended the run)."""
    inp, out = topics("in", "out", partitions=1)
    dlq = configured_topic(bootstrap, "dlq", {"cleanup.policy": "compact", "max.message.bytes": "2000"})
    key = b"k" * 1200
    good = [(str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in range(10)]
    publish(bootstrap, inp, [*good, (key, b"\xc1" * 1000)])
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq))
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    print(f"dead letter: key {len(dead.key())} bytes, value {len(dead.value() or b'')}, headers {sorted(headers)}")
    assert (summary["predicted"], summary["dead_lettered"]) == (10, 1)
    assert dead.key() == key and not dead.value() and headers["tfstream.errors.value.omitted.bytes"] == b"1000"
    assert "tfstream.errors.key.omitted.bytes" not in headers
    assert committed(bootstrap, group, inp, 1) == {0: 11}


@pytest.mark.parametrize("output_format", ["msgpack", "json"])
def test_an_input_whose_string_output_is_too_large_is_dead_lettered_and_the_others_predicted(
    bootstrap: str, topics: Topics, group: str, tmp_path: Path, output_format: str
) -> None:
    """A string output's size is the input's doing (here, as long as its text), not the model's: a
    dead letter, not the end of the run."""
    path = models.shout_saved_model(tmp_path / "shout")
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    texts = [f"text {i}".encode() for i in range(40)] + [b"x" * 3000] + [f"text {i}".encode() for i in range(41, 80)]
    publish(bootstrap, inp, ((None, pack_input(text, id=i)) for i, text in enumerate(texts)))
    summary = run_small_producer(bootstrap, path, inp, out, group, dlq_topic=dlq, output_format=output_format)
    assert (summary["predicted"], summary["dead_lettered"]) == (79, 1)
    records = [decode_output(m.value()) for m in read_topic(bootstrap, out, min_count=79)]
    got = {record["id"]: record["outputs"]["length"] for record in records}
    assert sorted(got) == [i for i in range(80) if i != 40] and int(got[7]) == len(b"text 7")
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert headers["tfstream.errors.exception.class.name"] == b"OutputTooLargeError"
    assert headers["tfstream.errors.offset"] == b"40" and "tfstream.errors.value.omitted.bytes" in headers
    assert committed(bootstrap, group, inp, 1) == {0: 80}


def test_a_dead_letter_too_large_to_produce_keeps_its_reason_and_drops_its_value(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    inp, out, dlq = topics("in", "out", "dlq", partitions=1)
    huge = b"\xc1" * 1_500_000  # larger than the producer's default message.max.bytes (1,000,000)
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4_000_000})
    producer.produce(inp, huge, b"huge")
    producer.produce(inp, pack_input(np.ones(4, "float32"), id="after"), b"after")
    assert producer.flush(30) == 0
    summary = run_worker(settings(bootstrap, mlp_path, inp, out, group, dlq_topic=dlq))
    (dead,) = read_topic(bootstrap, dlq, min_count=1)
    headers = dict(dead.headers())
    assert dead.key() == b"huge" and not dead.value()
    assert headers["tfstream.errors.value.omitted.bytes"] == b"1500000"
    assert headers["tfstream.errors.exception.class.name"] == b"NotMsgpackError"
    assert summary["predicted"] == 1 and committed(bootstrap, group, inp, 1) == {0: 2}


def test_a_batch_s_outputs_are_sent_when_it_is_done_not_after_linger(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path
) -> None:
    """With a ``linger.ms`` of 2 minutes, outputs still come out while the worker runs: each batch's
    are sent as soon as they are all produced. Should librdkafka's sender miss one batch's moment,
    the next batch's sends both; so three waves, published once the worker has its partition (three
    batches: before 2026-12-03 they all came before, in one batch, and one missed moment failed
    the test), and the first two are awaited before the stop (which sends whatever is left)."""
    inp, out = topics("in", "out", partitions=1)
    s = settings(bootstrap, mlp_path, inp, out, group, stop_at_end=False, kafka_producer={"linger.ms": 120_000})
    worker = Background(s)
    try:
        joined = lambda: worker.error is not None or worker.worker._joined  # noqa: E731
        assert wait_until(joined, 60, lambda: time.sleep(0.05))
        for wave in range(3):
            ids = range(wave * 10, wave * 10 + 10)
            publish(bootstrap, inp, ((str(i).encode(), pack_input(np.ones(4, "float32"), id=i)) for i in ids))
            time.sleep(0.5)
        while_running = outputs(bootstrap, out, 20, timeout=60)
    finally:
        worker.stop()
    assert set(range(20)) <= {record["id"] for _, record in while_running}
    assert sorted(record["id"] for _, record in outputs(bootstrap, out, 30)) == list(range(30))
    assert worker.error is None and worker.result is not None and worker.result["predicted"] == 30


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_output_partitioning_input_sends_each_output_to_its_input_s_partition_in_its_order(
    bootstrap: str, topics: Topics, group: str, mlp_path: Path, delivery: str
) -> None:
    """``--output-partitioning input``: keyless inputs (which the partitioner scatters) and keyed ones
    placed off their key's hash both come out on their input's partition, in their input's order;
    so do forwarded tombstones. An output topic with fewer partitions is refused at start."""
    inp, out = topics("in", "out", partitions=4)
    (small,) = topics("small", partitions=2)
    with pytest.raises(ConfigError, match=f"output topic {small!r} has 2 partitions, and each output goes to its"):
        run_worker(settings(bootstrap, mlp_path, inp, small, group, output_partitioning="input"))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(400):
        key = None if i % 2 else f"k{i}".encode()
        value = None if i % 50 == 10 else pack_input(np.full(4, i, "float32"), id=i)  # 8 keyed tombstones
        producer.produce(inp, value, key, partition=(i * 7 + i // 4) % 4)
    assert producer.flush(30) == 0
    s = settings(
        bootstrap, mlp_path, inp, out, group,
        output_partitioning="input", tombstones="forward", delivery=delivery, max_batch_size=32,
    )  # fmt: skip
    summary = run_worker(s)
    assert (summary["predicted"], summary["skipped"], summary["dead_lettered"]) == (392, 8, 0)
    got = read_topic(bootstrap, out, min_count=400)
    sources: dict[int, list[int]] = {}
    for msg in got:
        if msg.value() is None:  # a tombstone: back to its input by its key
            i = int(msg.key()[1:])
            assert msg.partition() == (i * 7 + i // 4) % 4
            continue
        source = unpack_output(msg.value())["source"]
        assert msg.partition() == source["partition"]
        sources.setdefault(msg.partition(), []).append(source["offset"])
    assert sum(map(len, sources.values())) == 392 and all(offsets == sorted(offsets) for offsets in sources.values())
