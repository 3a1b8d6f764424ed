"""Which torch optimizer implementation a job runs: fused, foreach or for-loop.

A fused kernel is only used where it is *known right* for the parameters' dtype and device:
torch 2.13's fused CPU SGD kernel, for instance, never stores the update of the vectorised part
of fp16/bf16 parameters and reads momentum buffers through the wrong pointer type (upstream
pytorch/pytorch#191763, fixed in 2.14), so pure-half SGD on CPU would silently not train. No
version list can keep up with that, so a capability probe decides: three steps of the job's
optimizer (same name, momentum, weight decay, betas, eps) on a small half tensor with the fused
kernel, against the for-loop implementation run in fp32 on the same values. A kernel whose
update differs from the reference by more than rounding is not used, and the record's
environment says which implementation ran and why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from precision_suite.config import OptimizerConfig

# Enough elements for the vectorised body and a scalar tail of any SIMD width.
_PROBE_NUMEL = 8 * 64 + 7
_PROBE_STEPS = 3
_PROBE_LR = 0.05


@dataclass(frozen=True)
class OptimizerImpl:
    """What ``build_optimizer`` builds, and why (recorded in the environment)."""

    name: str  # "fused" | "foreach" | "for-loop"
    reason: str

    @property
    def fused(self) -> bool:
        return self.name == "fused"


def build_torch_optimizer(params: list[Any], cfg: OptimizerConfig, lr: float, **impl: Any) -> Any:
    """``cfg``'s torch optimizer; ``impl`` is torch's ``fused=True`` / ``foreach=...``."""
    import torch

    common = {"lr": lr, "weight_decay": cfg.weight_decay, **impl}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, momentum=cfg.momentum, **common)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return cls(params, betas=tuple(cfg.betas), eps=cfg.eps, **common)


@functools.cache
def _fused_matches_reference(cfg_json: str, dtype_name: str, device: str) -> tuple[bool, str]:
    import torch
    from precision_suite.config import OptimizerConfig

    cfg = OptimizerConfig.model_validate_json(cfg_json)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(1234)

    def signed_unit() -> Any:
        # |x| in [0.5, 1.5): an update of ~lr is many ulps of a half weight (so "not stored"
        # shows), and no squared gradient underflows in a half Adam moment.
        magnitude = torch.rand(_PROBE_NUMEL, generator=gen) + 0.5
        return magnitude * (torch.randint(0, 2, (_PROBE_NUMEL,), generator=gen) * 2 - 1)

    start = signed_unit()
    grads = [signed_unit() for _ in range(_PROBE_STEPS)]
    start_half = start.to(dtype)
    fused_p = start_half.clone().to(device).requires_grad_()
    ref_p = start_half.float().clone().requires_grad_()
    try:
        fused_opt = build_torch_optimizer([fused_p], cfg, _PROBE_LR, fused=True)
    except (RuntimeError, ValueError) as exc:
        return False, f"no fused {cfg.name} for {dtype_name} on {device} ({str(exc).splitlines()[0]})"
    ref_opt = build_torch_optimizer([ref_p], cfg, _PROBE_LR, foreach=False)
    for g in grads:
        fused_p.grad = g.to(dtype).to(device)
        ref_p.grad = g.to(dtype).float()
        fused_opt.step()
        ref_opt.step()
    got = fused_p.detach().cpu().float() - start_half.float()
    want = ref_p.detach() - start_half.float()
    # Rounding allowance: a few ulps of the half value per step, plus a relative slack for state
    # (momentum, Adam moments) kept in the half dtype by the fused kernel.
    ulp = torch.finfo(dtype).eps * start_half.float().abs()
    allowed = 2 * _PROBE_STEPS * ulp + 0.05 * want.abs()
    bad = ~torch.isfinite(got) | ((got - want).abs() > allowed)
    if bad.any():
        share = bad.float().mean().item()
        return False, (
            f"torch {torch.__version__} fused {cfg.name} kernel is wrong for {dtype_name} on {device} "
            f"({share:.0%} of probe elements off the reference update)"
        )
    return True, f"fused {cfg.name} kernel checked against the for-loop update for {dtype_name} on {device}"


def fused_kernel_ok(cfg: OptimizerConfig, dtype: Any, device: Any) -> tuple[bool, str]:
    """Whether torch's fused kernel for ``cfg`` updates ``dtype`` parameters on ``device``
    correctly (probed once per process and configuration), with the reason."""
    import torch

    dtype_name = str(dtype).removeprefix("torch.")
    device_str = str(torch.device(device).type)
    return _fused_matches_reference(cfg.model_dump_json(), dtype_name, device_str)


def choose_impl(params: list[Any], cfg: OptimizerConfig, want_fused: bool) -> OptimizerImpl:
    """The implementation to build for ``params``: fused if asked for and probed right for every
    (dtype, device) among them; otherwise torch's own default for the device (foreach on CUDA,
    for-loop on CPU), stated explicitly so the record can say which ran."""
    non_fused = "foreach" if all(p.device.type == "cuda" for p in params) else "for-loop"
    if not want_fused:
        return OptimizerImpl(non_fused, "fused not requested")
    reasons = []
    for dtype, device in sorted({(str(p.dtype), p.device.type) for p in params}):
        ok, reason = fused_kernel_ok(cfg, dtype, device)
        if not ok:
            return OptimizerImpl(non_fused, reason)
        reasons.append(reason)
    return OptimizerImpl("fused", "; ".join(reasons))


@functools.cache
def _float64_lr_runs(cls: type, dtype_name: str, device: str) -> bool:
    import torch

    param = torch.zeros(4, dtype=getattr(torch, dtype_name), device=device, requires_grad=True)
    param.grad = torch.ones_like(param)
    try:
        cls([param], lr=torch.tensor(0.5, dtype=torch.float64, device=device), fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def device_lr_dtype(optimizer: Any, device: Any) -> Any:
    """dtype of an on-device lr for ``optimizer``'s fused kernel: float64 where the kernel takes
    it (the lr is then exactly the configured double), float32 where it only takes that."""
    import torch

    dtype = str(optimizer.param_groups[0]["params"][0].dtype).removeprefix("torch.")
    ok = _float64_lr_runs(type(optimizer), dtype, str(torch.device(device).type))
    return torch.float64 if ok else torch.float32
