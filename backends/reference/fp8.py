"""FP8 scaling, framework-free: the reference torchao's and Keras' float8 training are checked
against (``tests/backends/reference/test_fp8.py``), and the one description of each scaling
recipe that records and the report quote.

Two formats (OCP FP8, the ``fn`` variant without infinities): ``float8_e4m3fn`` (largest finite
448) for the forward operands, inputs and weights; ``float8_e5m2`` (largest finite 57344) for the
gradients of a layer's output. A high-precision tensor goes to FP8 as ``cast(clip(x · s))`` with a
scale ``s`` that maps its largest magnitude (amax) onto the format's largest finite value;
the product of two such operands is divided by both scales afterwards.

Where the frameworks differ is *which* amax:

* torchao (``tensorwise``, ``rowwise``): the current tensor's own, every step ("dynamic" or
  "current" scaling). ``scale = max_finite / max(amax, 1e-12)``, computed in float64 and
  rounded to float32 (torchao's ``amax_to_scale``); tensorwise takes one amax per tensor,
  rowwise one per row along the reduction dimension and rounds each scale down to a power of
  two (``round_scales_to_power_of_2``, on by default for that recipe).
* Keras (``model.quantize("float8")``, ``QuantizedFloat8DTypePolicy``) and Transformer Engine's
  ``DelayedScaling``: the largest amax of the last ``amax_history_length`` steps ("delayed"
  scaling). Keras stores the *reciprocal* ``1/s`` (the dequantisation multiplier), starts at 1
  with an all-zero history, and per training call computes the next scale from the history as it
  was *before* this step's amax enters it (``compute_float8_scale``: unchanged while the history
  holds no positive finite amax), then rolls the history one place towards the front and writes
  this step's amax at index 0 (``compute_float8_amax_history``). The history length is Keras'
  default, ``KERAS_AMAX_HISTORY_LENGTH``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# The two FP8 formats' largest finite values (OCP 8-bit floating point spec, "fn": no infinities).
FP8_MAX: dict[str, float] = {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}
FORWARD_FORMAT = "float8_e4m3fn"  # inputs and weights
GRADIENT_FORMAT = "float8_e5m2"  # gradients of a layer's output
# torchao's floor on an amax before dividing by it (torchao.float8.float8_utils.EPS).
TORCHAO_AMAX_EPS = 1e-12
# Keras' QuantizedFloat8DTypePolicy.default_amax_history_length: what model.quantize("float8")
# and a layer's quantize("float8") use.
KERAS_AMAX_HISTORY_LENGTH = 1024
# A Linear/Dense converts to FP8 only when both its dimensions are multiples of this: the FP8
# GEMM kernels (cuBLAS/CUTLASS ``_scaled_mm``) require it, and the suite applies the same rule in
# every framework so both sides convert the same layers.
FP8_DIM_MULTIPLE = 16
# CUDA compute capability from which FP8 GEMMs exist (Ada 8.9, Hopper 9.0, Blackwell): torch's
# _scaled_mm kernels, XLA's FP8 GEMM rewrite, Transformer Engine.
FP8_MIN_CUDA_CAPABILITY = (8, 9)

TorchaoRecipe = Literal["tensorwise", "rowwise"]
TORCHAO_RECIPES: tuple[str, ...] = ("tensorwise", "rowwise")


@dataclass(frozen=True)
class ScalingRecipe:
    """How one framework chooses its FP8 scales: the words the record and the report quote."""

    framework: str  # "torchao", "keras"
    name: str  # "tensorwise", "rowwise", "delayed"
    granularity: str  # "per tensor", "per row"
    amax_source: str  # "current tensor" or "history of N steps"
    power_of_2_scales: bool

    def describe(self) -> str:
        rounding = ", scales rounded down to powers of 2" if self.power_of_2_scales else ""
        return f"{self.framework} {self.name}: {self.granularity} scale from the {self.amax_source}{rounding}"


def torchao_recipe(name: str) -> ScalingRecipe:
    if name not in TORCHAO_RECIPES:
        raise ValueError(f'unknown torchao float8 recipe "{name}"; known: {", ".join(TORCHAO_RECIPES)}')
    rowwise = name == "rowwise"
    return ScalingRecipe("torchao", name, "per row" if rowwise else "per tensor", "current tensor, every step", rowwise)


def keras_recipe(history_length: int = KERAS_AMAX_HISTORY_LENGTH) -> ScalingRecipe:
    return ScalingRecipe("keras", "delayed", "per tensor", f"amax history of {history_length} steps", False)


def fp8_eligible(in_features: int, out_features: int) -> str | None:
    """Why a Linear/Dense of these dimensions stays out of FP8, or None when it converts."""
    bad = [f"{what} {n}" for what, n in (("in", in_features), ("out", out_features)) if n % FP8_DIM_MULTIPLE]
    if not bad:
        return None
    return f"{' and '.join(bad)} not a multiple of {FP8_DIM_MULTIPLE} (FP8 GEMM kernels need it)"


def in_kept_block(name: str, keep: Sequence[str]) -> bool:
    """Whether the layer ``name`` lies in a block kept in fp32 (``keep_fp32``): the block itself or
    a layer under it (``block.sub``), the rule both keep_fp32 implementations match names by."""
    return any(name == block or name.startswith(f"{block}.") for block in keep)


def round_down_to_power_of_2(scale: np.ndarray) -> np.ndarray:
    """The largest power of two not above each (positive, finite) float32 scale."""
    return np.exp2(np.floor(np.log2(np.asarray(scale, np.float64)))).astype(np.float32)


def amax_to_scale(amax: np.ndarray | float, fmt: str, power_of_2: bool = False) -> np.ndarray:
    """torchao's scale from an amax: ``max_finite / max(amax, eps)`` in float64, then float32."""
    amax = np.maximum(np.asarray(amax, np.float64), TORCHAO_AMAX_EPS)
    scale = (FP8_MAX[fmt] / amax).astype(np.float32)
    return round_down_to_power_of_2(scale) if power_of_2 else scale


def tensorwise_scale(x: np.ndarray, fmt: str) -> np.ndarray:
    """One scale for the whole tensor (torchao ``tensorwise``), a 0-d float32 array."""
    return amax_to_scale(np.max(np.abs(np.asarray(x, np.float32))), fmt)


def rowwise_scale(x: np.ndarray, fmt: str, axis: int = -1) -> np.ndarray:
    """One scale per slice along ``axis`` (the reduction dimension; torchao ``rowwise``), kept as
    a size-1 dimension, rounded down to powers of two as that recipe does."""
    amax = np.max(np.abs(np.asarray(x, np.float32)), axis=axis, keepdims=True)
    return amax_to_scale(amax, fmt, power_of_2=True)


def cast_saturated(x: np.ndarray, fmt: str) -> np.ndarray:
    """``x`` clipped to ±max_finite and cast to ``fmt`` (round to nearest, ties to even; NaN stays
    NaN), as the float32 values that FP8 number holds. Needs ``ml_dtypes`` (installed with jax)."""
    import ml_dtypes

    x = np.asarray(x, np.float32)
    clipped = np.clip(x, -FP8_MAX[fmt], FP8_MAX[fmt])  # NaN passes through np.clip
    return clipped.astype(getattr(ml_dtypes, fmt)).astype(np.float32)


def quantize_dequantize(x: np.ndarray, scale: np.ndarray | float, fmt: str) -> np.ndarray:
    """What an FP8 operand holds, back in float32: ``cast(clip(x · s)) / s`` (torchao's scale
    convention: ``s`` multiplies before the cast)."""
    scale = np.asarray(scale, np.float32)
    return cast_saturated(np.asarray(x, np.float32) * scale, fmt) / scale


def keras_next_scale(amax_history: np.ndarray, scale: float, fmt: str, margin: int = 0) -> np.float32:
    """Keras' next stored scale (a dequantisation multiplier, ``1/s``) from the history as it is
    before this step's amax enters it; unchanged while its largest amax is not positive and finite."""
    one = np.float32(1.0)
    amax = np.float32(np.max(amax_history))
    if not (np.isfinite(amax) and amax > 0):
        return one / (one / np.float32(scale))  # Keras' two reciprocals, as it computes them
    return one / (np.float32(FP8_MAX[fmt]) / amax / np.float32(2.0**margin))


def keras_update_history(amax_history: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The history after one step: rolled one place towards the front, this step's amax at 0."""
    history = np.roll(np.asarray(amax_history, np.float32), -1)
    history[0] = np.max(np.abs(np.asarray(x, np.float32)))
    return history


def snr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio of ``approx`` against ``reference`` in dB (torchao's ``compute_error``)."""
    reference = np.asarray(reference, np.float64)
    noise = reference - np.asarray(approx, np.float64)
    return float(20 * np.log10(np.linalg.norm(reference) / np.linalg.norm(noise)))
