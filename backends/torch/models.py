"""PyTorch modules for the framework-neutral model specs of ``suite/models.py``.

Imports torch at module level, so only the torch backends import it, inside their methods.

Module attribute names are the canonical name prefixes (``dense0``, ``block1.attn.q``,
``bn0`` ...), so ``state_dict`` keys are deterministic and map one-to-one onto the canonical
weight names: ``X.kernel`` ↔ ``X.weight`` (transposed: dense (in, out) ↔ (out, in), conv HWIO ↔
OIHW), ``X.gamma``/``X.beta`` ↔ ``X.weight``/``X.bias``, ``bnI.moving_mean``/``moving_var`` ↔
``running_mean``/``running_var``, ``pos`` ↔ ``pos``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from precision_suite.models import (
    BATCH_NORM_EPS,
    BATCH_NORM_MOMENTUM,
    GELU_APPROXIMATE,
    LAYER_NORM_EPS,
    MAX_POOL,
    check_weight_names,
    num_tokens,
)
from torch import nn

_GELU = "tanh" if GELU_APPROXIMATE else "none"


def _activation(name: str) -> nn.Module:
    table: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "gelu": lambda: nn.GELU(approximate=_GELU),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    try:
        return table[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(table)}") from None


class TorchMlp(nn.Module):
    """dense{i} → activation → dropout, ..., head."""

    def __init__(self, n_in: int, hidden: list[int], activation: str, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.num_hidden = len(hidden)
        for i, n_out in enumerate(hidden):
            self.add_module(f"dense{i}", nn.Linear(n_in, n_out))
            n_in = n_out
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(n_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_hidden):
            x = self.drop(self.act(getattr(self, f"dense{i}")(x)))
        return self.head(x)


class TorchCnn(nn.Module):
    """Blocks conv{i} (no bias, 'same') → bn{i} → ReLU → 2x2 max-pool; global average pool →
    dense → ReLU → dropout → head. Inputs (N, C, H, W)."""

    def __init__(
        self,
        c_in: int,
        channels: list[int],
        kernel_size: int,
        dense: int,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.num_blocks = len(channels)
        for i, c_out in enumerate(channels):
            # padding="same" matches Keras' 'same' also for even kernels (extra pad after).
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size, padding="same", bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(c_out, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM))
            c_in = c_out
        self.pool = nn.MaxPool2d(MAX_POOL, stride=MAX_POOL)
        self.dense = nn.Linear(c_in, dense)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dense, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = self.pool(torch.relu(x))
        x = x.mean(dim=(2, 3))
        return self.head(self.drop(torch.relu(self.dense(x))))


class TorchAttention(nn.Module):
    """Multi-head self-attention from four dense projections, written out so every framework
    computes the same operations in the same order: q is scaled by 1/sqrt(d_head) *before*
    q·kᵀ (keeps fp16 scores small), softmax in the compute dtype, no attention mask."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        self.scale = 1.0 / math.sqrt(self.d_head)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.num_heads, self.d_head).transpose(1, 2)  # (N, h, T, dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q = self._heads(self.q(x)) * self.scale
        k = self._heads(self.k(x))
        v = self._heads(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(n, t, d)
        return self.drop(self.out(mixed))


class TorchBlock(nn.Module):
    """Pre-norm: x + attn(ln1(x)); x + mlp2(gelu(mlp1(ln2(x))))."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.attn = TorchAttention(d_model, num_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.mlp1 = nn.Linear(d_model, d_model * mlp_ratio)
        self.mlp2 = nn.Linear(d_model * mlp_ratio, d_model)
        self.gelu = nn.GELU(approximate=_GELU)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.mlp2(self.gelu(self.mlp1(self.ln2(x)))))


class TorchTransformer(nn.Module):
    """embed (patch → d) + pos → block{b}... → ln_f → mean over tokens → head.
    Inputs (N, T, P) from ``precision_suite.models.prepare_inputs``."""

    def __init__(
        self,
        num_patches: int,
        patch_values: int,
        d_model: int,
        num_heads: int,
        depth: int,
        mlp_ratio: int,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embed = nn.Linear(patch_values, d_model)
        self.pos = nn.Parameter(torch.zeros(num_patches, d_model))
        for b in range(depth):
            self.add_module(f"block{b}", TorchBlock(d_model, num_heads, mlp_ratio, dropout))
        self.ln_f = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(x) + self.pos)
        for b in range(self.depth):
            x = getattr(self, f"block{b}")(x)
        return self.head(self.ln_f(x).mean(dim=1))


# ---------------------------------------------------------------- canonical weights
def _unwrap(module: nn.Module) -> nn.Module:
    # torch.compile and (Distributed)DataParallel wrap the model and prefix every name.
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _slots(module: nn.Module) -> dict[str, tuple[torch.Tensor, Callable, Callable]]:
    """Canonical name → (tensor, canonical→torch layout, torch→canonical layout), in module
    registration order."""
    module = _unwrap(module)
    same = (lambda a: a, lambda a: a)
    dense = (lambda a: a.T, lambda a: a.T)
    conv = (lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0))
    slots: dict[str, tuple[torch.Tensor, Callable, Callable]] = {}
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(sub, nn.Linear):
            slots[f"{prefix}kernel"] = (sub.weight, *dense)
            slots[f"{prefix}bias"] = (sub.bias, *same)
        elif isinstance(sub, nn.Conv2d):
            slots[f"{prefix}kernel"] = (sub.weight, *conv)
            if sub.bias is not None:
                slots[f"{prefix}bias"] = (sub.bias, *same)
        elif isinstance(sub, nn.LayerNorm | nn.BatchNorm2d):
            slots[f"{prefix}gamma"] = (sub.weight, *same)
            slots[f"{prefix}beta"] = (sub.bias, *same)
            if isinstance(sub, nn.BatchNorm2d):
                slots[f"{prefix}moving_mean"] = (sub.running_mean, *same)
                slots[f"{prefix}moving_var"] = (sub.running_var, *same)
        for pname, param in sub.named_parameters(recurse=False):
            if isinstance(sub, nn.Linear | nn.Conv2d | nn.LayerNorm | nn.BatchNorm2d):
                continue
            slots[f"{prefix}{pname}"] = (param, *same)
    return slots


def load_canonical_weights(module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy ``weights`` (canonical names/layouts) into ``module``: every slot exactly once,
    values converted to the module's dtype. Missing, unexpected or misshapen names raise."""
    slots = _slots(module)
    check_weight_names(slots, weights, type(module).__name__)
    with torch.no_grad():
        for name, (tensor, to_torch, _) in slots.items():
            value = np.ascontiguousarray(to_torch(np.asarray(weights[name], np.float32)))
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"weight {name!r}: canonical shape {np.shape(weights[name])} does not fit "
                    f"the torch shape {tuple(tensor.shape)}"
                )
            tensor.copy_(torch.from_numpy(value))


def torch_model_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's weights (BatchNorm running statistics included) as the canonical dict:
    float32 NumPy arrays in canonical names and layouts, whatever the module's dtype/device.
    The arrays are copies: training the module further does not change them."""
    return {
        name: np.array(from_torch(tensor.detach().float().cpu().numpy()), order="C", copy=True)
        for name, (tensor, _, from_torch) in _slots(module).items()
    }


def build_torch_model(
    model_cfg: Any,
    input_shape: tuple[int, ...],
    num_classes: int,
    weights: dict[str, np.ndarray],
) -> nn.Module:
    """An fp32 CPU module for ``model_cfg`` holding exactly ``weights`` (from
    ``precision_suite.models.init_weights`` for the same canonical ``input_shape``, no batch dim). It reads
    ``precision_suite.models.prepare_inputs`` output and returns logits (N, num_classes)."""
    kind = model_cfg.kind
    if kind == "custom":
        from precision_suite.backends.torch.custom import build_custom_torch_model

        return build_custom_torch_model(model_cfg, tuple(input_shape), num_classes, weights)
    if kind == "mlp":
        module: nn.Module = TorchMlp(
            int(np.prod(input_shape)),
            list(model_cfg.hidden),
            model_cfg.activation,
            num_classes,
            model_cfg.dropout,
        )
    elif kind == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
        module = TorchCnn(
            input_shape[0],
            list(model_cfg.channels),
            model_cfg.kernel_size,
            model_cfg.dense,
            num_classes,
            model_cfg.dropout,
        )
    elif kind == "transformer":
        t, p = num_tokens(model_cfg, tuple(input_shape))
        module = TorchTransformer(
            t,
            p,
            model_cfg.d_model,
            model_cfg.num_heads,
            model_cfg.depth,
            model_cfg.mlp_ratio,
            num_classes,
            model_cfg.dropout,
        )
    else:
        raise ValueError(f"unknown model kind {kind!r}; known: mlp, cnn, transformer")
    module = module.float()
    load_canonical_weights(module, weights)
    return module
