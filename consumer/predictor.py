"""One precompiled predict function per allowed batch size, built and run before serving.

Like TF Serving's ``allowed_batch_sizes``: a batch of n rows is padded up to the smallest
allowed size ≥ n, so the compiled functions are the only ones that ever run. Each has a
fixed input signature, so a call with any other shape fails loudly instead of retracing.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from consumer.errors import ConfigError, ModelError, PredictError
from consumer.logs import last_line
from consumer.model import LoadedModel, tf_dtype
from consumer.validate import stack


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, the midpoints between them from 8 up (12, 24, 48…),
    and ``max_batch_size`` itself: a partial batch is padded by at most a third, not up to half.
    Padding is real compute: MobileNetV2 at half load added 656 padding rows to 1,608 inputs with
    powers of two alone, 161 to 409 with the midpoints."""
    powers = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size]
    midpoints = [p + p // 2 for p in powers if p >= 8 and p + p // 2 <= max_batch_size]
    return sorted({*powers, *midpoints, max_batch_size})


def _sizes_for(model: LoadedModel, sizes: list[int]) -> list[int]:
    """``sizes``, or only the batch size the model fixes (which must then be the largest)."""
    fixed = model.fixed_batch
    if fixed is None:
        return sizes
    if sizes[-1] != fixed:
        raise ModelError(
            f"model {model.name!r} takes batches of exactly {fixed} (its inputs fix the batch dimension): "
            f"run with --max-batch-size {fixed}, or export it with None as the batch dimension"
        )
    return [fixed]


#: what running the model on a batch (or one input) may raise for what the inputs hold: that batch
#: is redone input by input, and such an input is a dead letter (``model_failure``)
MODEL_FAILURES = (tf.errors.OpError, ValueError, TypeError)


def model_failure(exc: BaseException) -> PredictError:
    """The dead letter's error for an input the model failed alone."""
    return PredictError(f"the model raised {type(exc).__name__}: {exc}")


class OutputShapeError(ValueError):
    """An output without the batch as its first dimension: its rows cannot be matched to inputs."""


class Predictor:
    """Owns the compiled functions of one model and pads batches to fit them."""

    def __init__(self, model: LoadedModel, batch_sizes: Sequence[int], jit_compile: bool = False):
        if not batch_sizes or min(batch_sizes) < 1:
            raise ConfigError("allowed_batch_sizes must be a non-empty list of positive ints")
        self.model = model
        self.batch_sizes = _sizes_for(model, sorted(set(batch_sizes)))
        self.max_batch_size = self.batch_sizes[-1]
        self._functions = {size: self._compile(size, jit_compile) for size in self.batch_sizes}
        # called directly, a concrete function skips tf.function's per-call argument binding and
        # retrace checks (half a millisecond a call on a small CPU); its fixed signature still refuses
        # any other shape or dtype
        self._concrete: dict[int, Any] = {}
        for size, fn in self._functions.items():
            with self._refused_at(size):
                self._concrete[size] = fn.get_concrete_function()
        self.warmup_seconds: dict[int, float] = {}

    @contextlib.contextmanager
    def _refused_at(self, size: int) -> Iterator[None]:
        """A model that cannot be traced or run at ``size`` is a ``ModelError`` (not retried: it is
        not transient); TensorFlow's multi-line message is cut to its last line, the error itself."""
        try:
            yield
        except OutputShapeError as exc:
            raise ModelError(f"model {self.model.name!r} cannot be served: {exc}") from None
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            # sizes are tried in order: a failure past 1 means single examples passed
            hint = "; it takes single examples: --max-batch-size 1 serves it" if size > self.batch_sizes[0] == 1 else ""
            error = last_line(str(exc))
            if not error.startswith(f"{type(exc).__name__}:"):
                error = f"{type(exc).__name__}: {error}"
            raise ModelError(f"model {self.model.name!r} cannot run a batch of {size}: {error}{hint}") from None

    def _compile(self, size: int, jit_compile: bool) -> Any:
        specs = {s.name: tf.TensorSpec((size, *s.shape), tf_dtype(s), s.name) for s in self.model.signature.inputs}
        call = self.model.call
        return tf.function(lambda inputs: call(inputs), input_signature=[specs], jit_compile=jit_compile)

    def bucket_for(self, rows: int) -> int:
        """The smallest allowed batch size that holds ``rows`` rows."""
        index = bisect.bisect_left(self.batch_sizes, rows)
        if index == len(self.batch_sizes):
            raise ValueError(f"{rows} rows exceed the largest allowed batch size {self.max_batch_size}")
        return self.batch_sizes[index]

    def warm_up(self) -> dict[int, float]:
        """Trace and run every function once; return the seconds each second call took. A model
        whose outputs do not have one row per input is refused here, before it serves."""
        for size in self.batch_sizes:
            batch = stack([], self.model.signature, size)
            with self._refused_at(size):
                self.run(batch, size)
            started = time.perf_counter()
            self.run(batch, size)
            self.warmup_seconds[size] = time.perf_counter() - started
        return self.warmup_seconds

    @property
    def trace_count(self) -> int:
        """How many times any predict function was traced (one per batch size after warm-up)."""
        return sum(fn.experimental_get_tracing_count() for fn in self._functions.values())

    def run(self, padded: Mapping[str, Any], size: int) -> dict[str, np.ndarray]:
        """Run the function for ``size`` on an already padded batch; return NumPy outputs, each with
        one row per input (``OutputShapeError`` otherwise)."""
        outputs = {name: np.asarray(value) for name, value in self._concrete[size](dict(padded)).items()}
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != size:
                raise OutputShapeError(
                    f"output {name!r} has shape {list(value.shape)} for a batch of {size}: "
                    "every output needs the batch as its first dimension, one row per input"
                )
        return outputs

    def predict(self, batch: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
        """Run ``rows`` rows of a batch padded to ``bucket_for(rows)``; drop the padding rows."""
        outputs = self.run(batch, self.bucket_for(rows))
        return {name: value[:rows] for name, value in outputs.items()}
