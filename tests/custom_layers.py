"""A model's own Keras code, as the tests pass it with --custom-objects tests.custom_layers: a layer
registered with Keras, one that is not, and an activation function."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tests.preprocessors import POISON  # imported, not defined here: not a custom object


@keras.saving.register_keras_serializable(package="tests")
class Scale(keras.layers.Layer):
    """Registered: Keras finds it by ``tests>Scale`` once this module is imported."""

    def __init__(self, factor: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.factor

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}


class Shift(keras.layers.Layer):
    """Not registered: Keras finds it only by name, among the custom objects it is given."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x + 1.0


def half_tanh(x: tf.Tensor) -> tf.Tensor:
    return tf.tanh(x) * 0.5


def _helper() -> float:  # private: not a custom object
    return POISON
