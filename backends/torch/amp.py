"""``torch-amp``: PyTorch's own mixed precision, ``torch.autocast`` + ``torch.amp.GradScaler``.

Weights, gradients and optimizer state stay fp32; autocast runs matmuls/convs in fp16/bf16.
fp16 scales the loss with a ``GradScaler`` built from ``job.loss_scale`` (``dynamic: false``
pins the scale at ``init_scale`` after every update; ``enabled: false`` disables it). Other
policies use a disabled ``GradScaler``, whose methods are no-ops, so ``train_step`` has one
path for every policy.

One optimizer step: micro-batches (``grad_accumulation``) each add ``scale·loss/n`` gradients;
then, with clipping, ``unscale_`` and ``clip_grad_norm_`` (an overflowing step gets a NaN norm,
is clipped to NaN and then skipped by ``scaler.step``: never applied); ``scaler.step`` and
``scaler.update`` once per optimizer step.

Host syncs: with ``fused: false`` GradScaler's ``step`` itself reads ``found_inf`` with
``.item()`` on fp16 (torch's design); ``fused: true`` hands ``found_inf`` to the fused optimizer
kernel, which skips on the device, and this backend then adds no sync at all (see
``backends/torch/base.py`` for how the lr schedule follows applied steps either way).

``fp8-mixed``: before the optimizer is built, torchao's float8 training converts the eligible
``nn.Linear`` modules (``backends/torch/fp8.py``; recipe ``fp8_recipe``); the rest runs under bf16
autocast, with no loss scaling. Which modules converted, which did not and why, and whether the FP8
matmuls are emulated go into the environment (``fp8``); the FP8 operand dtypes seen in one forward
and backward pass go into the observed precision.
"""

from __future__ import annotations

from typing import Any, Literal

from precision_suite.backends.fp8 import FP8_EXTRA_HINT, fp8_settings
from precision_suite.backends.policy import get_policy
from precision_suite.backends.torch.base import TorchBackendBase
from pydantic import BaseModel, ConfigDict


class TorchAmpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    compile: bool = False  # torch.compile the model
    fused: bool = False  # fused optimizer kernel: no per-step host sync in GradScaler.step
    # fp8-mixed: torchao's Float8LinearConfig recipe (tensorwise: a scale per tensor; rowwise: per row)
    fp8_recipe: Literal["tensorwise", "rowwise"] = "tensorwise"


class TorchAmpBackend(TorchBackendBase):
    name = "torch-amp"
    policies = ("fp32", "tf32", "fp16-mixed", "bf16-mixed", "fp8-mixed")
    Options = TorchAmpOptions

    @classmethod
    def unsupported_reason(cls, policy: str, device: str) -> str | None:
        from precision_suite.backends.torch.fp8 import torchao_available

        if fp8_settings(get_policy(policy)) is not None and not torchao_available():
            return f"{policy} needs torchao, which is not installed ({FP8_EXTRA_HINT})"
        return super().unsupported_reason(policy, device)

    @classmethod
    def data_parallel_class(cls, job: Any) -> type[TorchAmpBackend]:
        from precision_suite.backends.torch.distributed import DdpTorchAmpBackend

        return DdpTorchAmpBackend

    @property
    def _wants_fused(self) -> bool:
        return bool(self.options.fused)

    def _build(self) -> None:
        import torch
        from precision_suite.backends.torch.keep_fp32 import KeptBlocks

        self.fp8 = None
        if fp8_settings(self.policy) is not None:
            from precision_suite.backends.torch.fp8 import convert

            self.fp8 = convert(self.model, self.options.fp8_recipe, self.device, self.job.model.keep_fp32)
        # Kept blocks run with autocast off on fp32 inputs; their fp32 output meets autocast again.
        self.kept = KeptBlocks(self.model, self.job.model.keep_fp32, self.device.type, out_dtype=None)
        ls = self.job.loss_scale
        mode = self.job.loss_scaling_mode
        self.scaling = mode != "none"
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            init_scale=ls.init_scale,
            growth_factor=ls.growth_factor,
            backoff_factor=ls.backoff_factor,
            growth_interval=ls.growth_interval,
            enabled=self.scaling,
        )
        self._static_scale = (
            torch.full((), ls.init_scale, dtype=torch.float32, device=self.device) if mode == "static" else None
        )
        self.opt_params = list(self.model.parameters())
        self.optimizer = self._make_optimizer()
        self.autocast_enabled = self.policy.compute_dtype != "float32"

    def _forward(self, x: Any) -> Any:
        return self.run_block(self.forward_module, (x,), {})

    def observed_precision(self) -> dict[str, Any]:
        observed = super().observed_precision()
        if self.fp8 is not None:
            from precision_suite.backends.torch.fp8 import observe_fp8_operands

            was_training = self.model.training
            self.model.eval()  # no dropout RNG draw, no BatchNorm statistics update
            operands = observe_fp8_operands(self.model, self._forward, self.x_test[:16])
            self.model.train(was_training)
            observed["fp8_operands"] = operands
            observed["fp8_layers"] = list(self.fp8.converted)
        return observed

    def environment(self) -> dict[str, Any]:
        env = super().environment()
        if self.fp8 is not None:
            import importlib.metadata

            env["fp8"] = {**self.fp8.record(), "torchao_version": importlib.metadata.version("torchao")}
        return env

    def run_block(self, module: Any, args: Any, kwargs: Any) -> Any:
        import torch

        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.autocast_enabled):
            return module(*args, **kwargs)

    def _loss_scaling_mode(self) -> str:
        if not self.scaling:
            return "none"
        return "static" if self._static_scale is not None else "dynamic"

    def _scale_and_found_inf(self) -> tuple[Any, Any]:
        if not self.scaling:
            return self._one, self._zero
        # The scaler's own decision (what `update` consumes), read before `update` clears it.
        found = list(self.scaler._found_inf_per_device(self.optimizer).values())
        return self.scaler._scale.clone(), found[0] if len(found) == 1 else sum(found)

    def train_step(self, batch_indices: Any) -> None:
        import torch

        scaler = self.scaler
        loss_sum = None
        for rows in self._batch(batch_indices):
            loss = self._measured(rows, lambda loss: scaler.scale(loss).backward())
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        if self.job.train.grad_clip_norm is not None:
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.opt_params, self.job.train.grad_clip_norm, foreach=True)
        self.schedule.before_step()
        scaler.step(self.optimizer)
        scale_used, found_inf = self._scale_and_found_inf()
        if self._static_scale is not None:
            scaler.update(new_scale=self._static_scale)
        else:
            scaler.update()
        self.schedule.after_step(found_inf)
        self.optimizer.zero_grad(set_to_none=True)
        self.telemetry.record(loss_sum, scale_used, found_inf)

    def _extra_state(self) -> dict[str, Any]:
        if not self.scaling:
            return {"scaler": None}
        state = self.scaler.state_dict()
        return {"scaler": {"scale": state["scale"], "growth_tracker": state["_growth_tracker"]}}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if not self.scaling or state.get("scaler") is None:
            return
        full = self.scaler.state_dict()
        full["scale"] = float(state["scaler"]["scale"])
        full["_growth_tracker"] = int(state["scaler"]["growth_tracker"])
        self.scaler.load_state_dict(full)
