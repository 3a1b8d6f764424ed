"""What the two PyTorch backends share: device data, optimizer and lr
schedule, on-device telemetry, memory accounting, observed precision, environment, checkpoints.

This module does not import torch at module level (``precision_suite.backends.torch.amp`` and
``precision_suite.backends.torch.manual`` subclass ``TorchBackendBase`` and must stay importable without
torch); every method imports it where it needs it.

The lr schedule and skipped steps. ``backends/reference/lr_schedule.py``'s formula is indexed by *applied*
optimizer steps: a step skipped for overflow does not advance it. Where the skip decision is
made on the device (a fused optimizer given ``found_inf``: torch-manual and torch-amp with
``fused: true``, where ``backends/torch/optim.py`` finds the kernel right), an on-device counter
advances by ``found_inf == 0``; a non-constant lr is then a 0-d device tensor every param group
points at, filled before each step from a precomputed device table indexed by that counter.
No value crosses to the host. The table is float64 where the kernel takes it, so the lr is
exactly the configured double (a float32 table made 1e-3 into 1.0000000475e-3); a constant lr
stays the Python float, on any device. Where torch decides on the host
(``GradScaler.step`` with a non-fused optimizer reads ``found_inf`` with ``.item()`` and calls
``optimizer.step()`` only for a clean step), a step post-hook counts the calls that really ran
and the lr is a Python float; that adds no sync of our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.backends.base import (
    EVAL_BATCH,
    Backend,
    EvalResult,
    MemoryStats,
    Telemetry,
    module_available,
)
from precision_suite.backends.policy import get_policy
from precision_suite.backends.reference.lr_schedule import lr_table
from precision_suite.data import plan_steps
from precision_suite.measure.environment import cpu_info
from precision_suite.measure.memory import PrecisionLayout, account_job

if TYPE_CHECKING:
    import torch
    from precision_suite.backends.torch.optim import OptimizerImpl
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- numpy <-> torch for checkpoints
def to_plain(value: Any) -> Any:
    """Tensors → numpy (bfloat16 as its raw bits, tagged), recursively; the rest unchanged."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            return {"__bfloat16_bits__": t.view(torch.int16).numpy().copy()}
        return t.numpy().copy()
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_plain(v) for v in value)
    return value


def from_plain(value: Any) -> Any:
    """Inverse of ``to_plain`` (tensors on the CPU; callers move them)."""
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        if set(value) == {"__bfloat16_bits__"}:
            return torch.from_numpy(value["__bfloat16_bits__"].copy()).view(torch.bfloat16)
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(from_plain(v) for v in value)
    return value


# ---------------------------------------------------------------- optimizer and schedule
def build_optimizer(params: list[Any], job: Job, impl: OptimizerImpl) -> torch.optim.Optimizer:
    """torch semantics: sgd/adam ``weight_decay`` is L2 added to the gradient, adamw decays
    the weights directly. ``impl`` (``backends/torch/optim.py``'s ``choose_impl``) says which
    implementation: never a fused kernel that the probe found wrong for these parameters."""
    import torch
    from precision_suite.backends.torch.optim import build_torch_optimizer

    cfg = job.train.optimizer
    flag = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl.name]
    opt = build_torch_optimizer(params, cfg, cfg.lr, **flag)
    if cfg.name == "sgd" and cfg.momentum:
        # Buffers exist from the start: a fused SGD whose first step is skipped would
        # otherwise keep uninitialised buffers (it allocates them empty and the kernel
        # returns early); zeros give the same first update (buf = 0·m + g = g).
        for p in params:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt


class LrSchedule:
    """``backends/reference/lr_schedule.py``'s lr by applied optimizer step; see the module docstring."""

    def __init__(self, optimizer: Any, job: Job, total_steps: int, device: Any, on_device: bool) -> None:
        import torch
        from precision_suite.backends.torch.optim import device_lr_dtype

        self.optimizer = optimizer
        self.on_device = on_device
        self.table_host = lr_table(job.train.optimizer.lr, job.train.lr_schedule, total_steps)
        self.constant = len(set(self.table_host)) == 1
        self.on_device = on_device
        self.lr_dtype = "python float"
        if on_device:
            self.applied = torch.zeros((), dtype=torch.int64, device=device)
        else:
            self.applied_host = 0
            optimizer.register_step_post_hook(self._count)
        # A constant lr stays the Python float every group was built with: exactly what a
        # textbook loop passes, on any device, with nothing to follow on the device.
        if on_device and not self.constant:
            # float64 where the fused kernel takes it (it then reads the same double a Python
            # float gives); a float32 table would turn 1e-3 into 1.0000000475e-3.
            dtype = device_lr_dtype(optimizer, device)
            self.lr_dtype = f"{dtype_name(dtype)} tensor"
            self.table = torch.tensor(self.table_host, dtype=dtype, device=device)
            self.lr = self.table[0].clone()
            self.attach()

    def _count(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.applied_host += 1

    def attach(self) -> None:
        """Point every param group at the device lr (again after ``load_state_dict``)."""
        if self.on_device and not self.constant:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def before_step(self) -> None:
        if self.constant:
            return  # the lr every group already holds: nothing to do on the hot path
        if self.on_device:
            index = self.applied.clamp(max=len(self.table_host) - 1).view(1)
            self.lr.copy_(self.table.index_select(0, index).view(()))
        else:
            lr = self.table_host[min(self.applied_host, len(self.table_host) - 1)]
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def after_step(self, found_inf: torch.Tensor) -> None:
        if self.on_device:
            self.applied.add_((found_inf == 0).to(self.applied.dtype))

    @property
    def applied_steps(self) -> int:
        return int(self.applied) if self.on_device else self.applied_host

    def load(self, applied_steps: int) -> None:
        if self.on_device:
            self.applied.fill_(applied_steps)
        else:
            self.applied_host = applied_steps


# ---------------------------------------------------------------- telemetry and accounting
class DeviceTelemetry:
    """Per-step 0-d device tensors, stacked and copied to the host only in ``drain``."""

    def __init__(self, device: Any) -> None:

        self.losses: list[torch.Tensor] = []
        self.scales: list[torch.Tensor] = []
        self.skipped: list[torch.Tensor] = []
        self.skipped_drained = 0

    def record(self, loss: torch.Tensor, scale: torch.Tensor, found_inf: torch.Tensor) -> None:
        # Only list appends here: any op would cost a kernel launch per step on the hot path.
        self.losses.append(loss)
        self.scales.append(scale)
        self.skipped.append(found_inf)

    def skipped_steps(self) -> int:
        """Skipped steps so far, drained or not (reads the device: not for the hot path)."""
        pending = sum(int(float(flag) > 0) for flag in self.skipped)
        return self.skipped_drained + pending

    def drain(self) -> Telemetry:
        import torch

        if not self.losses:
            return Telemetry()
        stacked = torch.stack([torch.stack(self.losses), torch.stack(self.scales), torch.stack(self.skipped)])
        host = stacked.double().cpu().numpy()
        self.losses, self.scales, self.skipped = [], [], []
        self.skipped_drained += int((host[2] > 0).sum())
        return Telemetry(loss=host[0], loss_scale=host[1], skipped=host[2] > 0)


class ActivationCounter:
    """Bytes of the distinct storages autograd saves for backward, parameters excluded: used as
    ``saved_tensors_hooks(counter.pack, counter.unpack)`` around one forward/backward."""

    def __init__(self, exclude: list[Any]) -> None:
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: Any) -> Any:
        return tensor


def tensor_bytes(tensors: Any) -> int:
    import torch

    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
    return total


CUDA_PEAK = "torch.cuda.max_memory_allocated"
# A custom model's CPU figure: measured from its own tensors, not counted from a spec.
MEASURED_CPU = (
    "measured (cpu): the model's parameters, buffers, gradients, optimizer state and master copies, "
    "and the activations autograd saved in the first step (saved-tensor hooks)"
)


# ---------------------------------------------------------------- the shared base class
class TorchBackendBase(Backend):
    """Shared machinery; subclasses implement ``_build`` (model/optimizer/scaler),
    ``_forward`` (logits under the policy's compute precision) and ``train_step``."""

    family = "torch"
    runtime = "torch"

    @staticmethod
    def is_available():
        return module_available("torch")

    @classmethod
    def sees_cuda(cls) -> bool:
        import torch

        return torch.cuda.is_available()

    # -------------------------------------------------- setup
    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        import torch
        from precision_suite.backends.torch.models import build_torch_model
        from precision_suite.models import prepare_inputs

        if job.policy not in self.policies:
            raise ValueError(f'backend {self.name} has no policy "{job.policy}"; it has: {", ".join(self.policies)}')
        self.job = job
        self.policy = get_policy(job.policy)
        self.options = self.Options.model_validate(job.options)
        self.device = torch.device(job.device)
        self.compute_dtype = torch_dtype(self.policy.compute_dtype)
        self._save_globals()
        self._apply_globals()
        torch.manual_seed(job.seed)

        def upload(x: np.ndarray, dtype: Any = None) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype)

        self.x_train = upload(prepare_inputs(job.model, data.x_train))
        self.y_train = upload(data.y_train, torch.int64)
        self.x_test = upload(prepare_inputs(job.model, data.x_test))
        self.y_test = upload(data.y_test, torch.int64)
        self.n_micro = job.train.grad_accumulation
        self.activation_bytes: int | None = None
        self.data_shape = (tuple(data.input_shape), data.num_classes)

        model = build_torch_model(job.model, data.input_shape, data.num_classes, init_weights)
        self.model = model.to(self.device)
        self._build()
        self.forward_module = torch.compile(self.model) if getattr(self.options, "compile", False) else self.model
        self.schedule = LrSchedule(
            self.optimizer,
            job,
            plan_steps(len(data.x_train), job.train.batch_size, job.train.epochs, job.train.steps),
            self.device,
            on_device=self._fused,
        )
        self.telemetry = DeviceTelemetry(self.device)
        self._zero = torch.zeros((), dtype=torch.float32, device=self.device)
        self._one = torch.ones((), dtype=torch.float32, device=self.device)
        self.model.train()

    def _save_globals(self) -> None:
        import torch

        self._globals = {
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "threads": torch.get_num_threads(),
        }

    def _apply_globals(self) -> None:
        import torch

        tf32 = self.policy.tf32
        # Set explicitly both ways: the fp32 baseline must never silently run TF32. Only these
        # (legacy) flags: torch refuses to mix them with set_float32_matmul_precision.
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if self.job.runner.deterministic:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        if self.job.runner.threads:
            torch.set_num_threads(self.job.runner.threads)

    def _restore_globals(self) -> None:
        import torch

        g = getattr(self, "_globals", None)
        if g is None:
            return
        torch.backends.cuda.matmul.allow_tf32 = g["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = g["cudnn_tf32"]
        torch.backends.cudnn.deterministic = g["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = g["cudnn_benchmark"]
        torch.set_num_threads(g["threads"])
        self._globals = None

    # -------------------------------------------------- subclass hooks
    @property
    def _wants_fused(self) -> bool:
        """Whether this backend asks for the fused optimizer kernel (its skip decision then
        stays on the device); ``choose_impl`` grants it only where the kernel is right."""
        return True

    @property
    def _fused(self) -> bool:
        return self.optimizer_impl.fused

    def _make_optimizer(self) -> Any:
        from precision_suite.backends.torch.optim import choose_impl

        self.optimizer_impl = choose_impl(self.opt_params, self.job.train.optimizer, self._wants_fused)
        return build_optimizer(self.opt_params, self.job, self.optimizer_impl)

    def _build(self) -> None:
        """Turn ``self.model`` (fp32, on the device) into the policy's model; set
        ``self.optimizer``, ``self.opt_params`` and the scaler."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _master_tensors(self) -> list[Any]:
        return []

    def _grad_tensors(self) -> list[Any]:
        """Gradient tensors alive during a step (for the CPU accounting)."""
        return [p for p in self.model.parameters()]

    def _loss_scaling_mode(self) -> str:
        raise NotImplementedError

    # -------------------------------------------------- shared behaviour
    def prepare_batches(self, rows: np.ndarray) -> Sequence[Any]:
        import torch

        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        # One copy of the whole block; each step then indexes a (n_micro, micro) view of it.
        return idx.to(self.device).view(len(rows), self.n_micro, -1).unbind(0)

    def _batch(self, batch_indices: Any) -> torch.Tensor:
        import torch

        if isinstance(batch_indices, torch.Tensor):
            return batch_indices
        return self.prepare_batches(np.asarray(batch_indices)[None])[0]

    def _loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the rows in fp32 (from the logits), divided by the number of
        micro-batches so the accumulated gradient is the batch mean's."""
        import torch.nn.functional as F

        logits = self._forward(self.x_train.index_select(0, rows))
        # Over the last axis: labels (N,) or one per position (N, T), e.g. a language model's tokens.
        loss = F.cross_entropy(logits.float().flatten(0, -2), self.y_train.index_select(0, rows).flatten())
        return loss / self.n_micro if self.n_micro > 1 else loss

    def _measured(self, rows: torch.Tensor, backward: Any) -> torch.Tensor:
        """Loss + backward of one micro-batch; on the first step, counts the activations saved
        for backward (outside the measured steps: the loop's warm-up covers it)."""
        import torch

        if self.activation_bytes is not None or self.forward_module is not self.model:
            loss = self._loss(rows)
            backward(loss)
            return loss
        counter = ActivationCounter(list(self.model.parameters()))
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            loss = self._loss(rows)
            backward(loss)
        self.activation_bytes = counter.bytes
        return loss

    def drain_telemetry(self) -> Telemetry:
        return self.telemetry.drain()

    def evaluate(self) -> EvalResult:
        import torch
        import torch.nn.functional as F

        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for start in range(0, len(self.x_test), EVAL_BATCH):
                x = self.x_test[start : start + EVAL_BATCH]
                y = self.y_test[start : start + EVAL_BATCH]
                logits = self._forward(x).float()
                loss_sum += F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum").double()
                correct += (logits.argmax(dim=-1) == y).sum()
        self.model.train(was_training)
        n = self.y_test.numel()  # labels, one per row or per position: the mean is over every one
        return EvalResult(test_loss=float(loss_sum) / n, test_accuracy=int(correct) / n)

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_memory_stats(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory_layout(self) -> PrecisionLayout:
        """The dtypes this backend really holds, read from its tensors (for the accounting)."""
        master = self._master_tensors()
        grads = [dtype_name(max(self.model.parameters(), key=lambda p: p.numel()).dtype)]
        if master:
            grads.append(dtype_name(master[0].dtype))
        master_dtype = dtype_name(master[0].dtype) if master else None
        compute = dtype_name(self.compute_dtype)
        return PrecisionLayout(grads[0], compute, tuple(grads), master_dtype, master_dtype or grads[0])

    def memory_stats(self) -> MemoryStats:
        import torch

        params = list(self.model.parameters())
        observed = {
            "weights": tensor_bytes(params) + tensor_bytes(self.model.buffers()),
            "gradients": tensor_bytes(self._grad_tensors()),
            "optimizer_state": tensor_bytes(v for s in self.optimizer.state.values() for v in s.values()),
            "master_weights": tensor_bytes(self._master_tensors()),
        }
        if self.activation_bytes is not None:
            observed["activations"] = self.activation_bytes
        # A custom model has no spec to count from: its own tensors and what autograd really saved.
        custom = self.job.model.kind == "custom"
        if custom:
            breakdown = dict(observed)
        else:
            breakdown = account_job(self.job, *self.data_shape, self.memory_layout()).breakdown()
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device))
            return MemoryStats(peak, CUDA_PEAK, breakdown, observed)
        return MemoryStats(sum(breakdown.values()), MEASURED_CPU if custom else "accounting (cpu)", breakdown, observed)

    def activate(self) -> None:
        self._apply_globals()

    def matmul_tflops(self, dtype: str, seconds: float = 0.2) -> float | None:
        import time

        import torch

        if self.device.type == "cuda":
            from precision_suite.measure.flops import measure_matmul_tflops

            return measure_matmul_tflops(dtype, n=4096, iters=10, tf32=self.policy.tf32)
        n = 1024
        a = torch.randn(n, n, dtype=torch_dtype(dtype))
        b = torch.randn(n, n, dtype=torch_dtype(dtype))
        a @ b
        iters, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds or iters < 2:
            a @ b
            iters += 1
        return 2 * n**3 * iters / elapsed / 1e12

    def observed_precision(self) -> dict[str, Any]:
        import torch

        was_training = self.model.training
        self.model.eval()  # no dropout RNG draw, no BatchNorm statistics update
        kept = getattr(self, "kept", None)
        with torch.no_grad():
            if kept is not None and kept.names:
                # The logits may come from a kept block: the policy's compute dtype is read from
                # the first layer that is not kept; each kept block reports its own dtypes.
                blocks, compute = kept.observe(lambda: self._forward(self.x_test[:2]))
            else:
                blocks, compute = None, dtype_name(self._forward(self.x_test[:2]).dtype)
        self.model.train(was_training)
        inside = kept.inside() if kept is not None else set()
        # The policy's weights: those outside every kept block (all of them when nothing is left).
        free = [p for m in self.model.modules() if id(m) not in inside for p in m.parameters(recurse=False)]
        largest = max(free or self.model.parameters(), key=lambda p: p.numel())
        updated = self.optimizer.param_groups[0]["params"]
        kept_ids = {id(p) for m in self.model.modules() if id(m) in inside for p in m.parameters(recurse=False)}
        updated = [p for p in updated if id(p) not in kept_ids] or updated
        master = max(updated, key=lambda p: p.numel()).dtype if updated else None
        observed = {
            "compute_dtype": compute,
            "param_dtype": dtype_name(largest.dtype),
            "master_dtype": dtype_name(master) if master is not None else None,
            "loss_scaling": self._loss_scaling_mode(),
        }
        if blocks is not None:
            observed["keep_fp32"] = blocks
        return observed

    def environment(self) -> dict[str, Any]:
        import torch

        cuda = self.device.type == "cuda"
        return {
            "torch_version": torch.__version__,
            "device_name": torch.cuda.get_device_name(self.device) if cuda else cpu_info()["cpu_model"],
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "cuda_capability": list(torch.cuda.get_device_capability(self.device)) if cuda else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "compile": bool(getattr(self.options, "compile", False)),
            "optimizer_impl": self.optimizer_impl.name,
            "optimizer_impl_reason": self.optimizer_impl.reason,
            "lr_dtype": self.schedule.lr_dtype,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        }

    # -------------------------------------------------- bisect
    def block_names(self) -> list[str]:
        from precision_suite.backends.torch.keep_fp32 import candidate_blocks
        from precision_suite.models import BUILT_IN_KINDS, block_names

        kind = self.job.model.kind
        return block_names(self.job.model) if kind in BUILT_IN_KINDS else candidate_blocks(self.model)

    def run_block(self, module: Any, args: Any, kwargs: Any) -> Any:
        """One block of ``self.model`` under the policy, as the forward pass runs it: inputs in
        the working dtype (torch-manual's half copy); torch-amp runs it under autocast."""
        from precision_suite.backends.torch.keep_fp32 import cast_floats

        return module(*cast_floats(args, self.compute_dtype), **cast_floats(kwargs, self.compute_dtype))

    def probe_blocks(self, reference: Backend, names: list[str], steps: Sequence[np.ndarray]) -> list[Any]:
        from precision_suite.backends.torch.keep_fp32 import probe_blocks

        scale = self.job.loss_scale.init_scale if self.job.loss_scaling_mode != "none" else 1.0
        return probe_blocks(self, reference, names, list(steps), self.run_block, scale)

    # -------------------------------------------------- checkpoints
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        import torch

        opt_state = self.optimizer.state_dict()
        for group in opt_state["param_groups"]:
            group["lr"] = float(group["lr"])
        state = {
            "model": to_plain(self.model.state_dict()),
            "optimizer": to_plain(opt_state),
            "applied_steps": self.schedule.applied_steps,
            "skipped_steps": self.telemetry.skipped_steps(),
            "cpu_rng": to_plain(torch.get_rng_state()),
            "cuda_rng": to_plain(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None,
        }
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            self.model.load_state_dict(from_plain(state["model"]))
        self.optimizer.load_state_dict(from_plain(state["optimizer"]))
        self.schedule.attach()
        self.schedule.load(int(state["applied_steps"]))
        self.telemetry.skipped_drained = int(state["skipped_steps"])
        self.telemetry.losses, self.telemetry.scales, self.telemetry.skipped = [], [], []
        torch.set_rng_state(from_plain(state["cpu_rng"]))
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(from_plain(state["cuda_rng"]), self.device)
        self._load_extra_state(state)

    def teardown(self) -> None:
        import torch

        for attr in ("model", "forward_module", "optimizer", "x_train", "y_train", "x_test"):
            if hasattr(self, attr):
                delattr(self, attr)
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._restore_globals()
