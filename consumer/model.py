"""Load a Keras ``.keras`` file or a SavedModel directory into one calling convention.

Either way the result is a :class:`LoadedModel`: a signature in plain terms and a
``call(dict of batch tensors) -> dict of batch tensors`` that is safe to trace.
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from consumer.errors import ModelError, PreprocessMismatch
from consumer.signature import DEFAULT_SIGNATURE, STRING, Signature, TensorSpec
from consumer.versions import KERAS_SUFFIXES, SAVED_MODEL_FILES, is_saved_model

#: how Keras says a model needs a class or function it was not given (``--custom-objects``)
_MISSING_CODE = re.compile(r"Could not locate (class|function) '([^']+)'")

#: given a model's signature, the fixed example shape to serve each input of a dimension of any size at
ShapeFixer = Callable[[Signature], Mapping[str, tuple[int, ...]]]

TensorDict = dict[str, tf.Tensor]


@dataclass
class LoadedModel:
    """A model ready to be traced: ``call`` takes and returns dicts keyed by name."""

    name: str
    version: str
    signature: Signature
    call: Callable[[Mapping[str, tf.Tensor]], TensorDict]
    keepalive: Any = None  # the object owning the variables; dropped on unload
    #: the only batch size the model runs, if its inputs fix one (a ``[1, 4]`` signature, a stateful RNN)
    fixed_batch: int | None = None
    #: the batch size its inputs declare, whether or not it runs others (a Keras model built by
    #: calling it on one sample declares 1, and runs any)
    declared_batch: int | None = None


def load_model(
    path: str | Path,
    name: str | None = None,
    version: str | None = None,
    signature: str = DEFAULT_SIGNATURE,
    fix_shapes: ShapeFixer | None = None,
) -> LoadedModel:
    """Load ``path``; ``name`` defaults to its stem and ``version`` to a content hash; a SavedModel
    serves its ``signature``. An input with a dimension of any size is served at the shape
    ``fix_shapes`` gives it (``pipeline.shapes_from``), or refused without."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model path {str(path)!r} does not exist; pass a .keras file or a SavedModel directory")
    if path.is_dir() and not is_saved_model(path):
        raise ModelError(
            f"model path {str(path)!r} is a directory without a saved_model.pb: pass a SavedModel directory, "
            "a .keras file, or a versioned directory (BASE/<number>/ holding either)"
        )
    name = name or path.stem
    version = version or content_hash(path)
    try:
        if path.is_dir():
            return _load_saved_model(path, name, version, signature, fix_shapes)
        if path.suffix in KERAS_SUFFIXES:
            if signature != DEFAULT_SIGNATURE:
                raise ModelError(
                    f"--signature {signature!r} applies to SavedModels; {str(path)!r} is a Keras file: drop it"
                )
            _refuse_unreadable(path)
            return _load_keras(path, name, version, fix_shapes)
    except (ModelError, PreprocessMismatch):
        raise
    except Exception as exc:
        raise ModelError(f"cannot load model {str(path)!r}: {_load_problem(exc)}") from exc
    raise ModelError(_not_a_model(path))


def _refuse_unreadable(path: Path) -> None:
    """A Keras file whose bytes are not of the kind its suffix names (a zip archive for .keras, HDF5
    for .h5): say so, not what Keras' reader stumbled on."""
    archive = zipfile.is_zipfile(path)
    if path.suffix == ".keras":
        if archive:
            return
        kind = "a .keras file (a zip archive)"
    else:
        if h5py.is_hdf5(path):
            return
        kind = f"an HDF5 file, as its suffix {path.suffix} says"
    if archive:
        raise ModelError(f"{str(path)!r} is not {kind}: it is a .keras archive; name it {path.stem}.keras")
    raise ModelError(
        f"{str(path)!r} is not {kind}: it is damaged, cut short, or something else renamed; save the model "
        "again with model.save('name.keras')"
    )


def _not_a_model(path: Path) -> str:
    """Why a file is not a model this consumer loads; for a SavedModel's own file, its directory."""
    if path.name in SAVED_MODEL_FILES:
        return f"model path {str(path)!r} is a file of a SavedModel: pass its directory, {str(path.parent)!r}"
    return (
        f"model path {str(path)!r} is neither a Keras file (.keras, or a whole model saved as .h5) nor a "
        "SavedModel directory"
    )


def _load_problem(exc: Exception) -> str:
    """Why loading failed, and for the two ways the model's own Python stops Keras, what to pass; for
    a file of weights alone, how to make a model of them."""
    text = str(exc)
    missing = _MISSING_CODE.search(text)
    if missing:
        kind, what = missing.groups()
        return (
            f"it was saved with a custom {kind}, {what}, which Keras cannot find: name the module that defines "
            "it with --custom-objects MODULE"
        )
    if "Lambda" in text and "safe_mode=False" in text:
        return (
            "it holds Python code in a Lambda layer, which Keras loads only from a file you trust: if you trust "
            "this one, run with --trust-model-code"
        )
    if "No model config found" in text:
        return (
            "it holds weights only (saved with save_weights), not a model: build the model in Python, load these "
            "weights into it, and save it whole with model.save('name.keras')"
        )
    return f"{type(exc).__name__}: {exc}"


def content_hash(path: Path) -> str:
    """A short, stable digest of a file or of every file under a directory."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:12]


def _spec(name: str, dtype: Any, shape: Any) -> TensorSpec:
    rank = tf.TensorShape(shape).rank
    if rank in (None, 0):
        raise ModelError(
            f"model input {name!r} has {'no' if rank == 0 else 'an unknown'} batch "
            "dimension; the consumer feeds batches of examples (export the model with an input shape "
            "like [None, ...])"
        )
    return TensorSpec(name, dtype_name(dtype), tuple(shape)[1:])


def _served_specs(specs: tuple[TensorSpec, ...], named: bool, fix_shapes: ShapeFixer | None) -> tuple[TensorSpec, ...]:
    """The example shapes the model is compiled at: its own, or, for an input with a dimension of
    any size, the fixed shape ``fix_shapes`` gives it (what the preprocess function returns)."""
    if fix_shapes is None:
        _one_string_each(specs)
    variable = [spec for spec in specs if spec.variable]
    if not variable:
        return specs
    if fix_shapes is None:
        spec = variable[0]
        raise ModelError(
            f"model input {spec.name!r} has a dimension of any size {list(spec.shape)}; precompiled batch "
            "functions need fixed example shapes: export the model with fixed input shapes, or give "
            "--preprocess a function that returns them (pads or cuts to a length)"
        )
    shapes = fix_shapes(Signature(inputs=specs, outputs=(), named_inputs=named))
    return tuple(replace(spec, shape=shapes[spec.name]) if spec.variable else spec for spec in specs)


def _one_string_each(specs: tuple[TensorSpec, ...]) -> None:
    """A message carries one string per string input (``bin``): the model must take one an example,
    of shape ``[]`` or ``[1]`` (``[1, 1]``...); more come only through a preprocess function."""
    spec = several_strings(specs)
    if spec is not None:
        raise ModelError(
            f"model input {spec.name!r} takes strings of shape {list(spec.shape)}; a message carries one "
            "string per input (bin): serve a model that takes one an example (shape [] or [1]), or give "
            "--preprocess a function that makes them from one"
        )


def several_strings(specs: tuple[TensorSpec, ...]) -> TensorSpec | None:
    """The first string input that takes more than one string an example (or any number), if any."""
    return next(
        (s for s in specs if s.dtype == STRING and (s.variable or math.prod(s.fixed_shape) != 1)),
        None,
    )


def dtype_name(dtype: Any) -> str:
    """A TensorFlow dtype as the signature names it: ``STRING``, or the NumPy name (``float32``)."""
    tf_dtype = tf.as_dtype(dtype)
    return STRING if tf_dtype == tf.string else np.dtype(tf_dtype.as_numpy_dtype).name


def tf_dtype(spec: TensorSpec) -> tf.DType:
    """The TensorFlow dtype of a spec: ``dtype_name``'s inverse."""
    return tf.string if spec.dtype == STRING else tf.as_dtype(spec.dtype)


def _fixed_batch(name: str, shapes: Mapping[str, Any]) -> int | None:
    """The batch size the inputs fix, if any (one size for all inputs that fix one)."""
    fixed = {input_name: shape[0] for input_name, shape in shapes.items() if shape[0] is not None}
    if len(set(fixed.values())) > 1:
        raise ModelError(f"model {name!r} fixes different batch sizes for its inputs: {fixed}; it cannot be served")
    return next(iter(fixed.values()), None)


def keras_arranger(model: Any) -> Callable[[Mapping[str, Any]], Any]:
    """Inputs by name → what the Keras model's call takes: its dict, its list, or its one tensor."""
    struct = getattr(model, "_inputs_struct", None)
    names = [t.name for t in model.inputs]

    def arrange(inputs: Mapping[str, Any]) -> Any:
        if isinstance(struct, dict):
            return {k: inputs[k] for k in struct}
        return [inputs[k] for k in names] if len(names) > 1 else inputs[names[0]]

    return arrange


def _load_keras(path: Path, name: str, version: str, fix_shapes: ShapeFixer | None) -> LoadedModel:
    model = keras.saving.load_model(path, compile=False)
    struct = getattr(model, "_inputs_struct", None)
    specs = tuple(_spec(t.name, t.dtype, t.shape) for t in model.inputs)
    named = isinstance(struct, dict) or len(specs) > 1
    specs = _served_specs(specs, named, fix_shapes)
    arrange = keras_arranger(model)

    declared = _fixed_batch(name, {t.name: tuple(t.shape) for t in model.inputs})
    output_names, fixed = _keras_outputs_and_batch(model, specs, declared)

    def call(inputs: Mapping[str, tf.Tensor]) -> TensorDict:
        named_outputs = _outputs_by_name(model, model(arrange(inputs), training=False))
        return {k: named_outputs[k] for k in output_names}

    signature = Signature(inputs=specs, outputs=tuple(output_names), named_inputs=named)
    return LoadedModel(name, version, signature, call, keepalive=model, fixed_batch=fixed, declared_batch=declared)


def _keras_outputs_and_batch(
    model: Any, specs: tuple[TensorSpec, ...], declared: int | None
) -> tuple[list[str], int | None]:
    """The output names, from a call on a sample batch of another size than the one the inputs
    declare, if any; and the batch the model fixes: the declared one only if that call fails (a
    stateful RNN), not where the declaration is incidental (a model built by calling it on one
    sample declares 1, and runs any size)."""
    try:
        return _keras_output_names(model, specs, 2 if declared == 1 else 1), None
    except Exception:
        if declared is None:
            raise
        return _keras_output_names(model, specs, declared), declared


def _keras_output_names(model: Any, specs: tuple[TensorSpec, ...], rows: int) -> list[str]:
    sample = {s.name: tf.zeros((rows, *s.shape), dtype=tf_dtype(s)) for s in specs}
    struct = getattr(model, "_inputs_struct", None)
    args: Any = sample if isinstance(struct, dict) else [sample[s.name] for s in specs]
    out = model(args if len(specs) > 1 or isinstance(struct, dict) else args[0], training=False)
    names = list(_outputs_by_name(model, out))
    return sorted(names) if isinstance(out, Mapping) else names


def _outputs_by_name(model: Any, out: Any) -> TensorDict:
    """A Keras model's outputs by name: a dict's keys; a list's, the names the model declares (else
    ``output_0``, ``output_1``...); nested ones joined with ``.`` (``head.score``)."""
    if isinstance(out, Mapping):
        return _flat(out, "")
    declared = list(getattr(model, "output_names", None) or [])
    if isinstance(out, list | tuple):
        names = declared if len(declared) == len(out) else [f"output_{i}" for i in range(len(out))]
        return {k: v for name, item in zip(names, out, strict=True) for k, v in _flat(item, name).items()}
    return {(declared[:1] or ["output_0"])[0]: out}


@tf.autograph.experimental.do_not_convert  # plain Python over the structure; AutoGraph failed on it, with a warning
def _flat(out: Any, prefix: str) -> TensorDict:
    """``out``'s tensors by their path in it, joined with ``.``, under ``prefix``."""
    if isinstance(out, Mapping):
        items: Any = out.items()
    elif isinstance(out, list | tuple):
        items = enumerate(out)
    else:
        return {prefix: out}
    flat: TensorDict = {}
    for key, value in items:
        flat |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def _load_saved_model(
    path: Path, name: str, version: str, signature: str, fix_shapes: ShapeFixer | None
) -> LoadedModel:
    loaded = tf.saved_model.load(str(path))
    signatures = getattr(loaded, "signatures", {})
    if signature not in signatures:
        have = ", ".join(repr(k) for k in sorted(signatures)) or "none"
        raise ModelError(
            f"SavedModel {str(path)!r} has no signature {signature!r} (it has: {have}); "
            "pass the one to serve with --signature NAME"
        )
    fn = signatures[signature]
    _, kwargs = fn.structured_input_signature
    named = len(kwargs) > 1
    specs = _served_specs(tuple(_spec(k, v.dtype, v.shape) for k, v in sorted(kwargs.items())), named, fix_shapes)
    outputs = tuple(sorted(fn.structured_outputs))

    def call(inputs: Mapping[str, tf.Tensor]) -> TensorDict:
        return dict(fn(**{k: inputs[k] for k in kwargs}))

    served = Signature(inputs=specs, outputs=outputs, named_inputs=named)
    fixed = _fixed_batch(name, {k: tuple(v.shape) for k, v in kwargs.items()})  # a signature runs no other
    return LoadedModel(name, version, served, call, keepalive=loaded, fixed_batch=fixed, declared_batch=fixed)
