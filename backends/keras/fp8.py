"""FP8 training for the Keras backends' ``fp8-mixed`` (tf-keras, keras-jax): Keras' own float8
quantisation, ``layer.quantize("float8")``, on every Dense layer whose dimensions are multiples of 16
(``fp8_eligible``: the rule torch-amp applies to ``nn.Linear``, so both sides convert the same layers);
the rest of the model runs under ``mixed_bfloat16``; no loss scaling.

A quantised Dense (``QuantizedFloat8DTypePolicy``, ``float8_from_mixed_bfloat16``) casts its input
and kernel to e4m3 and its output gradient to e5m2 around the matmul (quantise-dequantise in
``keras.ops``, so it trains on a CPU too: emulated), with *delayed* scaling: each operand's scale
comes from the largest amax of the last ``KERAS_AMAX_HISTORY_LENGTH`` (1024, Keras' default) steps,
and the new scale and history are written by the optimizer as the "gradients" of those variables
(``overwrite_with_gradient``). The reference is ``backends/reference/fp8.py``.

Observed precision: a quantised layer's amax histories are written only by the float8 training
path, the inputs' and kernel's when their e4m3 cast ran and the output gradient's when its e5m2
cast ran, so non-zero histories after training are the evidence that FP8 ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from precision_suite.backends.reference.fp8 import (
    FORWARD_FORMAT,
    FP8_MIN_CUDA_CAPABILITY,
    GRADIENT_FORMAT,
    KERAS_AMAX_HISTORY_LENGTH,
    fp8_eligible,
    in_kept_block,
    keras_recipe,
)

# Why a Keras backend cannot run fp8-mixed with gradient accumulation: the scale and history
# "gradients" of micro-batches would be added up like real gradients.
GRAD_ACCUMULATION_PROBLEM = (
    "fp8-mixed on {backend} needs train.grad_accumulation: 1: Keras' float8 layers write their new "
    "scales and amax histories as gradients, which micro-batches would add up"
)


def emulation_reason(device: str, jit_compile: bool, capability: tuple[int, int] | None) -> str:
    """Why a Keras fp8-mixed job's FP8 matmuls are emulated (quantise-dequantise, then a bf16
    matmul), or "" when XLA can run them as FP8 GEMMs."""
    if device != "cuda":
        return f"{device}: float8 quantise-dequantise in keras.ops, matmuls in bfloat16"
    if not jit_compile:
        return "cuda without jit_compile: no XLA FP8 GEMM rewrite, matmuls in bfloat16"
    if capability is not None and tuple(capability) < FP8_MIN_CUDA_CAPABILITY:
        want = ".".join(map(str, FP8_MIN_CUDA_CAPABILITY))
        return f"compute capability {capability[0]}.{capability[1]} < {want}: no FP8 GEMMs, matmuls in bfloat16"
    return ""


@dataclass
class Fp8Quantization:
    """What ``quantize_float8`` did to a model: the record's ``environ.fp8``."""

    converted: list[str] = field(default_factory=list)
    not_converted: dict[str, str] = field(default_factory=dict)
    history_length: int = KERAS_AMAX_HISTORY_LENGTH

    def record(self, emulate_reason: str) -> dict[str, Any]:
        return {
            "via": 'keras layer.quantize("float8")',
            "recipe": "delayed",
            "scaling": keras_recipe(self.history_length).describe(),
            "amax_history_length": self.history_length,
            "emulate": bool(emulate_reason),
            "emulate_reason": emulate_reason,
            "converted": list(self.converted),
            "not_converted": dict(self.not_converted),
        }


def dense_layers(model: Any) -> list[tuple[str, Any]]:
    """Every plain Dense layer of ``model``, nested ones (the attention projections) included,
    named as the canonical weights name them (``block0.attn.q``)."""
    import keras

    out = []
    for layer in model.layers:
        inner = [layer, *getattr(layer, "_layers", [])]
        for sub in inner:
            if type(sub) is keras.layers.Dense:
                out.append((sub.name if sub is layer else f"{layer.name}.{sub.name}", sub))
    return out


def quantize_float8(model: Any, keep: Sequence[str] = ()) -> Fp8Quantization:
    """Quantise ``model``'s eligible Dense layers to float8 in place (built, weights loaded);
    layers in a block of ``keep`` (``keep_fp32``) stay float32."""
    done = Fp8Quantization()
    for name, layer in dense_layers(model):
        n_in, n_out = (int(d) for d in layer.kernel.shape)
        why_not = fp8_eligible(n_in, n_out)
        if why_not is None and in_kept_block(name, keep):
            why_not = "kept in fp32 (keep_fp32)"
        if why_not is not None:
            done.not_converted[name] = why_not
            continue
        layer.quantize("float8")
        done.converted.append(name)
    return done


def observed_fp8(model: Any) -> dict[str, Any]:
    """The FP8 evidence of ``model`` (its variables must hold the trained state): which layers are
    quantised, and which FP8 casts ran, read from their amax histories."""
    layers = [(name, layer) for name, layer in dense_layers(model) if layer.quantization_mode == "float8"]

    def written(variable: Any) -> bool:
        return bool(np.any(np.asarray(variable.value) != 0))

    forward = any(written(layer.inputs_amax_history) and written(layer.kernel_amax_history) for _, layer in layers)
    backward = any(written(layer.outputs_grad_amax_history) for _, layer in layers)
    return {
        "fp8_layers": [name for name, _ in layers],
        "fp8_operands": {
            "forward": [FORWARD_FORMAT] if forward else [],
            "backward": [GRADIENT_FORMAT] if backward else [],
        },
        "fp8_evidence": "amax histories written by Keras' float8 training path",
    }
