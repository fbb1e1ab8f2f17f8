"""What a model takes and gives, in plain Python terms (no TensorFlow needed to read it)."""

from __future__ import annotations

from dataclasses import dataclass

STRING = "string"
#: The SavedModel signature served unless ``--signature`` names another (TF Serving's default too).
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, NumPy dtype name (or ``"string"``) and example shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> str | type:
        """What NumPy holds it as: its dtype, or ``object`` (bytes) for a string."""
        return object if self.dtype == STRING else self.dtype

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class Signature:
    """A model's inputs and output names. ``named_inputs`` is False for a single-tensor model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    named_inputs: bool

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    def describe(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)
