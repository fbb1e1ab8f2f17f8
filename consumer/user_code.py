"""The user's Python that a worker imports before it loads the model: the modules named by
``--custom-objects`` (the Keras layers, losses and functions a model was saved with), the module of
``--preprocess``, and ``--trust-model-code`` (Keras' ``safe_mode=False``, for ``Lambda`` layers).

Importing is the user's code running: a module that cannot be found or raises while imported is a
configuration error (exit 2, one line), which no restart would cure."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from consumer.errors import ConfigError
from consumer.logs import first_line


def import_module(setting: str, module_name: str) -> ModuleType:
    """Import ``module_name`` for ``setting`` (as it is shown in errors: ``preprocess='m:f'``)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not _within(module_name, exc.name):  # found, but not what it imports
            problem = f"importing {module_name!r} raised ModuleNotFoundError: {exc}"
            raise ConfigError(f"invalid setting {setting}: {problem}; install it where the workers run") from None
        raise ConfigError(
            f"invalid setting {setting}: cannot import {module_name!r} ({exc}); it must be importable in the "
            "workers: in the directory the consumer runs in, or on PYTHONPATH"
        ) from None
    except Exception as exc:  # the module's own code failed
        problem = f"importing {module_name!r} raised {type(exc).__name__}: {first_line(str(exc)) or repr(exc)}"
        raise ConfigError(f"invalid setting {setting}: {problem}; fix the module") from None


def _within(module_name: str, missing: str) -> bool:
    """Whether ``missing`` is ``module_name`` or a package it is in (``a`` or ``a.b`` for ``a.b.c``)."""
    return module_name == missing or module_name.startswith(missing + ".")


def prepare_keras(modules: Sequence[str], trust_model_code: bool) -> list[str]:
    """Import ``modules`` and give Keras the public classes and functions each defines, as
    ``load_model(custom_objects=...)`` would (a class registered with
    ``@keras.saving.register_keras_serializable`` is known once imported; one that is not, by its
    name); with ``trust_model_code``, let Keras load ``Lambda`` layers' Python code. Returns the
    names given, for the worker's log. Applies to every model this process loads (hot reload too)."""
    if not modules and not trust_model_code:
        return []
    found: dict[str, Any] = {}
    for module_name in modules:
        found |= defined_in(import_module(f"custom_objects={list(modules)!r}", module_name))
    import keras

    keras.saving.get_custom_objects().update(found)
    if trust_model_code:
        keras.config.enable_unsafe_deserialization()
    return sorted(found)


def defined_in(module: ModuleType) -> dict[str, Any]:
    """The public classes and functions ``module`` defines itself (not those it imports)."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
