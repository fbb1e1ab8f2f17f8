"""Serving a versioned model directory: the first version, and new ones without a pause.

A watcher thread polls the base directory every ``model_poll_seconds``. A new complete version is
loaded and warmed up for every allowed batch size in that thread while the old one keeps
serving; the predict thread swaps it in between two batches (``take``), so no batch is mixed
across versions. A version that fails to load, to warm up, or takes other inputs than the
served one is logged, counted and skipped until its files change; the old one keeps serving. The
old model is released after the swap.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.config import Settings
from consumer.errors import ConfigError
from consumer.model import DEFAULT_SIGNATURE, LoadedModel, ShapeFixer, load_model
from consumer.predictor import Predictor, default_batch_sizes
from consumer.versions import (
    Fingerprint,
    ModelVersion,
    VersionDirectory,
    choose,
    initial_version,
    is_versioned_base,
)


@dataclass
class Served:
    """A model and its compiled, warmed-up functions."""

    model: LoadedModel
    predictor: Predictor
    number: int | None = None  # the version directory it came from, if any

    @property
    def info(self) -> dict[str, str]:
        return {"name": self.model.name, "version": self.model.version}


def build(
    path: Path,
    name: str | None,
    version: str | None,
    sizes: list[int],
    jit_compile: bool,
    number: int | None = None,
    signature: str = DEFAULT_SIGNATURE,
    fix_shapes: ShapeFixer | None = None,
) -> Served:
    """Load, compile and warm up one model (any thread); name and version default as ``load_model``'s."""
    model = load_model(path, name, version, signature, fix_shapes)
    predictor = Predictor(model, sizes, jit_compile)
    predictor.warm_up()
    return Served(model, predictor, number)


def release_unreachable() -> None:
    """Free a swapped-out model. The heap is frozen after warm-up (``worker.freeze_heap``), which
    keeps reference cycles such as a Keras model's from ever being collected: thaw, collect, and
    freeze what is alive again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def first_model(
    path: Path,
    name: str | None,
    version: str | None,
    sizes: list[int],
    jit_compile: bool,
    signature: str = DEFAULT_SIGNATURE,
    fix_shapes: ShapeFixer | None = None,
) -> tuple[Served, VersionDirectory | None, int | None]:
    """The model to start with; for a versioned base also its directory and the pinned number."""
    if not is_versioned_base(path):
        return build(path, name, version, sizes, jit_compile, signature=signature, fix_shapes=fix_shapes), None, None
    pinned = _pinned(version)
    chosen = initial_version(path, pinned)
    number = chosen.number
    served = build(chosen.path, name or path.name, str(number), sizes, jit_compile, number, signature, fix_shapes)
    return served, VersionDirectory(path), pinned


def batch_sizes(settings: Settings) -> list[int]:
    """The batch sizes a worker compiles: ``allowed_batch_sizes``, else the defaults up to ``max_batch_size``."""
    return settings.allowed_batch_sizes or default_batch_sizes(settings.max_batch_size)


def first_served(
    settings: Settings, fix_shapes: ShapeFixer | None
) -> tuple[Served, VersionDirectory | None, int | None]:
    """``first_model`` as a worker's settings ask for it (``loading.load``, and ``python -m consumer check``)."""
    s = settings
    return first_model(s.model, s.model_name, s.model_version, batch_sizes(s), s.jit_compile, s.signature, fix_shapes)


def _pinned(version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit():
        raise ConfigError(
            f"invalid setting model_version={version!r}: with a versioned model directory it pins a version "
            "number, as in --model-version 3"
        )
    return int(version)


class Watcher:
    """Polls a versioned base directory and prepares the next version in the background."""

    def __init__(
        self,
        directory: VersionDirectory,
        pinned: int | None,
        current: Served,
        make: Callable[[ModelVersion], Served],
        poll_s: float,
        log: Any,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.directory, self.pinned, self.make, self.poll_s, self.log = directory, pinned, make, poll_s, log
        self.on_result = on_result
        self.serving = current.number
        self.signature = current.model.signature
        #: versions that failed, with their files then: one is tried again once its files change
        self.rejected: dict[int, Fingerprint | None] = {}
        self._ready: Served | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> Watcher:
        self.directory.complete()  # the versions present now count as at rest from here on
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> Served | None:
        """The next version, warmed up, if one is ready (called by the predict thread between batches)."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # a watcher must never take the worker down
                self.log.error("model directory check failed", error=f"{type(exc).__name__}: {exc}")

    def check(self) -> None:
        target = choose(self.directory.complete(), self.pinned)
        if target is None or target.number == self.serving:
            return
        files = self.directory.fingerprint_of(target.number)
        if target.number in self.rejected and self.rejected[target.number] == files:
            return
        self.log.info("loading model version", version=target.number, serving=self.serving)
        try:
            served = self.make(target)
            if served.model.signature.inputs != self.signature.inputs:
                raise ValueError(
                    f"its inputs {served.model.signature.describe()} differ from the served version's "
                    f"{self.signature.describe()}; changing the input contract needs a restart"
                )
        except Exception as exc:
            self.rejected[target.number] = files
            self.log.error("model version rejected; the served version keeps serving", version=target.number,
                           serving=self.serving, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            if self.on_result is not None:
                self.on_result("rejected")
            return
        with self._lock:
            self._ready = served
        self.serving = target.number
        if self.on_result is not None:
            self.on_result("loaded")
