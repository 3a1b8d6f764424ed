"""``keep_fp32`` for any ``torch.nn.Module``: named blocks (module qualified names, as
``named_modules()`` gives them) stay float32 under a half policy.

A kept block runs with autocast disabled on float32 inputs (torch-amp), or with float32
parameters and a cast back to the working dtype at its output (torch-manual's half working copy:
``out_dtype``). Its forward is wrapped in place, so the rest of the model, ``torch.compile`` and
DDP see the same module. ``KeptBlocks.observe`` records what really ran inside each block.

Imports torch at module level: only the torch backends import it, inside their methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from precision_suite.backends.base import dtype_summary
from torch import nn

# Containers whose forward only calls their children: a block is what is inside them.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def candidate_blocks(model: nn.Module) -> list[str]:
    """The blocks of a user's model that ``bisect`` ranks, in registration order: the root's
    children, with containers (``Sequential``, ``ModuleList``, ``ModuleDict``) opened, leaving out
    torch's own modules that hold no parameters or buffers (activations, dropout, pooling)."""
    found: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if isinstance(child, _CONTAINERS):
                visit(child, f"{qualified}.")
            elif type(child).__module__.startswith("torch.") and not any(
                True for _ in (*child.parameters(), *child.buffers())
            ):
                continue
            else:
                found.append(qualified)

    visit(model, "")
    return found


def resolve_blocks(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """``names`` → the modules they name in ``model``; an unknown name raises one line listing the
    blocks (``candidate_blocks``)."""
    modules = dict(model.named_modules())
    blocks = {}
    for name in names:
        if not name or name not in modules:
            listed = candidate_blocks(model)
            raise ValueError(f'keep_fp32: "{name}" is not a module of the model; its blocks: {", ".join(listed)}')
        blocks[name] = modules[name]
    return blocks


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list | tuple):
        return type(value)(cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


class KeptBlocks:
    """The blocks of ``model`` named in ``names``, made float32: parameters and buffers cast to
    float32, forward wrapped to run on float32 inputs with autocast off, its output cast to
    ``out_dtype`` when one is given (a half working copy's edge). Empty ``names``: nothing."""

    def __init__(self, model: nn.Module, names: list[str], device_type: str, out_dtype: torch.dtype | None) -> None:
        self.model = model
        self.blocks = resolve_blocks(model, names)
        self.raw_dtypes: dict[str, torch.dtype] = {}
        for name, block in self.blocks.items():
            block.float()
            block.forward = self._wrapped(name, block.forward, device_type, out_dtype)

    @property
    def names(self) -> list[str]:
        return list(self.blocks)

    def inside(self) -> set[int]:
        """ids of every module inside a kept block (the blocks included)."""
        return {id(m) for block in self.blocks.values() for m in block.modules()}

    def _wrapped(self, name: str, inner: Callable[..., Any], device_type: str, out_dtype: torch.dtype | None):
        def forward(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast(device_type, enabled=False):
                out = inner(*cast_floats(args, torch.float32), **cast_floats(kwargs, torch.float32))
            if isinstance(out, torch.Tensor):
                self.raw_dtypes[name] = out.dtype  # an attribute write: nothing on the device
            return out if out_dtype is None else cast_floats(out, out_dtype)

        return forward

    def observe(self, run_forward: Callable[[], Any]) -> tuple[dict[str, dict[str, str]], str | None]:
        """Run ``run_forward`` once with hooks on every leaf module: (per kept block, the dtypes its
        computations produced and its parameters hold; the output dtype of the first leaf module
        with parameters outside every kept block, None if there is none)."""
        inside = self.inside()
        produced: dict[str, set[str]] = {name: set() for name in self.blocks}
        outside: list[str] = []
        owner = {id(m): name for name, block in self.blocks.items() for m in block.modules()}
        blocks = {id(block) for block in self.blocks.values()}
        hooks = []

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return
            if id(module) in blocks:
                return  # what it returns is cast at its edge: its raw output is in raw_dtypes
            if id(module) in inside:
                produced[owner[id(module)]].add(_dtype_name(out.dtype))
            elif any(True for _ in module.parameters(recurse=False)):
                outside.append(_dtype_name(out.dtype))

        for module in self.model.modules():
            if not any(True for _ in module.children()):
                hooks.append(module.register_forward_hook(hook))
        self.raw_dtypes.clear()
        try:
            run_forward()
        finally:
            for handle in hooks:
                handle.remove()
        observed = {}
        for name, block in self.blocks.items():
            dtypes = produced[name] | ({_dtype_name(self.raw_dtypes[name])} if name in self.raw_dtypes else set())
            params = {_dtype_name(p.dtype) for p in block.parameters()}
            observed[name] = {"compute_dtype": dtype_summary(dtypes), "param_dtype": dtype_summary(params)}
        return observed, (outside[0] if outside else None)


# ---------------------------------------------------------------- bisect's proxy (Backend.probe_blocks)
def _rel_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    diff = torch.linalg.vector_norm(candidate.double() - reference.double())
    scale = torch.linalg.vector_norm(reference.double())
    return float(diff / scale) if float(scale) > 0 else float(diff)


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, list | tuple):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _capture(captured: dict[str, Any], name: str) -> Callable[..., None]:
    """A forward hook keeping a block's inputs and output, asking backward to fill their gradients."""

    def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad and name not in captured:
            for a in args:
                if isinstance(a, torch.Tensor) and a.requires_grad:
                    a.retain_grad()
            output.retain_grad()
            captured[name] = (tuple(args), _detached(kwargs), output)

    return hook


def _input_dtypes(candidate: Any, x: torch.Tensor, names: list[str]) -> dict[str, list[Any]]:
    """The dtype each named block's positional inputs have in the candidate's own forward pass:
    under autocast a block downstream of a half matmul gets half inputs, and its error must be
    measured on them."""
    modules = dict(candidate.model.named_modules())
    seen: dict[str, list[Any]] = {}

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            seen.setdefault(name, [a.dtype if isinstance(a, torch.Tensor) else None for a in args])

        return hook

    handles = [modules[name].register_forward_pre_hook(pre_hook(name)) for name in names]
    try:
        with torch.no_grad():
            candidate._forward(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)


def probe_blocks(
    candidate: Any, reference: Any, names: list[str], steps: list[Any], run_block: Callable[..., Any], scale: float
) -> list[Any]:
    """``Backend.probe_blocks`` for the torch backends. Each block of ``candidate.model`` runs
    under its policy (``run_block(module, args, kwargs)``) on the reference's inputs rounded to the
    dtypes its own forward pass gives that block; its output and its gradients (parameters and
    inputs, from the reference's output gradient times ``scale``, the loss scale the policy's
    gradients carry, so fp16 gradients underflow as in training) are held against fp32's."""
    import torch.nn.functional as F
    from precision_suite.backends.base import BlockError

    ref_modules, cand_modules = dict(reference.model.named_modules()), dict(candidate.model.named_modules())
    found: list[BlockError] = []
    for step, rows in enumerate(steps):
        idx = reference._batch(rows).reshape(-1)
        x = reference.x_train.index_select(0, idx)
        dtypes = _input_dtypes(candidate, candidate.x_train.index_select(0, idx), names)
        captured: dict[str, tuple[Any, Any, torch.Tensor]] = {}
        handles = [
            ref_modules[name].register_forward_hook(_capture(captured, name), with_kwargs=True) for name in names
        ]
        try:
            reference.model.zero_grad(set_to_none=True)
            F.cross_entropy(reference._forward(x).float(), reference.y_train.index_select(0, idx)).backward()
        finally:
            for handle in handles:
                handle.remove()
        for name in names:
            if name not in captured:
                continue  # not called on this path
            args, kwargs, output = captured[name]
            block = cand_modules[name]
            inputs = []
            for a, dtype in zip(args, dtypes.get(name, [None] * len(args)), strict=False):
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    a = a.detach().to(dtype or a.dtype).requires_grad_(a.requires_grad)
                inputs.append(a)
            wrt = [p for p in block.parameters() if p.requires_grad]
            wrt += [a for a in inputs if isinstance(a, torch.Tensor) and a.requires_grad]
            ref_wrt = [p for p in ref_modules[name].parameters() if p.requires_grad]
            ref_wrt += [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            out = run_block(block, tuple(inputs), kwargs)
            nonfinite = int((~torch.isfinite(out.detach())).sum())
            act = _rel_error(out.detach().float(), output.detach()) if nonfinite == 0 else float("inf")
            grad = None
            if wrt and output.grad is not None and out.requires_grad:
                grads = torch.autograd.grad(out, wrt, (output.grad * scale).to(out.dtype), allow_unused=True)
                unscaled = [
                    torch.zeros_like(w) if g is None else g.float() / scale for g, w in zip(grads, wrt, strict=True)
                ]
                mine = _flat(unscaled)
                theirs = _flat([w.grad if w.grad is not None else torch.zeros_like(w) for w in ref_wrt])
                bad = int((~torch.isfinite(mine)).sum())
                nonfinite += bad
                grad = float("inf") if bad else _rel_error(mine, theirs)
            found.append(BlockError(name, step, act, grad, nonfinite))
        reference.model.zero_grad(set_to_none=True)
        reference.train_step(rows)
        with torch.no_grad():  # the candidate probes the weights fp32 training reached
            theirs = dict(reference.model.named_parameters()) | dict(reference.model.named_buffers())
            for key, tensor in [*candidate.model.named_parameters(), *candidate.model.named_buffers()]:
                tensor.copy_(theirs[key])
    return found
