"""Model versions on disk, laid out as TF Serving does: ``BASE/<integer version>/`` holding a
SavedModel or one ``.keras`` file.

A version is *complete* when its directory has an integer name, holds a model, and its files have
not changed since the previous look: write a version elsewhere (or under a non-integer name such
as ``3.partial``) and rename it into place, or copy it in place and it is picked up once the copy
has stood still for one poll. No TensorFlow here: the worker's watcher thread uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consumer.errors import ConfigError, ModelError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
#: The file that makes a directory a SavedModel: binary, or the text form TensorFlow also loads.
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass(frozen=True)
class ModelVersion:
    number: int
    path: Path  # what ``load_model`` takes: the SavedModel directory or the .keras file


def is_saved_model(path: Path) -> bool:
    """A directory holding a SavedModel's ``saved_model.pb`` (or ``.pbtxt``)."""
    return path.is_dir() and any((path / name).is_file() for name in SAVED_MODEL_FILES)


def is_versioned_base(path: Path) -> bool:
    """A directory that is not itself a SavedModel and holds at least one integer-named directory."""
    if not path.is_dir() or is_saved_model(path):
        return False
    return any(child.is_dir() and child.name.isdigit() for child in path.iterdir())


def check_polling(model: Path, poll_seconds: float | None) -> None:
    """``model_poll_seconds`` watches a versioned base directory; given a single model, it would
    quietly do nothing (a model edited in place is never reloaded), so it is refused."""
    if poll_seconds and (model.is_file() or is_saved_model(model)):
        raise ConfigError(
            f"invalid setting model_poll_seconds={poll_seconds:g}: it watches a versioned model directory "
            f"(BASE/<version>/), and {str(model)!r} is a single model; move it to BASE/1/ and pass --model BASE, "
            "or drop the setting"
        )


def model_in(directory: Path) -> Path | None:
    """The model a version directory holds, or None (empty, partial, or ambiguous)."""
    if is_saved_model(directory):
        return directory
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix in KERAS_SUFFIXES]
    return files[0] if len(files) == 1 else None


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """Names, sizes and modification times of everything under ``path``: equal twice = at rest."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


class VersionDirectory:
    """Lists the complete versions under a base directory, remembering what it saw last time."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._seen: dict[int, Fingerprint] = {}

    def candidates(self) -> list[ModelVersion]:
        """Versions holding a model, complete or not, in increasing order."""
        found = []
        for child in self.base.iterdir() if self.base.is_dir() else []:
            if child.is_dir() and child.name.isdigit() and (model := model_in(child)) is not None:
                found.append(ModelVersion(int(child.name), model))
        return sorted(found, key=lambda v: v.number)

    def complete(self) -> list[ModelVersion]:
        """Versions whose files are unchanged since the previous call (the first call trusts them)."""
        first_look = not self._seen
        stable, seen = [], {}
        for version in self.candidates():
            try:
                seen[version.number] = fingerprint(version.path)
            except OSError:  # removed or renamed while we looked
                continue
            if first_look or self._seen.get(version.number) == seen[version.number]:
                stable.append(version)
        self._seen = seen
        return stable

    def fingerprint_of(self, number: int) -> Fingerprint | None:
        """The files of version ``number`` as the last ``complete`` saw them."""
        return self._seen.get(number)


def choose(versions: list[ModelVersion], pinned: int | None) -> ModelVersion | None:
    """The version to serve: the pinned one, or the highest."""
    if pinned is not None:
        return next((v for v in versions if v.number == pinned), None)
    return versions[-1] if versions else None


def initial_version(base: Path, pinned: int | None) -> ModelVersion:
    """The version a worker starts with; ``ModelError`` with one line when there is none."""
    versions = VersionDirectory(base).candidates()
    chosen = choose(versions, pinned)
    if chosen is None:
        have = (
            ", ".join(str(v.number) for v in versions)
            or "none: each is BASE/<number>/ holding a SavedModel or one .keras file"
        )
        wanted = f"version {pinned}" if pinned is not None else "version"
        raise ModelError(f"no {wanted} under {str(base)!r} (versions holding a model: {have})")
    return chosen
