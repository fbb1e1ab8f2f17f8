"""The models a benchmark runs and the inputs it feeds them.

(a) ``mlp``: 64 float32 features → 256 → 256 → 10, I/O-bound. (b) ``mobilenet``: MobileNetV2 at
96x96x3 with random weights (no download), compute-bound; its images travel as uint8 and the
consumer casts them. (c) any model file, with inputs generated from its signature, or, given the
consumer's ``--preprocess`` function, from what that function declares it takes (a dimension of
any size: random lengths from 1 to ``ANY_LENGTH_MAX``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consumer.signature import DEFAULT_SIGNATURE, STRING, Signature, TensorSpec
from producer_tools.bench import examples

if TYPE_CHECKING:
    from consumer.model import LoadedModel

#: examples by input name, as producers send them: one array a row, or, for an input of any length,
#: an object array of one array a row
Inputs = dict[str, np.ndarray]
#: examples as the model takes them, by input name, a row each (``Workload.model_inputs``)
ModelInputs = dict[str, np.ndarray]
#: ``--custom-objects`` modules and ``--trust-model-code``, as ``user_code.prepare_keras`` takes them
ModelCode = tuple[tuple[str, ...], bool]
#: a generated input's length in each dimension of any size: from 1 to this many
ANY_LENGTH_MAX = 32


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
    #: the consumer's ``--preprocess`` function, which the bench applies where the consumer does
    #: (a ``tf.function``), and what messages then carry (``preprocess.raw_signature``)
    preprocess: Any = field(default=None, compare=False, repr=False)
    wire: Signature | None = field(default=None, compare=False, repr=False)
    #: ``bench --inputs FILE``: the examples it sends instead of random ones (``examples.read_examples``)
    given: Inputs | None = field(default=None, compare=False, repr=False)
    given_from: Path | None = None

    @property
    def signature(self) -> Signature:
        return self.model.signature

    @property
    def sent(self) -> Signature:
        """What messages carry: the model's inputs, or what the preprocess function takes."""
        return self.wire or self.model.signature

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's inputs fix, if any."""
        return self.model.fixed_batch

    def inputs(self, count: int, seed: int = 0) -> Inputs:
        """``count`` examples per input, in the dtype producers send: random, or the file's, cycled."""
        if self.given is not None:
            rows = np.arange(count) % _count(self.given)
            return {name: column[rows] for name, column in self.given.items()}
        rng = np.random.default_rng(seed)
        return {spec.name: _rows(rng, count, spec, self.wire_dtypes[spec.name]) for spec in self.sent.inputs}

    def wire_example(self, inputs: Inputs, row: int) -> Any:
        """Row ``row`` as ``pack_input`` takes it: one array, or a dict for a named-input model."""
        if self.sent.named_inputs:
            return {name: value[row] for name, value in inputs.items()}
        return next(iter(inputs.values()))[row]

    def model_inputs(self, inputs: Inputs) -> ModelInputs:
        """``inputs`` as the model takes them, a row each (strings as bytes in object arrays): cast,
        or made by the preprocess function, example by example (what the consumer's pipeline gives)."""
        if self.preprocess is None:
            return {s.name: _typed(inputs[s.name], s) for s in self.signature.inputs}
        rows = [self.prepare({name: values[i] for name, values in inputs.items()}) for i in range(_count(inputs))]
        return {s.name: np.stack([row[s.name] for row in rows]) for s in self.signature.inputs}

    def prepare(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        """One example as sent (no batch axis) → the preprocess function's output for it, by model input."""
        import tensorflow as tf

        from consumer.model import tf_dtype

        given = {spec.name: tf.constant(example[spec.name], tf_dtype(spec)) for spec in self.sent.inputs}
        only = None if self.sent.named_inputs else self.sent.inputs[0].name
        try:
            returned = self.preprocess(given[only] if only else given)
        except Exception as exc:
            raise _refused_inputs(self.sent, exc, self.given_from) from None
        made = {only: returned} if only else returned
        return {spec.name: np.asarray(made[spec.name]) for spec in self.signature.inputs}


def _count(inputs: Inputs) -> int:
    return len(next(iter(inputs.values())))


def _typed(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A column as the model takes it: cast, or, given one value a row (``bench --inputs``), stacked."""
    if values.dtype == object and spec.dtype != STRING:
        return np.stack([np.asarray(value, dtype=spec.numpy_dtype) for value in values])
    return np.asarray(values, dtype=spec.numpy_dtype).reshape(len(values), *spec.fixed_shape)


def _rows(rng: np.random.Generator, count: int, spec: TensorSpec, dtype: str) -> np.ndarray:
    """``count`` random examples of ``spec``: one array, or for a dimension of any size, an object
    array of examples of random lengths."""
    if not spec.variable:
        return _random(rng, (count, *spec.fixed_shape), dtype)
    rows = np.empty(count, dtype=object)
    for i in range(count):
        shape = tuple(int(rng.integers(1, ANY_LENGTH_MAX + 1)) if d is None else d for d in spec.shape)
        rows[i] = _random(rng, shape, dtype)
    return rows


def _refused_inputs(sent: Signature, exc: Exception, given_from: Path | None) -> Exception:
    """The preprocess function failed on an input the bench sends: made up, or from ``--inputs``."""
    from consumer.errors import ConfigError
    from consumer.logs import last_line

    why = f"{type(exc).__name__}: {last_line(str(exc)) or repr(exc)}"
    if given_from is not None:
        return ConfigError(f"the preprocess function failed on an example of --inputs {str(given_from)!r} ({why})")
    return ConfigError(
        f"the preprocess function failed on an input the bench made ({why}): the bench sends random values of "
        f"what it takes ({sent.describe()}; b'x' for a string, lengths 1 to {ANY_LENGTH_MAX} where any size is "
        "declared); give it examples it takes with --inputs FILE"
    )


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
    name_or_path: str,
    workdir: Path,
    serving_signature: str = DEFAULT_SIGNATURE,
    model_code: ModelCode = ((), False),
    preprocess: str | None = None,
    given_from: Path | None = None,
) -> Workload:
    """The workload by name, or a model file's; a model that fixes its batch size is benched at that
    size. ``preprocess``: the consumer's ``--preprocess`` (``module:function``), applied as it does.
    ``given_from``: a file of examples to send (``bench --inputs``), else random ones."""
    import tensorflow as tf

    from consumer.errors import ConfigError, PreprocessMismatch
    from consumer.model import load_model
    from consumer.preprocess import check_gives, load_preprocess, raw_signature, shapes_from
    from consumer.user_code import prepare_keras

    prepare_keras(*model_code)
    function = load_preprocess(preprocess)

    if name_or_path in _BUILT_IN:
        save, batch, messages, wire = _BUILT_IN[name_or_path]
        path = save(workdir / f"bench_{name_or_path}.keras")
    else:
        path, batch, messages, wire = Path(name_or_path), 256, 20_000, ""
    try:
        fix = shapes_from(function) if function is not None else _fixed_shapes_only
        model = load_model(path, version="bench", signature=serving_signature, fix_shapes=fix)
        sent = raw_signature(model.signature, function)
        if function is not None:
            check_gives(function, sent, model.signature)
    except PreprocessMismatch as exc:
        raise ConfigError(f"invalid setting preprocess={preprocess!r}: {exc}") from None
    if function is None:
        _one_string_each(model.signature)
    dtypes = {spec.name: (wire if function is None else "") or spec.dtype for spec in sent.inputs}
    batch = model.fixed_batch or batch
    graph = tf.function(function) if function is not None else None
    given = None
    if given_from is not None:
        given = examples.read_examples(given_from, sent)
        examples.check_examples(given, sent, given_from)
    workload = Workload(
        path.stem, path, model, dtypes, batch, messages, serving_signature, model_code, graph, sent, given, given_from
    )
    if graph is not None:  # the inputs the bench sends are ones the function takes: said now, not mid-run
        workload.model_inputs(workload.inputs(2 if given is None else _count(given)))
    return workload


def _fixed_shapes_only(signature: Signature) -> dict[str, tuple[int, ...]]:
    """A model input of any length, without a preprocess function: the consumer would refuse it too."""
    from consumer.errors import ModelError

    spec = next(spec for spec in signature.inputs if spec.variable)
    raise ModelError(
        f"model input {spec.name!r} has a dimension of any size {list(spec.shape)}; the bench makes inputs "
        "of the model's own shapes: give it the preprocess function that serves the model "
        "(--consumer-args '--preprocess module:function'), or bench the model exported with fixed input shapes"
    )


def _one_string_each(signature: Signature) -> None:
    """A model that takes several strings an example is served behind a preprocess function; without
    one, said here, before the run, not by the consumer it starts (``load_model`` refuses it only
    where no preprocess function is given, and the bench gives it ``_fixed_shapes_only``)."""
    from consumer.errors import ModelError
    from consumer.model import several_strings

    spec = several_strings(signature.inputs)
    if spec is not None:
        raise ModelError(
            f"model input {spec.name!r} takes strings of shape {list(spec.shape)}; a message carries one string "
            "per input: give the bench the preprocess function that serves the model (--consumer-args "
            "'--preprocess module:function'), or bench a model that takes one string an example (shape [] or [1])"
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
