"""The models a benchmark runs and the inputs it feeds them.

(a) ``mlp``: 64 float32 features → 256 → 256 → 10, I/O-bound. (b) ``mobilenet``: MobileNetV2 at
96x96x3 with random weights (no download), compute-bound; its images travel as uint8 and the
consumer casts them. (c) any model file, with inputs generated from its signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consumer.signature import DEFAULT_SIGNATURE, STRING, Signature

if TYPE_CHECKING:
    from consumer.model import LoadedModel

Inputs = dict[str, np.ndarray]
#: ``--custom-objects`` modules and ``--trust-model-code``, as ``user_code.prepare_keras`` takes them
ModelCode = tuple[tuple[str, ...], bool]


@dataclass(frozen=True)
class Workload:
    name: str
    model_path: Path
    #: the model, loaded once: its signature here, and the compute limit
    model: LoadedModel = field(compare=False, repr=False)
    wire_dtypes: dict[str, str]  # what producers send; the consumer casts to the model's dtype
    batch_size: int
    messages: int
    #: the SavedModel signature served (``--signature``)
    serving_signature: str = DEFAULT_SIGNATURE
    #: the model's own Python (the consumer's ``--custom-objects`` and ``--trust-model-code``),
    #: which every process of the bench that loads it prepares first
    model_code: ModelCode = ((), False)

    @property
    def signature(self) -> Signature:
        return self.model.signature

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's inputs fix, if any."""
        return self.model.fixed_batch

    def inputs(self, count: int, seed: int = 0) -> Inputs:
        """``count`` examples per input, in the dtype producers send."""
        rng = np.random.default_rng(seed)
        return {
            spec.name: _random(rng, (count, *spec.fixed_shape), self.wire_dtypes[spec.name])
            for spec in self.signature.inputs
        }

    def wire_example(self, inputs: Inputs, row: int) -> Any:
        """Row ``row`` as ``pack_input`` takes it: one array, or a dict for a named-input model."""
        if self.signature.named_inputs:
            return {name: value[row] for name, value in inputs.items()}
        return next(iter(inputs.values()))[row]


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype == STRING:
        return np.full(shape, b"x", dtype=object)
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.normal(size=shape).astype(dtype)
    if kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dtype)


def build(
    name_or_path: str, workdir: Path, serving_signature: str = DEFAULT_SIGNATURE, model_code: ModelCode = ((), False)
) -> Workload:
    """The workload by name, or a model file's; a model that fixes its batch size is benched at that size."""
    from consumer.model import load_model
    from consumer.user_code import prepare_keras

    prepare_keras(*model_code)

    if name_or_path in _BUILT_IN:
        save, batch, messages, wire = _BUILT_IN[name_or_path]
        path = save(workdir / f"bench_{name_or_path}.keras")
    else:
        path, batch, messages, wire = Path(name_or_path), 256, 20_000, ""
    model = load_model(path, version="bench", signature=serving_signature, fix_shapes=_fixed_shapes_only)
    _one_string_each(model.signature)
    dtypes = {spec.name: wire or spec.dtype for spec in model.signature.inputs}
    batch = model.fixed_batch or batch
    return Workload(path.stem, path, model, dtypes, batch, messages, serving_signature, model_code)


def _fixed_shapes_only(signature: Signature) -> dict[str, tuple[int, ...]]:
    """A model input of any length: the consumer serves it behind a preprocess function, which the
    bench does not run; it makes inputs of the model's own shapes."""
    from consumer.errors import ModelError

    spec = next(spec for spec in signature.inputs if spec.variable)
    raise ModelError(
        f"model input {spec.name!r} has a dimension of any size {list(spec.shape)}; the bench makes "
        "inputs of the model's own shapes: bench the model exported with fixed input shapes"
    )


def _one_string_each(signature: Signature) -> None:
    """A model that takes several strings an example is served behind a preprocess function, which
    the bench does not run (``load_model`` refuses it only without one, and the bench gives it
    ``_fixed_shapes_only``): said here, before the run, not by the consumer it starts."""
    from consumer.errors import ModelError
    from consumer.model import several_strings

    spec = several_strings(signature.inputs)
    if spec is not None:
        raise ModelError(
            f"model input {spec.name!r} takes strings of shape {list(spec.shape)}; a message carries one string "
            "per input, and the bench sends inputs of the model's own shapes: bench a model that takes one string "
            "an example (shape [] or [1])"
        )


def _mlp(path: Path) -> Path:
    import keras

    if not path.exists():
        keras.utils.set_random_seed(0)
        layers = [keras.layers.Dense(256, activation="relu"), keras.layers.Dense(256, activation="relu")]
        keras.Sequential([keras.Input((64,)), *layers, keras.layers.Dense(10)], name="bench_mlp").save(path)
    return path


def _mobilenet(path: Path) -> Path:
    import keras

    if not path.exists():
        keras.utils.set_random_seed(0)
        keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10).save(path)
    return path


#: the workloads the bench builds itself (how, their batch size, messages and wire dtype); anything
#: else given to ``--workload`` is a model path. The MLP: batch 1024, the size a user would pick for a
#: model this small (it computes 1.6-1.7 times as many examples a second as at 256); 400,000
#: messages, four times what the relay's producer queues (100,000 by default): fewer fit in its
#: queue and measure a burst, not its steady rate.
_BUILT_IN: dict[str, tuple[Callable[[Path], Path], int, int, str]] = {
    "mlp": (_mlp, 1024, 400_000, "float32"),
    "mobilenet": (_mobilenet, 32, 2_000, "uint8"),
}
BUILT_IN = tuple(_BUILT_IN)
