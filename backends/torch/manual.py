"""``torch-manual``: the mixed-precision recipe written out by hand, no autocast, no GradScaler.

* A half-precision working copy of the model (fp16 or bf16); BatchNorm/LayerNorm keep fp32
  weights and compute in fp32 (their input is upcast, their output cast back).
* ``-mixed``: fp32 master weights owned by the optimizer, starting from the exact fp32 initial
  weights (the working copy is made from them, never the other way round). Each micro-batch's half gradients are
  added into fp32 master gradients; after the step the master is copied (rounded) into the
  working copy, so the working copy always equals ``master.to(half)``.
* ``-pure``: no master copy; the optimizer updates the half weights themselves (kept to show
  why master weights matter).
* fp16 scales the loss with the loss-scale state machine of ``backends/reference/loss_scale.py`` run on
  the device: ``torch._amp_foreach_non_finite_check_and_unscale_`` checks every gradient for
  inf/NaN and unscales (by 1/scale computed in float64, as GradScaler does),
  ``torch._amp_update_scale_`` moves the scale. The skip happens on the device too: the fused
  optimizer kernel receives ``found_inf`` and leaves parameters and state untouched, so
  ``train_step`` never syncs with the host. Where the fused kernel is wrong for the parameters
  (``backends/torch/optim.py`` probes it: torch 2.13's CPU SGD on half weights), the non-fused
  optimizer runs and the skip flag is read on the host, as GradScaler does. Static scale
  (``dynamic: false``) never updates; ``enabled: false`` or a bf16 policy uses a no-op scaler
  with the same methods.
"""

from __future__ import annotations

from typing import Any

from precision_suite.backends.torch.base import TorchBackendBase
from pydantic import BaseModel, ConfigDict


class TorchManualOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    compile: bool = False  # torch.compile the working-copy model


class DeviceLossScaler:
    """``precision_suite.backends.reference.loss_scale.LossScaler`` on the device, with GradScaler's kernels."""

    def __init__(self, cfg: Any, device: Any) -> None:
        import torch

        self.cfg = cfg
        self.scale = torch.full((), cfg.init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.mode = "dynamic" if cfg.dynamic else "static"

    def unscale_(self, grads: list[Any], found_inf: Any) -> None:
        import torch

        inv_scale = self.scale.double().reciprocal().float()
        by_dtype: dict[Any, list[Any]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv_scale)

    def update(self, found_inf: Any) -> None:
        import torch

        if self.cfg.dynamic:
            torch._amp_update_scale_(
                self.scale,
                self.growth_tracker,
                found_inf,
                self.cfg.growth_factor,
                self.cfg.backoff_factor,
                self.cfg.growth_interval,
            )

    def state(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "growth_tracker": int(self.growth_tracker)}

    def load(self, state: dict[str, Any]) -> None:
        self.scale.fill_(float(state["scale"]))
        self.growth_tracker.fill_(int(state["growth_tracker"]))


class NoLossScaler:
    """Same methods, no scaling: scale 1, no overflow check, nothing skipped."""

    mode = "none"

    def __init__(self, device: Any) -> None:
        import torch

        self.scale = torch.ones((), dtype=torch.float32, device=device)

    def unscale_(self, grads: list[Any], found_inf: Any) -> None:
        pass

    def update(self, found_inf: Any) -> None:
        pass

    def state(self) -> dict[str, Any] | None:
        return None

    def load(self, state: dict[str, Any] | None) -> None:
        pass


def _is_norm(module: Any) -> bool:
    from torch import nn

    # By type, so a user's model (kind: custom) keeps its normalisation layers fp32 too.
    return isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.RMSNorm | nn.modules.batchnorm._NormBase)


class TorchManualBackend(TorchBackendBase):
    name = "torch-manual"
    policies = ("fp16-mixed", "bf16-mixed", "fp16-pure", "bf16-pure")
    Options = TorchManualOptions

    @classmethod
    def data_parallel_class(cls, job: Any) -> type[TorchManualBackend]:
        from precision_suite.backends.torch.distributed import DdpTorchManualBackend

        return DdpTorchManualBackend

    def _build(self) -> None:
        import torch
        from precision_suite.backends.torch.keep_fp32 import KeptBlocks

        half = self.compute_dtype
        # The exact fp32 initial weights, taken before any cast: the master copy starts from
        # them (as torch-amp's and Keras' weights do), and the working copy is made from it.
        init_fp32 = [p.detach().clone() for p in self.model.parameters()]
        self.model.to(half)
        # Kept blocks: fp32 parameters and compute, cast back to half at their output. Their norms
        # need no edges of their own (they would cast to half inside the fp32 block).
        self.kept = KeptBlocks(self.model, self.job.model.keep_fp32, self.device.type, out_dtype=half)
        inside_kept = self.kept.inside()
        for module in self.model.modules():
            if _is_norm(module) and id(module) not in inside_kept:
                module.float()
                # fp32 statistics and affine; the rest of the network stays half.
                module.register_forward_pre_hook(lambda m, args: (args[0].float(),))
                module.register_forward_hook(lambda m, args, out: out.to(half))
        self.working = list(self.model.parameters())
        with torch.no_grad():
            # Norm and kept parameters (fp32) get the init unrounded; the rest its one rounding to half.
            torch._foreach_copy_(self.working, init_fp32)
        if self.policy.master_weights:
            self.master = init_fp32
            for m in self.master:
                m.grad = torch.zeros_like(m)
            self.opt_params = self.master
        else:
            self.master = []
            self.opt_params = self.working
        self.optimizer = self._make_optimizer()
        ls = self.job.loss_scale
        self.scaler: DeviceLossScaler | NoLossScaler = (
            NoLossScaler(self.device) if self.job.loss_scaling_mode == "none" else DeviceLossScaler(ls, self.device)
        )

    def _forward(self, x: Any) -> Any:
        # Token ids (a custom model's integer inputs) stay integers.
        return self.forward_module(x.to(self.compute_dtype) if x.is_floating_point() else x)

    def _master_tensors(self) -> list[Any]:
        return self.master

    def _grad_tensors(self) -> list[Any]:
        return self.working + self.master

    def _loss_scaling_mode(self) -> str:
        return self.scaler.mode

    def _backward(self, loss: Any) -> None:
        (loss * self.scaler.scale).backward()
        if self.master:
            import torch

            # Accumulate in fp32: half gradients summed over micro-batches would lose bits.
            torch._foreach_add_([m.grad for m in self.master], [p.grad for p in self.working])
            for p in self.working:
                p.grad = None

    def train_step(self, batch_indices: Any) -> None:
        import torch

        loss_sum = None
        for rows in self._batch(batch_indices):
            loss = self._measured(rows, self._backward)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        grads = [p.grad for p in self.opt_params if p.grad is not None]
        found_inf = torch.zeros((), dtype=torch.float32, device=self.device)
        self.scaler.unscale_(grads, found_inf)
        if self.job.train.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.opt_params, self.job.train.grad_clip_norm, foreach=True)
        scale_used = self.scaler.scale.clone()
        self.schedule.before_step()
        self._optimizer_step(found_inf)
        self.scaler.update(found_inf)
        self.schedule.after_step(found_inf)
        if self.master:
            with torch.no_grad():
                torch._foreach_copy_(self.working, self.master)
            torch._foreach_zero_([m.grad for m in self.master])
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.telemetry.record(loss_sum, scale_used, found_inf)

    def _optimizer_step(self, found_inf: Any) -> None:
        if self._fused:
            # The kernel reads found_inf and leaves parameters and state untouched on overflow.
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
            del self.optimizer.found_inf
        elif not float(found_inf):
            # A non-fused optimizer cannot skip on the device: read the flag on the host, as
            # GradScaler.step does for one (free on the CPU, where the fused kernel is refused).
            self.optimizer.step()

    def _extra_state(self) -> dict[str, Any]:
        from precision_suite.backends.torch.base import to_plain

        return {"master": to_plain(self.master), "scaler": self.scaler.state()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        import torch
        from precision_suite.backends.torch.base import from_plain

        with torch.no_grad():
            for m, saved in zip(self.master, from_plain(state["master"]), strict=True):
                m.copy_(saved)
        self.scaler.load(state["scaler"])
