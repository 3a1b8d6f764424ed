"""A framework-free backend for testing the runner: softmax regression in NumPy, with faults
that a test can inject through its options (crash, hang, OOM, divergence, an exception)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
from precision_suite.backends.base import (
    Availability,
    Backend,
    EvalResult,
    MemoryStats,
    Telemetry,
)
from precision_suite.backends.policy import get_policy
from precision_suite.models import prepare_inputs
from pydantic import BaseModel, ConfigDict


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    crash_at_step: int | None = None  # SIGKILL the worker at this step
    segfault_at_step: int | None = None  # SIGSEGV the worker at this step
    hang_at_step: int | None = None  # sleep forever at this step
    oom_at_step: int | None = None  # raise MemoryError at this step
    nan_from_step: int | None = None  # loss becomes NaN from this step on
    raise_at_step: int | None = None  # raise RuntimeError at this step
    fault_seeds: list[int] | None = None  # the faults apply only to these seeds (None: all)
    fault_policies: list[str] | None = None  # ... and only to these policies (None: all)
    lr_factor: float = 1.0  # a deliberately wrong learning rate (a broken candidate)
    step_sleep_s: float = 0.0
    oom_above_batch: int | None = None  # raise MemoryError in setup when batch_size is larger
    # SIGKILL the worker's parent at this step: a Ray task's process (never use it locally:
    # the parent there is the runner)
    kill_parent_at_step: int | None = None
    sleep_seeds: list[int] | None = None  # step_sleep_s applies only to these seeds (None: all)


class FakeBackend(Backend):
    name = "fake"
    framework = "numpy"
    policies = ("fp32", "tf32", "fp16-mixed")
    Options = FakeOptions

    @staticmethod
    def is_available() -> Availability:
        return Availability(True)

    @classmethod
    def sees_cuda(cls) -> bool:
        # NumPy runs anywhere: it "sees" whatever GPUs the process was given (Ray sets
        # CUDA_VISIBLE_DEVICES from logical GPUs), so GPU placement is testable without one.
        return bool(os.environ.get("CUDA_VISIBLE_DEVICES"))

    def setup(self, job: Any, init_weights: dict[str, np.ndarray], data: Any) -> None:
        self.job = job
        self.options = FakeOptions.model_validate(job.options)
        faulty = (self.options.fault_seeds is None or job.seed in self.options.fault_seeds) and (
            self.options.fault_policies is None or job.policy in self.options.fault_policies
        )
        self.faults = self.options if faulty else FakeOptions()
        if self.faults.oom_above_batch is not None and job.train.batch_size > self.faults.oom_above_batch:
            raise MemoryError(f"fake allocator: out of memory at batch size {job.train.batch_size}")
        self.x = prepare_inputs(job.model, data.x_train).reshape(len(data.x_train), -1)
        self.y = data.y_train
        self.x_test = prepare_inputs(job.model, data.x_test).reshape(len(data.x_test), -1)
        self.y_test = data.y_test
        # NumPy computes in float16 natively: the fp16 policy is real, not a label.
        self.compute_dtype = np.dtype(get_policy(job.policy).compute_dtype)
        rng = np.random.default_rng(job.seed)
        self.w = rng.standard_normal((self.x.shape[1], data.num_classes)).astype(np.float32) * 0.01
        self.lr = job.train.optimizer.lr * 10 * self.faults.lr_factor
        self.step = 0
        self.losses: list[float] = []

    def _loss_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        logits = (x.astype(self.compute_dtype) @ self.w.astype(self.compute_dtype)).astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        p[np.arange(len(y)), y] -= 1
        return loss, x.T @ p / len(y), logits

    def train_step(self, batch_indices: np.ndarray) -> None:
        f, step = self.faults, self.step
        if f.crash_at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        if f.segfault_at_step == step:
            os.kill(os.getpid(), signal.SIGSEGV)
        if f.hang_at_step == step:
            while True:
                time.sleep(1)
        if f.oom_at_step == step:
            raise MemoryError("fake allocator: out of memory")
        if f.raise_at_step == step:
            raise RuntimeError("injected failure")
        if f.kill_parent_at_step == step:
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)  # until the parent's death takes this worker with it
        sleeps = self.options.sleep_seeds is None or self.job.seed in self.options.sleep_seeds
        if self.options.step_sleep_s and sleeps:
            time.sleep(self.options.step_sleep_s)
        loss, grad, _ = self._loss_grad(self.x[batch_indices], self.y[batch_indices])
        if f.nan_from_step is not None and step >= f.nan_from_step:
            loss = float("nan")
        else:
            self.w -= self.lr * grad
        self.losses.append(loss)
        self.step += 1

    def drain_telemetry(self) -> Telemetry:
        loss = np.array(self.losses)
        self.losses = []
        return Telemetry(loss, np.ones_like(loss), np.zeros(len(loss), bool))

    def evaluate(self) -> EvalResult:
        loss, _, logits = self._loss_grad(self.x_test, self.y_test)
        return EvalResult(loss, float((logits.argmax(1) == self.y_test).mean()))

    def memory_stats(self) -> MemoryStats:
        return MemoryStats(int(self.w.nbytes), "accounting (cpu)", {"weights": int(self.w.nbytes)})

    def observed_precision(self) -> dict[str, Any]:
        dtype = str((self.x[:1].astype(self.compute_dtype) @ self.w.astype(self.compute_dtype)).dtype)
        return {
            "compute_dtype": dtype,
            "param_dtype": str(self.w.dtype),
            "master_dtype": str(self.w.dtype),
            "loss_scaling": "none",
        }


class MissingFrameworkBackend(FakeBackend):
    """Stands for a backend whose framework is not installed."""

    name = "fake-missing"
    framework = "nonexistent"

    @staticmethod
    def is_available() -> Availability:
        return Availability(False, "nonexistent-framework is not installed")
