"""What a worker loads before it connects: the user's code (custom objects, the preprocess
function), the model, its compiled functions for every allowed batch size, and the watcher that
loads new versions the same way. A preprocess function that cannot give the model its inputs is a
bad ``preprocess`` setting (``ConfigError``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from consumer.config import Settings
from consumer.errors import ConfigError, PreprocessMismatch
from consumer.metrics import WorkerMetrics
from consumer.model import ShapeFixer
from consumer.preprocess import load_preprocess, shapes_from
from consumer.reload import Served, Watcher, batch_sizes, build, first_served
from consumer.stuck import slow_batch_warnings
from consumer.user_code import prepare_keras
from consumer.versions import ModelVersion


@dataclass
class Loaded:
    """The model being served, the preprocess function (None: none), and the watcher of new versions
    (None: the model is not a folder of versions, or polling is off; not started yet)."""

    served: Served
    preprocess: Any
    watcher: Watcher | None


def load(settings: Settings, log: Any, metrics: WorkerMetrics | None) -> Loaded:
    """The user's code first (a module that fails to import is a configuration error), then the
    model, compiled and warmed up."""
    s = settings
    custom, preprocess, fix_shapes = user_code(s)
    if s.custom_objects or s.trust_model_code:
        log.info("custom objects ready", modules=s.custom_objects, names=custom, trust_model_code=s.trust_model_code)
    sizes = batch_sizes(s)
    with preprocess_setting(s):
        served, versions, pinned = first_served(s, fix_shapes)
    watcher = None
    if versions is not None and s.model_poll_seconds:
        reloads = metrics.model_reload if metrics else None
        builder = version_builder(s, sizes, fix_shapes)
        watcher = Watcher(versions, pinned, served, builder, s.model_poll_seconds, log, reloads)
    log_ready(served, sizes, s, log)
    return Loaded(served, preprocess, watcher)


def user_code(settings: Settings) -> tuple[list[str], Any, ShapeFixer | None]:
    """The user's code, imported before the model: the custom objects' names, the preprocess function
    (None: none) and, for a model input of any size, the shapes it gives (None without one)."""
    custom = prepare_keras(settings.custom_objects, settings.trust_model_code)
    preprocess = load_preprocess(settings.preprocess)
    return custom, preprocess, shapes_from(preprocess) if preprocess is not None else None


def version_builder(
    settings: Settings, sizes: list[int], fix_shapes: ShapeFixer | None
) -> Callable[[ModelVersion], Served]:
    """How the watcher loads a new version: compiled for the same batch sizes, at the preprocess
    function's shapes (for a model input with a dimension of any size)."""
    s = settings
    name = s.model_name or s.model.name
    return lambda version: build(
        version.path, name, str(version.number), sizes, s.jit_compile, version.number, s.signature, fix_shapes
    )


@contextlib.contextmanager
def preprocess_setting(settings: Settings) -> Iterator[None]:
    """A preprocess function that cannot give the model its inputs is a bad ``preprocess`` setting."""
    try:
        yield
    except PreprocessMismatch as exc:
        raise ConfigError(f"invalid setting preprocess={settings.preprocess!r}: {exc}") from None


def log_ready(served: Served, sizes: list[int], settings: Settings, log: Any) -> None:
    model, warm = served.model, served.predictor.warmup_seconds
    log.info(
        "model ready",
        model=model.name,
        version=model.version,
        inputs=model.signature.describe(),
        batch_sizes=sizes,
        full_batch_ms=round(warm[max(warm)] * 1000, 2),
        tf_devices=[d.name for d in tf.config.list_logical_devices()],
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        cuda_device_order=os.environ.get("CUDA_DEVICE_ORDER"),
    )
    if model.declared_batch is not None and model.fixed_batch is None:
        log.info(
            "the model's inputs declare a batch size it does not need: served at every allowed size",
            declared_batch=model.declared_batch,
        )
    for warning in slow_batch_warnings(warm[max(warm)], settings.stuck_batch_s, settings.stuck_kill_s):
        log.warning(warning)
