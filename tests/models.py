"""Small real models for the tests, saved in every format the worker loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def mlp(path: Path, features: int = 4, classes: int = 3, seed: int = 1) -> Path:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        # named explicitly: Keras numbers default names per process (input_layer, input_layer_1, ...)
        [
            keras.Input((features,), name="features"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(classes),
        ],
        name="mlp",
    )
    model.save(path)
    return path


def multi_input(path: Path) -> Path:
    """Named inputs of two dtypes, and two named outputs."""
    keras.utils.set_random_seed(2)
    a = keras.Input((4,), name="a")
    b = keras.Input((2,), name="b", dtype="int32")
    joined = keras.layers.Concatenate()([a, keras.layers.Flatten()(keras.layers.Embedding(10, 2)(b))])
    model = keras.Model(
        {"a": a, "b": b},
        {"score": keras.layers.Dense(1, name="score")(joined), "embed": keras.layers.Dense(2, name="embed")(joined)},
    )
    model.save(path)
    return path


def saved_model(keras_path: Path, out: Path) -> Path:
    keras.saving.load_model(keras_path).export(str(out), verbose=False)
    return out


class Strict(tf.Module):
    """Doubles its input, but raises on any NaN: a model that fails on some inputs."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.debugging.check_numerics(x, "input holds NaN") * 2.0}


def strict_saved_model(out: Path) -> Path:
    return save_serving(Strict(), out)


class Slow(tf.Module):
    """Doubles its input after a fixed amount of work per call (about 0.1-0.3 s on a small CPU):
    a model far slower than the broker, so batches queue up in front of it."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        work = tf.fill([256, 256], 1.0 / 256 + 0.0 * tf.reduce_sum(x))  # depends on x: never folded away
        _, work = tf.while_loop(
            lambda i, m: i < self.iterations, lambda i, m: (i + 1, tf.matmul(m, m)), (tf.constant(0), work)
        )
        return {"y": x * 2.0 + 0.0 * tf.reduce_sum(work)}


def slow_saved_model(out: Path, iterations: int = 300) -> Path:
    return save_serving(Slow(iterations), out)


class RowPerInputOrNot(tf.Module):
    """Doubles its input, but returns an unbatched total beside it (``scalar_output``), or drops
    the rows whose first value is 1000 or more: outputs without one row per input."""

    def __init__(self, scalar_output: bool) -> None:
        super().__init__()
        self.scalar_output = scalar_output

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.scalar_output:
            return {"y": x * 2.0, "total": tf.reduce_sum(x)}
        return {"y": tf.boolean_mask(x * 2.0, x[:, 0] < 1000.0)}


def row_per_input_or_not(out: Path, scalar_output: bool) -> Path:
    return save_serving(RowPerInputOrNot(scalar_output), out)


class Widening(tf.Module):
    """Repeats its input along its last axis as many times as the batch's largest first value (at
    least once): outputs whose size, the same for every row of a batch, one input can make too large
    for the producer (the model's fault, not the input's: every row of that batch is as large)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        times = tf.maximum(1, tf.cast(tf.reduce_max(x[:, 0]), tf.int32))
        return {"y": tf.tile(x, [1, times])}


def widening_saved_model(out: Path) -> Path:
    return save_serving(Widening(), out)


class Shout(tf.Module):
    """A text in, the same text in capitals out (a string output as long as its input's text) and
    its length."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}


def shout_saved_model(out: Path) -> Path:
    return save_serving(Shout(), out)


class ComplexOutput(tf.Module):
    """Its input as complex numbers: an output the msgpack wire format carries (``complex64``) and
    JSON has no numbers for."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"z": tf.complex(x, x)}


def complex_saved_model(out: Path) -> Path:
    return save_serving(ComplexOutput(), out)


def save_serving(module: Any, out: Path) -> Path:
    """Save a ``tf.Module`` as a SavedModel whose ``serving_default`` is its ``serve``."""
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return out


LABELS = ("cat", "dog", "bird", "naïve")


class LabelsAndHalves(tf.Module):
    """A classifier head as served models often have: the label of the largest value (a string,
    ``tf.string``), its score, and the input in bfloat16 (a mixed-precision output)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        best = tf.argmax(x, axis=1)
        return {
            "label": tf.gather(tf.constant(LABELS), best),
            "top2": tf.gather(tf.constant(LABELS), tf.math.top_k(x, k=2).indices),
            "score": tf.reduce_max(x, axis=1),
            "half": tf.cast(x, tf.bfloat16),
        }


def labels_and_halves(out: Path) -> Path:
    return save_serving(LabelsAndHalves(), out)


class Bfloat16Input(tf.Module):
    """Takes bfloat16 (as models exported from TPUs often do) and doubles it, in float32."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.bfloat16, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.cast(x, tf.float32) * 2.0}


def bfloat16_input(out: Path) -> Path:
    return save_serving(Bfloat16Input(), out)


class TwoSignatures(tf.Module):
    """A SavedModel with two signatures and no ``serving_default``: ``double`` and ``triple``."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def triple(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 3.0}


def two_signatures(out: Path) -> Path:
    module = TwoSignatures()
    tf.saved_model.save(module, str(out), signatures={"double": module.double, "triple": module.triple})
    return out


def offline_predict(path: Path, inputs: np.ndarray | dict[str, np.ndarray]) -> object:
    return keras.saving.load_model(path).predict(inputs, verbose=0)


class Shaped(tf.Module):
    """Doubles its input, declared with the given shape (a fixed batch dimension, or no rank)."""

    def __init__(self, shape: list[int | None] | None) -> None:
        super().__init__()
        self.serve = tf.function(self._double, input_signature=[tf.TensorSpec(shape, tf.float32, name="x")])

    def _double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2}


def shaped_saved_model(out: Path, shape: list[int | None] | None) -> Path:
    return save_serving(Shaped(shape), out)


def token_classifier(path: Path) -> Path:
    """A text model: token ids of any length (``Input((None,))``), embedded and averaged."""
    keras.utils.set_random_seed(4)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(tokens))
    keras.Model(tokens, keras.layers.Dense(3)(pooled), name="tokens").save(path)
    return path


def fixed_batch_keras(path: Path, batch: int) -> Path:
    """A Keras model that runs only the batch its inputs declare: a stateful RNN's state has one
    row per example of that batch."""
    inputs = keras.Input((4,), batch_size=batch, name="features")
    recurrent = keras.layers.LSTM(5, stateful=True)(keras.layers.Reshape((1, 4))(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(recurrent)).save(path)
    return path


def declared_batch_keras(path: Path, batch: int, sequential: bool) -> Path:
    """A Keras model whose inputs declare a batch size it does not need: ``Input(batch_size=...)``
    before layers that take any, or a ``Sequential`` built by calling it on a sample of that size."""
    keras.utils.set_random_seed(9)
    if sequential:
        model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)], name="called")
        model(np.zeros((batch, 4), "float32"))
    else:
        inputs = keras.Input((4,), batch_size=batch, name="features")
        model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.save(path)
    return path


class SingleExampleOnly(tf.Module):
    """Declares a batch of any size but reshapes it to one row: it runs batches of 1 only."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.reshape(x, [1, 4]) * 2}


def single_example_only(out: Path) -> Path:
    return save_serving(SingleExampleOnly(), out)


class TextAndNumbers(tf.Module):
    """Named inputs, one of them a string per example: its length, and the sum of the numbers."""

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="text"), tf.TensorSpec([None, 3], tf.float32, name="x")]
    )
    def serve(self, text: tf.Tensor, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(text), "total": tf.reduce_sum(x, axis=1)}


def text_and_numbers(out: Path) -> Path:
    return save_serving(TextAndNumbers(), out)


def word_classifier(path: Path) -> Path:
    """A Keras text model as its tutorials build them: one string an example, as ``Input((1,))``."""
    keras.utils.set_random_seed(6)
    word = keras.Input((1,), dtype="string", name="word")
    ids = keras.layers.StringLookup(vocabulary=["cat", "dog", "fish"])(word)
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 3)(ids))
    keras.Model(word, keras.layers.Dense(2)(embedded), name="words").save(path)
    return path


class Texts(tf.Module):
    """Several strings an example: a message's one ``bin`` cannot carry them."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.string, name="texts")])
    def serve(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(texts)}


def texts(out: Path) -> Path:
    return save_serving(Texts(), out)


def with_custom_code(path: Path, lambda_layer: bool) -> tuple[Path, keras.Model]:
    """A model of ``tests.custom_layers``' layers and activation (served with ``--custom-objects``),
    and with ``lambda_layer`` a ``Lambda`` of a Python lambda too (``--trust-model-code``). Also
    returned: the model itself, whose predictions are what the consumer's must equal."""
    from tests import custom_layers

    keras.utils.set_random_seed(7)
    features = keras.Input((4,), name="features")
    x = custom_layers.Shift()(custom_layers.Scale(3.0)(features))
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t - 0.25)(x)
    model = keras.Model(features, keras.layers.Dense(3, activation=custom_layers.half_tanh)(x), name="custom")
    model.save(path)
    return path, model


def nested_outputs(path: Path) -> Path:
    """A Keras model whose outputs are a dict holding a dict and a list (multi-task heads)."""
    keras.utils.set_random_seed(8)
    features = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(3, name="hidden")(features)
    score = keras.layers.Dense(1, name="score")(hidden)
    outputs = {"head": {"score": score, "parts": [hidden, score]}, "hidden": hidden}
    keras.Model(features, outputs, name="nested").save(path)
    return path
