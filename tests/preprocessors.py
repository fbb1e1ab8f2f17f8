"""Preprocess functions the tests pass as --preprocess tests.preprocessors:NAME."""

from __future__ import annotations

import tensorflow as tf


def decode_floats(raw: tf.Tensor) -> tf.Tensor:
    """Bytes holding four little-endian float32 values → a [4] tensor (fails on other lengths)."""
    return tf.reshape(tf.io.decode_raw(raw, tf.float32), [4])


@tf.function(input_signature=[tf.TensorSpec([4], tf.uint8)])
def scale_uint8(pixels: tf.Tensor) -> tf.Tensor:
    return tf.cast(pixels, tf.float32) / 255.0
