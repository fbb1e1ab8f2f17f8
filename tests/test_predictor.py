"""Precompiled predict functions: equal to the model, padded to allowed sizes, never retraced."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import keras
import numpy as np
import pytest
import structlog
import tensorflow as tf

from consumer.codec import Limits
from consumer.delivery import wait_until
from consumer.errors import ModelError
from consumer.model import load_model
from consumer.pipeline import Pipeline
from consumer.predictor import Predictor, default_batch_sizes
from consumer.reload import Served
from consumer.serving import Serving
from consumer.validate import stack
from tests import models


def rows(n: int, width: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(n)
    return [{"features": rng.normal(size=width).astype("float32")} for _ in range(n)]


def test_default_batch_sizes_are_powers_of_two_and_their_midpoints_up_to_the_max() -> None:
    assert default_batch_sizes(256) == [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert default_batch_sizes(100) == [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 100]
    assert default_batch_sizes(1) == [1]


def test_many_batch_sizes_add_zero_traces_after_warm_up(mlp_path: Path) -> None:
    predictor = Predictor(load_model(mlp_path), default_batch_sizes(64))
    predictor.warm_up()
    warm = predictor.trace_count
    assert warm == len(predictor.batch_sizes)
    for n in [1, 3, 5, 7, 17, 33, 64, 2, 63, 31, 9]:
        batch = rows(n)
        out = predictor.predict(stack(batch, predictor.model.signature, predictor.bucket_for(n)), n)
        assert out["output_0"].shape == (n, 3)
    assert predictor.trace_count == warm


def test_padding_rows_do_not_change_the_results(mlp_path: Path) -> None:
    predictor = Predictor(load_model(mlp_path), [8])
    batch = rows(5)
    out = predictor.predict(stack(batch, predictor.model.signature, 8), 5)["output_0"]
    expected = models.offline_predict(mlp_path, np.stack([r["features"] for r in batch]))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_xla_compilation_gives_the_same_results(mlp_path: Path) -> None:
    plain, xla = (Predictor(load_model(mlp_path), [4], jit_compile=j) for j in (False, True))
    batch = stack(rows(4), plain.model.signature, 4)
    np.testing.assert_allclose(plain.predict(batch, 4)["output_0"], xla.predict(batch, 4)["output_0"], atol=1e-5)


def test_multi_input_models_read_names_dtypes_and_shapes(multi_path: Path, tmp_path: Path) -> None:
    for path in (multi_path, models.saved_model(multi_path, tmp_path / "multi_sm")):
        model = load_model(path)
        specs = {s.name: (s.dtype, s.shape) for s in model.signature.inputs}
        assert specs == {"a": ("float32", (4,)), "b": ("int32", (2,))}
        assert set(model.signature.outputs) == {"score", "embed"}


def test_a_keras_model_with_nested_outputs_serves_each_under_its_path(tmp_path: Path) -> None:
    """Outputs nested in a dict and a list: the model was refused at warm-up (output 'head' has
    shape [] for a batch of 1) as if it gave no row per input."""
    import keras

    path = models.nested_outputs(tmp_path / "nested.keras")
    model = load_model(path)
    assert model.signature.outputs == ("head.parts.0", "head.parts.1", "head.score", "hidden")
    predictor = Predictor(model, [4])
    predictor.warm_up()
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    out = predictor.predict(stack([{"features": row} for row in x], model.signature, 4), 3)
    expected = keras.saving.load_model(path).predict(x, verbose=0)
    for name, want in [
        ("hidden", expected["hidden"]),
        ("head.score", expected["head"]["score"]),
        ("head.parts.0", expected["head"]["parts"][0]),
        ("head.parts.1", expected["head"]["parts"][1]),
    ]:
        np.testing.assert_allclose(out[name], want, atol=1e-5)


def test_a_whole_model_saved_in_the_legacy_h5_format_serves_as_keras_predicts(tmp_path: Path) -> None:
    """Keras 2's ``model.save("m.h5")``, still what many trained models are kept in."""
    mlp = keras.saving.load_model(models.mlp(tmp_path / "m.keras"))
    mlp.save(tmp_path / "m.h5")
    predictor = Predictor(load_model(tmp_path / "m.h5"), [4])
    predictor.warm_up()
    x = np.random.default_rng(2).normal(size=(3, 4)).astype("float32")
    out = predictor.predict(stack([{"features": row} for row in x], predictor.model.signature, 4), 3)
    np.testing.assert_allclose(out["output_0"], mlp.predict(x, verbose=0), atol=1e-5)


def test_model_version_defaults_to_a_content_hash(mlp_path: Path) -> None:
    assert load_model(mlp_path).version == load_model(mlp_path).version
    assert load_model(mlp_path).version.startswith("sha256:")
    assert load_model(mlp_path, name="n", version="7").version == "7"


def test_bad_model_paths_raise_one_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"junk.keras' is not a .keras file \(a zip archive\): it is damaged"):
        load_model(tmp_path / "junk.keras")  # Keras itself said "File not found"
    (tmp_path / "junk.h5").write_bytes(b"not HDF5")
    with pytest.raises(ModelError, match=r"junk.h5' is not an HDF5 file, as its suffix .h5 says: it is damaged"):
        load_model(tmp_path / "junk.h5")  # h5py itself said "file signature not found"
    (tmp_path / "renamed.h5").write_bytes(models.mlp(tmp_path / "r.keras").read_bytes())
    renamed = r"renamed.h5' is not an HDF5 .*: it is a .keras archive; name it renamed.keras$"
    with pytest.raises(ModelError, match=renamed):
        load_model(tmp_path / "renamed.h5")
    mlp = keras.saving.load_model(models.mlp(tmp_path / "m.keras"))
    mlp.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ModelError) as info:  # was Keras' "No model config found in the file at …"
        load_model(tmp_path / "m.weights.h5")
    assert str(info.value) == (
        f"cannot load model {str(tmp_path / 'm.weights.h5')!r}: it holds weights only (saved with save_weights), "
        "not a model: build the model in Python, load these weights into it, and save it whole with "
        "model.save('name.keras')"
    )
    saved = models.saved_model(tmp_path / "m.keras", tmp_path / "sm")
    with pytest.raises(ModelError) as info:  # was "… is neither a .keras file nor a SavedModel directory"
        load_model(saved / "saved_model.pb")
    assert str(info.value) == (
        f"model path {str(saved / 'saved_model.pb')!r} is a file of a SavedModel: pass its directory, {str(saved)!r}"
    )
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    with pytest.raises(ModelError) as info:
        load_model(tmp_path / "m.tflite")
    assert str(info.value) == (
        f"model path {str(tmp_path / 'm.tflite')!r} is neither a Keras file (.keras, or a whole model saved as "
        ".h5) nor a SavedModel directory"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as info:  # was TensorFlow's "SavedModel file does not exist at: …"
        load_model(tmp_path / "empty")
    assert str(info.value) == (
        f"model path {str(tmp_path / 'empty')!r} is a directory without a saved_model.pb: pass a SavedModel "
        "directory, a .keras file, or a versioned directory (BASE/<number>/ holding either)"
    )


def test_a_model_without_one_output_row_per_input_is_refused_at_warm_up(tmp_path: Path) -> None:
    model = load_model(models.row_per_input_or_not(tmp_path / "scalar", scalar_output=True))
    with pytest.raises(ModelError, match=r"output 'total' has shape \[\] for a batch of 1: every output needs"):
        Predictor(model, [1, 4]).warm_up()


def test_a_savedmodel_serves_the_signature_named_and_says_which_it_has(tmp_path: Path, mlp_path: Path) -> None:
    path = models.two_signatures(tmp_path / "two")
    with pytest.raises(ModelError) as refused:
        load_model(path)
    assert str(refused.value) == (
        f"SavedModel {str(path)!r} has no signature 'serving_default' (it has: 'double', 'triple'); "
        "pass the one to serve with --signature NAME"
    )
    predictor = Predictor(load_model(path, signature="triple"), [4])
    x = np.arange(8, dtype="float32").reshape(2, 4)
    out = predictor.predict(stack([{"x": row} for row in x], predictor.model.signature, 4), 2)
    np.testing.assert_array_equal(out["y"], x * 3)
    with pytest.raises(ModelError, match=r"--signature 'triple' applies to SavedModels; .* is a Keras file"):
        load_model(mlp_path, signature="triple")


def test_a_model_with_a_fixed_batch_is_served_at_that_size_or_refused_in_one_line(tmp_path: Path) -> None:
    """Such a model used to crash each worker start on a multi-line TypeError from tracing ("in
    user code:"), retried three times as if it were transient."""
    for path, batch in [
        (models.shaped_saved_model(tmp_path / "sm", [2, 4]), 2),
        (models.fixed_batch_keras(tmp_path / "fixed.keras", 2), 2),
    ]:
        model = load_model(path)
        assert model.fixed_batch == batch
        with pytest.raises(ModelError, match=r"takes batches of exactly 2 .*: run with --max-batch-size 2,"):
            Predictor(model, default_batch_sizes(32))
        predictor = Predictor(model, default_batch_sizes(2))
        assert predictor.batch_sizes == [2]
        predictor.warm_up()
        x = np.arange(4, dtype="float32")
        (out,) = predictor.predict(stack([{model.signature.inputs[0].name: x}], model.signature, 2), 1).values()
        assert out.shape[0] == 1
    assert load_model(models.shaped_saved_model(tmp_path / "free", [None, 4])).fixed_batch is None
    with pytest.raises(ModelError, match="model input 'x' has an unknown batch dimension"):
        load_model(models.shaped_saved_model(tmp_path / "any", None))
    with pytest.raises(ModelError, match="model input 'x' has no batch dimension"):
        load_model(models.shaped_saved_model(tmp_path / "scalar", []))


@pytest.mark.parametrize(("batch", "sequential"), [(2, False), (1, True), (16, True)])
def test_a_keras_model_whose_inputs_declare_a_batch_it_does_not_need_is_served_at_every_size(
    tmp_path: Path, batch: int, sequential: bool
) -> None:
    """A Sequential built by calling it on a sample declares that sample's batch. It was refused
    ("takes batches of exactly 1 ... run with --max-batch-size 1"), or served at that one size, though
    it runs any; a stateful RNN, which does not, could not be loaded at all (its sample call failed)."""
    path = models.declared_batch_keras(tmp_path / "declared.keras", batch, sequential)
    model = load_model(path)
    assert (model.declared_batch, model.fixed_batch) == (batch, None)
    predictor = Predictor(model, default_batch_sizes(32))
    assert predictor.batch_sizes == default_batch_sizes(32)
    predictor.warm_up()
    x = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")
    (out,) = predictor.predict(
        stack([{model.signature.inputs[0].name: row} for row in x], model.signature, 8), 5
    ).values()
    np.testing.assert_allclose(out, models.offline_predict(path, x), atol=1e-5)


def test_a_model_that_fails_at_a_batch_size_is_a_model_error_with_the_error_itself(tmp_path: Path) -> None:
    """It crashed each worker start on TensorFlow's multi-line error (the one line shown was "in
    user code:" or its first line), retried three times as if transient."""
    model = load_model(models.single_example_only(tmp_path / "single"))
    with pytest.raises(ModelError) as refused:
        Predictor(model, default_batch_sizes(8)).warm_up()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("model 'single' cannot run a batch of 2: ValueError: Cannot reshape a tensor with 8")
    assert message.endswith("; it takes single examples: --max-batch-size 1 serves it")
    Predictor(model, default_batch_sizes(1)).warm_up()


def test_a_pipeline_with_nothing_to_tune_runs_without_tf_data_autotuning(mlp_path: Path) -> None:
    """tf.data's autotuning thread made the iterator's teardown, at every stop, wait out the
    thread's sleep: 3.6-4.3 s in about a third of the bounded runs measured (11 of 32), none of 16
    without it. Only a pipeline with a parallel map (``--preprocess``) has anything to tune."""
    from consumer.codec import Limits
    from consumer.pipeline import Pipeline
    from tests.preprocessors import decode_floats

    predictor = Predictor(load_model(mlp_path), [4])
    assert Pipeline(predictor, Limits(), depth=2).dataset().options().autotune.enabled is False
    preprocessed = Pipeline(predictor, Limits(), depth=2, preprocess=decode_floats)
    assert preprocessed.dataset().options().autotune.enabled is not False


def test_a_worker_s_pipeline_counts_as_stalled_only_while_the_model_or_tf_data_holds_a_batch(mlp_path: Path) -> None:
    """What ``stuck_kill_s`` acts on: how long one call of the model has run, or how long the predict
    thread has waited for tf.data's next batch since one was put in; nothing while it waits with none
    put in (a quiet stream), nor once the call returns."""
    model = load_model(mlp_path)
    predictor = Predictor(model, [4])
    predictor.warm_up()
    pipeline = Pipeline(predictor, Limits(1 << 16, 1 << 12, 4), depth=4)
    unused = cast(Any, None)  # the emitter, dead letters and outbox: no batch is sent here
    serving = Serving(Served(model, predictor), pipeline, unused, unused, unused, None, None, structlog.get_logger())
    assert serving.stalled_for(time.monotonic()) is None
    go_on = threading.Event()
    running, returned = predictor.run, []

    def held(padded: Any, size: int) -> dict[str, np.ndarray]:
        go_on.wait(30)
        return running(padded, size)

    predictor.run = held  # type: ignore[method-assign]  # a model call that does not return until told
    padded = stack([], model.signature, 4)
    call = threading.Thread(target=lambda: returned.append(serving._run_model(padded, 4)))
    call.start()
    assert wait_until(lambda: serving.stalled_for(time.monotonic()) is not None, 30, lambda: time.sleep(0.01))
    assert serving.stalled_for(time.monotonic() + 10) >= 10  # type: ignore[operator]
    go_on.set()
    call.join(30)
    assert returned and serving.stalled_for(time.monotonic()) is None

    nothing_yet = threading.Event()
    waiting = threading.Thread(target=lambda: serving._next_batch(iter(lambda: nothing_yet.wait(30), True)))
    waiting.start()  # the predict thread waiting for tf.data, nothing put in: a quiet stream
    time.sleep(0.2)
    assert serving.stalled_for(time.monotonic() + 10) is None
    put_at = time.monotonic()
    pipeline.put(([cast(Any, None)], [(("in", 0), 0)], [0]), None)
    stalled = serving.stalled_for(put_at + 10)
    assert stalled is not None and 9.9 < stalled <= 10  # since it was put in, not since the wait began
    nothing_yet.set()
    waiting.join(30)
    assert serving.stalled_for(time.monotonic()) is None


@pytest.mark.parametrize(
    ("declared", "says"),
    [
        (
            {"a": tf.TensorSpec([4], tf.float32)},
            "its input_signature declares ['a'], and the model takes ['features']: declare one tf.TensorSpec",
        ),
        ("not a spec", "its input_signature gives 'features' as str: declare a tf.TensorSpec"),
        (tf.TensorSpec(None, tf.float32), "its input_signature gives 'features' no rank: declare its dimensions"),
        (
            tf.TensorSpec([None], tf.string),
            "its input_signature gives 'features' as tf.string of shape [None]; a string input arrives as one",
        ),
    ],
    ids=["names", "not-a-spec", "no-rank", "string-vector"],
)
def test_a_preprocess_input_signature_the_wire_cannot_carry_is_refused_in_one_line(
    mlp_path: Path, declared: Any, says: str
) -> None:
    """Before, a dimension of None (or no rank) failed each worker at start with a TypeError
    traceback, three times, and a dict without the model's input names with a KeyError."""
    from consumer.errors import PreprocessMismatch
    from consumer.preprocess import raw_signature

    def preprocess(x: Any) -> Any:
        return x

    preprocess.input_signature = [declared]  # type: ignore[attr-defined]  # as tf.function sets it
    with pytest.raises(PreprocessMismatch) as info:
        raw_signature(load_model(mlp_path).signature, preprocess)
    assert str(info.value).startswith(says), str(info.value)


def test_a_model_input_of_any_length_is_served_at_the_shape_its_preprocess_function_gives(tmp_path: Path) -> None:
    """It was refused whatever the preprocess function did ("unknown dimension"): a text model
    exported as ``Input((None,))`` could not be served."""
    from consumer.errors import PreprocessMismatch
    from consumer.preprocess import shapes_from
    from tests.preprocessors import first_four_tokens, four_token_floats, four_token_ids

    path = models.token_classifier(tmp_path / "tokens.keras")
    with pytest.raises(ModelError) as refused:
        load_model(path)
    assert str(refused.value) == (
        "model input 'tokens' has a dimension of any size [None]; precompiled batch functions need fixed "
        "example shapes: export the model with fixed input shapes, or give --preprocess a function that "
        "returns them (pads or cuts to a length)"
    )
    with pytest.raises(PreprocessMismatch) as unknown:
        load_model(path, fix_shapes=shapes_from(first_four_tokens))
    assert str(unknown.value).startswith(
        "the model takes tokens: int32[None], a dimension of any size, and for one input the function returns "
        "tokens: float32[None]: make it return one fixed shape (pad or cut to a length, then tf.ensure_shape("
    )
    model = load_model(path, fix_shapes=shapes_from(four_token_ids))
    assert model.signature.describe() == "tokens: int32[4]"
    saved = load_model(
        models.shaped_saved_model(tmp_path / "sm", [None, None]), fix_shapes=shapes_from(four_token_floats)
    )
    assert saved.signature.describe() == "x: float32[4]"


def test_a_preprocess_declares_dimensions_of_any_size_that_the_wire_then_carries(mlp_path: Path) -> None:
    from consumer.preprocess import raw_signature
    from tests.preprocessors import first_four_tokens

    (spec,) = raw_signature(load_model(mlp_path).signature, first_four_tokens).inputs
    assert (spec.name, spec.dtype, spec.shape, spec.variable) == ("features", "int32", (None,), True)


@pytest.mark.parametrize("shape", [(None,), (None, 2), (2, None), (None, None)])
def test_each_example_of_any_size_reaches_the_preprocess_function_in_its_own_shape(shape: tuple[Any, ...]) -> None:
    """Both ways a batch is taken apart: as a ragged batch (only the first dimension varies) and
    example by example (another does), beside an input of a fixed shape."""
    from consumer.codec import pack_input
    from consumer.ragged import feed, map_examples
    from consumer.signature import Signature, TensorSpec
    from consumer.validate import BatchDecoder

    specs = (TensorSpec("a", "float32", shape), TensorSpec("b", "int32", (2,)))
    rng = np.random.default_rng(1)
    sizes = [(3, 2), (0, 2), (1, 2), (5, 2)] if shape[-1] == 2 else [(2, 3), (2, 0), (2, 1), (2, 4)]
    if shape == (None,):
        sizes = [(n,) for n, _ in sizes]
    examples = [
        {"a": rng.normal(size=size).astype("float32"), "b": np.array([i, 7], "int32")} for i, size in enumerate(sizes)
    ]
    batch = BatchDecoder(Signature(specs, ("y",), True), Limits()).decode([pack_input(e, id=0) for e in examples])
    assert batch.rows == [0, 1, 2, 3]

    @tf.function(input_signature=[{"a": tf.TensorSpec(shape, tf.float32), "b": tf.TensorSpec([2], tf.int32)}])
    def describe(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        a = example["a"]
        size = tf.cast(tf.concat([tf.shape(a), tf.zeros([2 - tf.rank(a)], tf.int32)], 0), tf.float32)
        return {"a": tf.concat([[tf.reduce_sum(a)], size, [0.0]], 0), "b": example["b"] * 2}

    out = {"a": tf.TensorSpec([4], tf.float32), "b": tf.TensorSpec([2], tf.int32)}
    mapped = tf.function(lambda raw: map_examples(describe, raw, specs, out, None))(feed(batch.inputs, specs))
    for i, example in enumerate(examples):
        a = example["a"]
        expected = [a.sum(), *a.shape, *([0.0] * (2 - a.ndim)), 0.0]
        np.testing.assert_allclose(mapped["a"][i].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(mapped["b"][i].numpy(), example["b"] * 2)


def _named(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Two named inputs, one normalised by its own values, the other chosen per example (a cond)."""
    a = tf.cast(example["a"], tf.float32)
    b = tf.cond(example["b"][0] > 0, lambda: example["b"] * 2.0, lambda: -example["b"])
    return {"a": (a - tf.reduce_mean(a)) / (tf.math.reduce_std(a) + 1.0), "b": b}


def _cut_at_first_zero(x: tf.Tensor) -> tf.Tensor:
    """A shape that depends on the values: TensorFlow cannot vectorize it."""
    n = tf.reduce_sum(tf.cast(tf.math.cumprod(tf.cast(x != 0, tf.int32)), tf.int32))
    return tf.pad(x[:n], [[0, 4 - n]])


def test_a_preprocess_tensorflow_vectorizes_runs_over_the_batch_as_it_runs_example_by_example() -> None:
    """``vectorizes`` asks TensorFlow's vectorizer for every op converted, nothing left to a loop;
    where it says so, ``map_batch`` gives what ``tf.map_fn`` gives example by example, exactly. It
    says not for decoding bytes, Python (``tf.py_function``) and value-dependent shapes, and asks
    quietly: TensorFlow logs each op it cannot convert, whole, as an error. A batch of no rows
    does not call the function (vectorized, an assertion failed on it, and the pipeline hung)."""
    import logging

    from consumer.preprocess import map_batch, vectorizes
    from consumer.signature import Signature, TensorSpec
    from tests import preprocessors

    def one(name: str, dtype: str, shape: tuple[int, ...]) -> Signature:
        return Signature((TensorSpec(name, dtype, shape),), ("y",), False)

    named = Signature((TensorSpec("a", "uint8", (3,)), TensorSpec("b", "float32", (2,))), ("y",), True)
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        assert vectorizes(preprocessors.scale_pixels_below_200, one("x", "uint8", (4,)))
        assert vectorizes(_named, named)
        assert not vectorizes(preprocessors.decode_floats, one("x", "string", ()))
        assert not vectorizes(preprocessors.abort_on_poison, one("x", "float32", (4,)))
        assert not vectorizes(_cut_at_first_zero, one("x", "float32", (4,)))
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert logged == [] and not logging.getLogger("tensorflow").disabled

    rng = np.random.default_rng(8)
    pixels = {"x": tf.constant(rng.integers(0, 200, (37, 4)), tf.uint8)}
    out = {"x": tf.TensorSpec([4], tf.float32)}
    batched = tf.function(lambda raw: map_batch(preprocessors.scale_pixels_below_200, raw, out, "x"))(pixels)
    each = tf.map_fn(preprocessors.scale_pixels_below_200, pixels["x"], fn_output_signature=out["x"])
    np.testing.assert_array_equal(batched["x"].numpy(), each.numpy())
    none = {"x": tf.zeros([0, 4], tf.uint8)}  # the pipeline's probes: vectorized, its assertion failed on them
    assert tf.function(lambda raw: map_batch(preprocessors.scale_pixels_below_200, raw, out, "x"))(none)["x"].shape == (
        0,
        4,
    )

    inputs = {
        "a": tf.constant(rng.integers(0, 256, (37, 3)), tf.uint8),
        "b": tf.constant(rng.normal(size=(37, 2)), tf.float32),
    }
    out = {"a": tf.TensorSpec([3], tf.float32), "b": tf.TensorSpec([2], tf.float32)}
    batched = tf.function(lambda raw: map_batch(_named, raw, out, None))(inputs)
    each = tf.map_fn(_named, inputs, fn_output_signature=out)
    for name in out:
        np.testing.assert_allclose(batched[name].numpy(), each[name].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["decode_floats", "scale_pixels_below_200"])
@pytest.mark.parametrize("bad", [{130}, {0, 3, 130, 131, 255}])
def test_a_batch_the_preprocess_function_fails_is_halved_until_each_input_it_fails_is_found(
    mlp_path: Path, name: str, bad: set[int]
) -> None:
    """Before 2026-12-05 each input of such a batch was run alone: 256 runs into TensorFlow for one
    corrupt input among 256, for every batch it was in. Now halves are run, a failing half halved
    again, and a half known to fail (the other passed) halved without a run of it whole: one failing
    input here takes 14 runs and the batch's last (count: ``_fed``, called once a run). The failing
    inputs are dead letters in input order, the others predicted together, as the function makes
    them one by one; for one TensorFlow vectorizes, and one it does not."""
    from consumer.check import SOURCE, Sample
    from consumer.codec import pack_input
    from consumer.errors import PreprocessError
    from tests import preprocessors

    preprocess = getattr(preprocessors, name)
    pipeline = Pipeline(Predictor(load_model(mlp_path), [1, 256]), Limits(), depth=2, preprocess=preprocess)
    assert pipeline.vectorized is (name == "scale_pixels_below_200")
    rng = np.random.default_rng(9)
    if name == "decode_floats":
        rows = rng.normal(size=(256, 4)).astype("float32")
        sent = [row.tobytes()[: 3 if i in bad else 16] for i, row in enumerate(rows)]
    else:
        rows = rng.integers(0, 200, (256, 4)).astype("uint8")
        rows[sorted(bad), 1] = 222
        sent = list(rows)
    samples = [Sample(i, pack_input(value, id=i), str(i)) for i, value in enumerate(sent)]
    runs = 0
    fed = pipeline._fed

    def counted(batch: Any) -> Any:
        nonlocal runs
        runs += 1
        return fed(batch)

    pipeline._fed = counted  # type: ignore[method-assign]
    pipeline.put((samples, [(SOURCE, i) for i in range(256)], [0] * 256), None)  # type: ignore[arg-type]
    assert pipeline.close(1.0)
    ((batch, inputs),) = list(pipeline.batches())
    assert [message.number for message, _ in batch.dead] == sorted(bad)
    assert all(isinstance(error, PreprocessError) for _, error in batch.dead)
    kept = [i for i in range(256) if i not in bad]
    assert [message.number for message in batch.messages] == kept
    expected = rows[kept].astype("float32") / (255.0 if name != "decode_floats" else 1.0)
    np.testing.assert_allclose(inputs["features"].numpy()[: len(kept)], expected, rtol=1e-6)
    assert runs == (15 if len(bad) == 1 else 39)  # each failing half run whole: 18, 50; one by one: 257


@pytest.mark.parametrize("bad", [{700}, {0, 5, 700, 701, 1023}, set(range(0, 1024, 97))])
def test_a_batch_the_model_fails_is_halved_until_each_input_it_fails_on_is_found(tmp_path: Path, bad: set[int]) -> None:
    """Before 2026-12-05 each input of such a batch was run alone: 1,024 runs of the model for one
    input it fails on (an unknown token id in an embedding, a NaN under a numerics check). Now
    halves run, a failing half is halved again, and a half known to fail (the other passed) without
    a run of it whole: one such input takes 14 runs here (11 to 20 by where it lies), eleven spread
    out 142. Parts come in row order with the outputs of their rows, and each failing row alone
    with its error."""
    from consumer.apart import run_apart

    predictor = Predictor(load_model(models.strict_saved_model(tmp_path / "strict")), default_batch_sizes(1024))
    predictor.warm_up()
    x = np.random.default_rng(2).normal(size=(1024, 4)).astype("float32")
    x[sorted(bad), 3] = np.nan  # the model's numerics check raises on them
    calls = 0
    run = predictor.run

    def counted(inputs: Any, size: int) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        return run(inputs, size)

    parts = list(run_apart(counted, predictor.bucket_for, {"x": tf.constant(x)}, list(range(1024))))
    failed = [rows for rows, result in parts if isinstance(result, Exception)]
    assert failed == [[row] for row in sorted(bad)]
    assert all(
        isinstance(result, tf.errors.InvalidArgumentError) for _, result in parts if isinstance(result, Exception)
    )
    predicted = [(rows, result) for rows, result in parts if not isinstance(result, Exception)]
    assert [row for rows, _ in predicted for row in rows] == [i for i in range(1024) if i not in bad]
    for rows, result in predicted:
        np.testing.assert_array_equal(result["y"], x[rows] * 2.0)
    assert calls == {1: 14, 5: 46, 11: 142}[len(bad)]  # every failing part run whole: 21, 63, 173; alone: 1,024
    assert list(run_apart(counted, predictor.bucket_for, {"x": tf.constant(x)}, [])) == []


def test_a_model_of_several_strings_an_example_is_refused_at_load_unless_a_preprocess_makes_them(
    tmp_path: Path,
) -> None:
    """It failed at warm-up with a TypeError about a dict; a message carries one string per input."""
    path = models.texts(tmp_path / "texts")
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(info.value).startswith(
        "model input 'texts' takes strings of shape [3]; a message carries one string per input (bin): serve a "
        "model that takes one an example (shape [] or [1]), or give --preprocess a function that makes them"
    )
    assert load_model(path, fix_shapes=lambda signature: {}).signature.describe() == "texts: string[3]"
