"""The ``fp8-mixed`` policy, declared once for every backend that implements it (torch-amp through
torchao, ``backends/torch/fp8.py``; tf-keras and keras-jax through Keras' float8 layers,
``backends/keras/fp8.py``), and what its records must show to count as FP8.

FP8 matmuls (e4m3 forward, e5m2 gradients; the arithmetic is ``backends/reference/fp8.py``) in the
Linear/Dense layers whose dimensions are multiples of 16, bf16 everywhere else, fp32 master
weights, no loss scaling. Native only on CUDA compute capability 8.9 and up (Ada, Hopper,
Blackwell); a backend that emulates it says so itself (``environ.fp8.emulate_reason``: torchao's
``emulate`` flag, Keras without XLA), and no CPU computes it natively. Its MFU is held against the
bf16 peak (every non-Linear op runs in bf16), so it reads against bf16-mixed's.

Framework-free: the parent process, the verdicts and the outputs import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from precision_suite.backends.policy import NativeOn, Policy, autocast_lines, keras_global_policy, register_policy
from precision_suite.backends.reference.fp8 import (
    FORWARD_FORMAT,
    FP8_DIM_MULTIPLE,
    FP8_MIN_CUDA_CAPABILITY,
    GRADIENT_FORMAT,
)

FP8_EXTRA_HINT = "pip install 'precision-suite[fp8]'"


@dataclass(frozen=True)
class Fp8Settings:
    """``Policy.settings["fp8"]`` of an FP8 policy: the formats its Linear/Dense matmuls take."""

    forward_format: str = FORWARD_FORMAT
    gradient_format: str = GRADIENT_FORMAT


@dataclass(frozen=True)
class Fp8Native:
    """FP8's native rule: the backend's own word where it recorded one (it knows whether it ran
    FP8 GEMMs), else the hardware (no CPU; CUDA from 8.9)."""

    hardware: NativeOn = NativeOn(None, float(".".join(map(str, FP8_MIN_CUDA_CAPABILITY))), what="FP8")

    def emulation(self, device: str, environ: Mapping[str, Any]) -> str:
        said = (environ.get("fp8") or {}).get("emulate_reason")
        return str(said) if said else self.hardware.emulation(device, environ)


def fp8_settings(policy: Policy) -> Fp8Settings | None:
    """The FP8 settings of ``policy``, or None for a policy without FP8 matmuls."""
    found = policy.settings.get("fp8")
    return found if isinstance(found, Fp8Settings) else None


def fp8_problems(observed: Mapping[str, Any], settings: Fp8Settings) -> list[str]:
    """Why an FP8 record's observed precision does not show FP8 running: no layer converted, or no
    forward operands in ``settings.forward_format``, or no FP8 gradient operands (a silent fallback to
    bf16, whose dtypes alone look right)."""
    if not observed.get("fp8_layers"):
        return ["no layer ran in FP8 (none converted: every matmul fell back to the compute dtype)"]
    operands = observed.get("fp8_operands") or {}
    problems = []
    forward = list(operands.get("forward") or [])
    if settings.forward_format not in forward:
        problems.append(f"forward matmul operands {forward or 'none'} in FP8, expected {settings.forward_format}")
    if not any(dtype.startswith("float8") for dtype in operands.get("backward") or []):
        problems.append("no FP8 gradient operands observed in the backward pass")
    return problems


FP8_MIXED = register_policy(
    Policy(
        "fp8-mixed",
        "bfloat16",
        "float32",
        False,
        Fp8Native(),
        peak="bf16",
        keras_name="mixed_bfloat16",  # plus float8 on the eligible Dense layers
        advise={
            "Lightning": 'L.Trainer(precision="transformer-engine")  # Transformer Engine\'s FP8 (delayed scaling)',
            "accelerate": "from accelerate.utils import AORecipeKwargs\n"
            'Accelerator(mixed_precision="fp8", kwargs_handlers=[AORecipeKwargs()])  # torchao float8',
            "Keras": keras_global_policy("mixed_bfloat16") + '\nmodel.quantize("float8")  # after build',
            "PyTorch": "from torchao.float8 import Float8LinearConfig, convert_to_float8_training\n"
            'convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("tensorwise"))\n'
            + autocast_lines("bfloat16", scaler=False),
        },
        dtype_bytes={FORWARD_FORMAT: 1, GRADIENT_FORMAT: 1},
        settings={"fp8": Fp8Settings()},
        gemm_multiple=FP8_DIM_MULTIPLE,
    )
)
