"""A user's PyTorch model (``kind: custom``, ``torch: package.module:function``).

The factory ``(input_shape, num_classes) -> torch.nn.Module`` builds the model; its initial
weights are the ``state_dict`` it has when built under ``torch.manual_seed(seed)`` on the CPU
(``torch_initial_state``), as {name: ndarray}, built once per seed in a process and loaded into
every job of that seed (``build_custom_torch_model``), so every policy starts from the same
weights. Imports torch at module level: only the torch backends and the checks before a run
import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from precision_suite.config import CustomModelConfig
from precision_suite.errors import first_line
from precision_suite.models import UserCodeError, resolve_import
from torch import nn


def call_torch_factory(model: CustomModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The module the factory returns for ``input_shape`` (one row, no batch axis); fp32, on the CPU."""
    factory = resolve_import(str(model.torch), f"models ({model.name}): torch")
    module = factory(tuple(input_shape), int(num_classes))
    if not isinstance(module, nn.Module):
        raise UserCodeError(
            f"models ({model.name}): torch factory {model.torch!r} returned {type(module).__module__}."
            f"{type(module).__name__}; expected a torch.nn.Module"
        )
    return module.float()


def torch_initial_state(
    model: CustomModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> dict[str, np.ndarray]:
    """The factory's module built under ``seed`` (torch's global RNG forked, so the caller's RNG
    state is untouched): its ``state_dict`` (parameters and buffers) as NumPy copies."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = call_torch_factory(model, input_shape, num_classes)
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in module.state_dict().items()}


def load_state(module: nn.Module, state: dict[str, np.ndarray], what: str) -> None:
    """Copy ``state`` into ``module``: every entry of its ``state_dict`` exactly once, same shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights do not fit {what}: missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    with torch.no_grad():
        for name, tensor in own.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name!r}: shape {value.shape} does not fit {what}'s {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(value.copy()))


def build_custom_torch_model(
    model: CustomModelConfig, input_shape: tuple[int, ...], num_classes: int, weights: dict[str, np.ndarray]
) -> nn.Module:
    """A fresh module from the factory holding exactly ``weights`` (``torch_initial_state``)."""
    module = call_torch_factory(model, input_shape, num_classes)
    load_state(module, weights, f"the torch model {model.name}")
    return module


def torch_forward(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """The module's fp32 output on ``x`` in evaluation mode (no statistics updated), as NumPy."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserCodeError(f"the torch model returned {type(out).__name__}; expected one tensor of logits")
    return out.float().numpy()


def check_torch_model(model: CustomModelConfig, x: np.ndarray, expected: tuple[int, ...], num_classes: int) -> Any:
    """Before any job: the factory's module and one forward pass on the rows ``x``, whose output must
    have shape ``expected``; returns that output, or the exception the factory itself raised (a job
    then records it). ``UserCodeError`` for what no job could survive."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the weights ``torch_initial_state(..., seed=0)`` has: convert is checked on them
            module = call_torch_factory(model, x.shape[1:], num_classes)
    except UserCodeError:
        raise
    except Exception as exc:
        return exc
    try:
        out = torch_forward(module, x)
    except UserCodeError as exc:
        raise UserCodeError(f"models ({model.name}): {exc}") from None
    except Exception as exc:
        raise UserCodeError(
            f"models ({model.name}): the torch model's forward pass on one batch of x_train (shape {x.shape}) "
            f"raised {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if tuple(out.shape) != tuple(expected):
        per_position = len(expected) == 3
        raise UserCodeError(
            f"models ({model.name}): the torch model's output on one batch of x_train (shape {x.shape}) has "
            f"shape {tuple(out.shape)}; expected {tuple(expected)} (batch, {'positions, ' if per_position else ''}"
            f"num_classes={num_classes}) for labels of shape (N{', T' if per_position else ''})"
        )
    return out
