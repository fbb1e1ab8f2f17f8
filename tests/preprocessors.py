"""Preprocess functions the tests pass as --preprocess tests.preprocessors:NAME."""

from __future__ import annotations

import os
import re
import resource
import time

import numpy as np
import tensorflow as tf

#: The first feature of the input that ``abort_on_poison`` aborts the worker on.
POISON = 666.0


def decode_floats(raw: tf.Tensor) -> tf.Tensor:
    """Bytes holding four little-endian float32 values → a [4] tensor (fails on other lengths)."""
    return tf.reshape(tf.io.decode_raw(raw, tf.float32), [4])


@tf.function(input_signature=[tf.TensorSpec([4], tf.uint8)])
def scale_uint8(pixels: tf.Tensor) -> tf.Tensor:
    return tf.cast(pixels, tf.float32) / 255.0


def _abort_on_poison(features: tf.Tensor) -> tf.Tensor:
    if float(features[0]) == POISON:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind
        os.abort()  # as a failed check in a TensorFlow kernel does: SIGABRT, no exception to catch
    return features


@tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
def abort_on_poison(features: tf.Tensor) -> tf.Tensor:
    """The features unchanged, but the process aborted for an input whose first feature is ``POISON``."""
    return tf.reshape(tf.py_function(_abort_on_poison, [features], tf.float32), [4])


def _hang_on_poison(features: tf.Tensor) -> tf.Tensor:
    while float(features[0]) == POISON:  # as a kernel or a preprocess that never returns
        time.sleep(1)
    return features


@tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
def hang_on_poison(features: tf.Tensor) -> tf.Tensor:
    """The features unchanged, but for an input whose first feature is ``POISON`` it never returns."""
    return tf.reshape(tf.py_function(_hang_on_poison, [features], tf.float32), [4])


def _hold_the_lock_on_poison(features: tf.Tensor) -> tf.Tensor:
    if float(features[0]) == POISON:
        # a regular expression that backtracks for ever (about 5e18 ways to split the a's, Fibonacci(91)):
        # the regex engine, like many C extensions, never lets go of the interpreter lock meanwhile, so
        # no other thread of the worker runs again (its status reports stop too)
        re.fullmatch(r"(a|aa)+b", "a" * 90)
    return features


@tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
def hold_the_lock_on_poison(features: tf.Tensor) -> tf.Tensor:
    """The features unchanged, but for an input whose first feature is ``POISON`` it holds Python's
    interpreter lock and never returns."""
    return tf.reshape(tf.py_function(_hold_the_lock_on_poison, [features], tf.float32), [4])


def passes_the_bytes_on(raw: tf.Tensor) -> tf.Tensor:
    """The raw bytes as they came: a scalar string, not the [4] float32 a model of four features takes."""
    return raw


@tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
def widens_to_float64(features: tf.Tensor) -> tf.Tensor:
    """The right shape, the wrong dtype."""
    return tf.cast(features, tf.float64)


def reads_the_value_eagerly(raw: tf.Tensor) -> tf.Tensor:
    """Python on the tensor's value: fine eagerly, impossible in the graph tf.data runs."""
    return tf.constant([float(len(raw.numpy()))] * 4)


@tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
def first_four_tokens(tokens: tf.Tensor) -> tf.Tensor:
    """Any number of tokens → the first four as float32 features, zeros after a short one's end
    (as a text model's tokenizer output is truncated and padded); a negative token fails."""
    tf.debugging.assert_non_negative(tokens, message="a token is negative")
    head = tokens[:4]
    return tf.cast(tf.pad(head, [[0, 4 - tf.shape(head)[0]]]), tf.float32)


@tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
def four_token_ids(tokens: tf.Tensor) -> tf.Tensor:
    """``first_four_tokens`` as int32 ids, of a shape known when traced (``tf.ensure_shape``): what
    a model that takes tokens of any length is compiled at."""
    return tf.ensure_shape(tf.cast(first_four_tokens(tokens), tf.int32), [4])


@tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
def four_token_floats(tokens: tf.Tensor) -> tf.Tensor:
    return tf.ensure_shape(first_four_tokens(tokens), [4])


def pad_or_cut(tokens: np.ndarray, length: int = 4) -> np.ndarray:
    """``first_four_tokens`` in NumPy, for the expected outputs."""
    return np.pad(tokens[:length], (0, length - len(tokens[:length]))).astype("float32")


@tf.function(input_signature=[{"a": tf.TensorSpec([None, 2], tf.float32), "b": tf.TensorSpec([2], tf.int32)}])
def mean_of_pairs(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A multi-input model's inputs: ``a`` any number of pairs (at least one), averaged and repeated into
    four features; ``b`` as it came."""
    mean = tf.reduce_mean(inputs["a"], axis=0)
    return {"a": tf.concat([mean, mean], 0), "b": inputs["b"]}


@tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
def declares_no_rank(features: tf.Tensor) -> tf.Tensor:
    """Any rank: the wire cannot say what to send."""
    return tf.reshape(features, [4])


@tf.function(input_signature=[tf.TensorSpec([4], tf.uint8)])
def scale_pixels_below_200(pixels: tf.Tensor) -> tf.Tensor:
    """Pixels scaled to [0, 1]; fails on a pixel of 200 or more. TensorFlow vectorizes every op of
    it, so the worker runs it over a whole batch at once (``preprocess.vectorizes``)."""
    tf.debugging.assert_less(pixels, tf.constant(200, tf.uint8), message="a pixel is 200 or more")
    return tf.cast(pixels, tf.float32) / 255.0


@tf.function(input_signature=[{"a": tf.TensorSpec([4], tf.uint8), "b": tf.TensorSpec([2], tf.int64)}])
def scale_and_clip_named(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Two named inputs made from what a multi-input model does not take as it is: pixels scaled to
    [0, 1], token ids cut to its vocabulary of 10. TensorFlow vectorizes it."""
    return {
        "a": tf.cast(example["a"], tf.float32) / 255.0,
        "b": tf.cast(tf.clip_by_value(example["b"], 0, 9), tf.int32),
    }
