"""What a model takes and gives, in plain Python terms (no TensorFlow needed to read it)."""

from __future__ import annotations

from dataclasses import dataclass

STRING = "string"
#: The SavedModel signature served unless ``--signature`` names another (TF Serving's default too).
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, NumPy dtype name (or ``"string"``) and example shape. A
    dimension is None only in what a preprocess function takes (``input_signature``): the wire
    may then send any size there (a text's tokens); a model's own inputs are fixed."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def variable(self) -> bool:
        """Whether some dimension takes any size (None)."""
        return None in self.shape

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """The shape, for code that serves only fixed shapes (a model's inputs, the fast path)."""
        if self.variable:
            raise ValueError(f"input {self.name!r} has a dimension of any size: {list(self.shape)}")
        return self.shape  # type: ignore[return-value]  # no None in it

    def fits_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether an example of ``shape`` is one this spec takes."""
        return len(shape) == len(self.shape) and all(
            d is None or d == s for d, s in zip(self.shape, shape, strict=True)
        )

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
