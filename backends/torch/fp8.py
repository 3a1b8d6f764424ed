"""FP8 training for ``torch-amp``'s ``fp8-mixed``: torchao's float8 Linear, the record of which layers
converted and why the others did not, and the observation that FP8 really ran.

``convert_to_float8_training`` with a ``Float8LinearConfig`` recipe (``tensorwise``: one scale
per tensor; ``rowwise``: one per row, power-of-two scales; both recompute the scales from the
current tensor every step: ``backends/reference/fp8.py``) swaps the ``nn.Linear`` modules whose
dimensions are multiples of 16 (``fp8_eligible``, the same rule the Keras backends apply) for
``Float8Linear``, which keeps the very same fp32 parameters (the optimizer's master weights) and
casts them and the activations to e4m3, the output gradient to e5m2 (tensorwise; rowwise keeps
e4m3), for each of the layer's three matmuls. Everything else runs under bf16 autocast. No loss
scaling: the per-tensor scales keep the gradients in range.

Where the hardware has no FP8 tensor cores (a CPU, a GPU below compute capability 8.9) torchao's
``emulate`` flag does the matmul in float32 on the dequantised FP8 values: the numerics are FP8's,
the speed and memory are not (the record's environment says so, and the comparison labels the
policy ``emulated``).

torchao is an optional extra (``pip install 'precision-suite[fp8]'``) and is imported only here,
inside functions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from precision_suite.backends.reference.fp8 import FP8_MIN_CUDA_CAPABILITY, fp8_eligible, in_kept_block, torchao_recipe

if TYPE_CHECKING:
    import torch

_MATMULS = ("aten.mm.default", "aten.addmm.default", "aten._scaled_mm.default")


@dataclass
class Fp8Conversion:
    """What ``convert`` did to a model: the record's ``environ.fp8``."""

    recipe: str
    emulate: bool
    emulate_reason: str  # why emulated ("" when the FP8 GEMMs are native)
    converted: list[str] = field(default_factory=list)  # module names now Float8Linear
    not_converted: dict[str, str] = field(default_factory=dict)  # module name → why not

    def record(self) -> dict[str, Any]:
        return {
            "via": "torchao convert_to_float8_training",
            "recipe": self.recipe,
            "scaling": torchao_recipe(self.recipe).describe(),
            "emulate": self.emulate,
            "emulate_reason": self.emulate_reason,
            "converted": list(self.converted),
            "not_converted": dict(self.not_converted),
        }


def torchao_available() -> bool:
    from precision_suite.backends.base import module_available

    return module_available("torchao").ok


def emulation_reason(device: torch.device) -> str:
    """Why torchao must emulate the FP8 matmuls on ``device``, or "" when it has FP8 kernels."""
    import torch

    if device.type != "cuda":
        return f"{device.type}: no FP8 matmul kernels (torchao emulate=True)"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CUDA_CAPABILITY:
        want = ".".join(map(str, FP8_MIN_CUDA_CAPABILITY))
        return f"compute capability {capability[0]}.{capability[1]} < {want} (torchao emulate=True)"
    return ""


def _import_torchao_float8() -> Any:
    # torchao logs a warning for each of its CUDA extensions a CPU build cannot load; they are not
    # used by the float8 training path (emulated on a CPU), so the warnings are noise here.
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torchao.float8 as float8
    finally:
        logger.setLevel(level)
    return float8


def convert(model: torch.nn.Module, recipe: str, device: torch.device, keep: Sequence[str] = ()) -> Fp8Conversion:
    """Swap ``model``'s eligible ``nn.Linear`` modules for torchao's ``Float8Linear`` in place
    (parameters kept), recording every Linear's outcome. Modules in a block of ``keep``
    (``keep_fp32``) stay as they are: a block kept in fp32 is not computed in FP8."""
    import torch

    float8 = _import_torchao_float8()
    reason = emulation_reason(device)
    conversion = Fp8Conversion(torchao_recipe(recipe).name, bool(reason), reason)
    config = dataclasses.replace(float8.Float8LinearConfig.from_recipe_name(recipe), emulate=bool(reason))

    def eligible(module: torch.nn.Module, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return False
        why_not = fp8_eligible(module.in_features, module.out_features)
        if why_not is None and in_kept_block(name, keep):
            why_not = "kept in fp32 (keep_fp32)"
        if why_not is None:
            conversion.converted.append(name)
            return True
        conversion.not_converted[name] = why_not
        return False

    float8.convert_to_float8_training(model, config=config, module_filter_fn=eligible)
    return conversion


def observe_fp8_operands(model: torch.nn.Module, forward: Any, x: torch.Tensor) -> dict[str, list[str]]:
    """The dtypes of the matmul operands that really ran in one forward and backward pass of
    ``forward(x)`` (the converted layers' FP8 data, the rest's bf16), by pass. The backward is taken
    with ``torch.autograd.grad`` so no ``.grad`` is touched."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    float8 = _import_torchao_float8()
    tensor_type = float8.Float8TrainingTensor

    class Operands(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.phase = "forward"
            self.seen: dict[str, set[str]] = {"forward": set(), "backward": set()}

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if str(func) in _MATMULS:
                for arg in args:
                    if isinstance(arg, tensor_type):
                        self.seen[self.phase].add(str(arg._data.dtype).removeprefix("torch."))
            return func(*args, **(kwargs or {}))

    params = [p for p in model.parameters() if p.requires_grad]
    operands = Operands()
    with operands, torch.enable_grad():
        loss = forward(x).float().sum()
        operands.phase = "backward"
        torch.autograd.grad(loss, params, allow_unused=True)
    return {phase: sorted(dtypes) for phase, dtypes in operands.seen.items()}


__all__ = ["Fp8Conversion", "convert", "emulation_reason", "observe_fp8_operands"]
