"""Whether this Python has one TensorFlow to run: none (the project installed without its ``cpu`` or
``gpu`` extra) or two builds over each other (``tensorflow-cpu`` and ``tensorflow`` install into the
same folder, so which one runs is whichever pip wrote last). Found without importing TensorFlow: the
supervisor never does."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

#: how to install one build, for the lines below (README: Installing)
INSTALL = "pip install '.[cpu]' from the project's folder, or '.[gpu]' on an NVIDIA GPU host (README: Installing)"
#: the builds that share the ``tensorflow`` folder
BUILDS = ("tensorflow", "tensorflow-cpu")


def missing() -> str | None:
    """One line saying TensorFlow cannot be imported here, with how to install it; None if it can."""
    if importlib.util.find_spec("tensorflow") is not None:
        return None
    return f"TensorFlow is not installed in this Python ({sys.executable}): {INSTALL}"


def builds_over_each_other() -> str | None:
    """One line naming the TensorFlow builds installed together, with how to keep one; None if not."""
    found = [name for name in BUILDS if _installed(name)]
    if len(found) < 2:
        return None
    return (
        f"{' and '.join(found)} are both installed, in one folder, so either may be the one that runs: "
        f"pip uninstall -y {' '.join(found)}, then {INSTALL}"
    )


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
