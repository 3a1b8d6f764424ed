"""The suite's training loop: one job, start to finish, in the current process.

The loop never branches on precision or framework; the backend does the framework's work and
the loop owns timing, telemetry and the record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from precision_suite.backends import get_backend_class
from precision_suite.backends.base import Backend, DeviceUnavailable
from precision_suite.data import Dataset, batch_plan, load_dataset
from precision_suite.errors import first_line
from precision_suite.jobs import Job
from precision_suite.measure.environment import base_environment
from precision_suite.measure.timing import WindowTimer
from precision_suite.models import initial_weights, perturb_weights
from precision_suite.results import new_record

ProgressFn = Callable[[int, int], None]
# Steps whose batch indices a backend stages at once (Backend.prepare_batches).
PREPARE_BLOCK_STEPS = 1000


class Diverged(RuntimeError):
    def __init__(self, step: int, patience: int) -> None:
        super().__init__(
            f"loss non-finite for {patience} consecutive steps from step {step} (beyond what loss scaling absorbs)"
        )
        self.step = step


def is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    return (
        isinstance(exc, MemoryError)
        or "OutOfMemory" in name
        or "ResourceExhausted" in name
        or "out of memory" in str(exc).lower()
    )


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ")


_DATA_CACHE: dict[str, Dataset] = {}


def cached_dataset(job: Job) -> Dataset:
    """Datasets are loaded once per worker process and shared by its jobs (read-only)."""
    key = json.dumps(job.data.model_dump(mode="json"), sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(job.data)
    return _DATA_CACHE[key]


@dataclasses.dataclass
class _Curves:
    loss: list[np.ndarray] = dataclasses.field(default_factory=list)
    loss_scale: list[np.ndarray] = dataclasses.field(default_factory=list)
    skipped: list[np.ndarray] = dataclasses.field(default_factory=list)
    epoch_of_step: list[int] = dataclasses.field(default_factory=list)
    test_accuracy: list[float] = dataclasses.field(default_factory=list)
    eval_epoch: list[int] = dataclasses.field(default_factory=list)
    nonfinite_run: int = 0
    nonfinite_run_start: int = 0
    nonfinite_total: int = 0

    def absorb(self, backend: Backend, first_step: int, patience: int) -> None:
        tel = backend.drain_telemetry()
        loss = np.asarray(tel.loss, np.float64)
        self.loss.append(loss)
        self.loss_scale.append(np.asarray(tel.loss_scale, np.float64))
        self.skipped.append(np.asarray(tel.skipped, bool))
        for offset, value in enumerate(loss):
            if math.isfinite(value):
                self.nonfinite_run = 0
                continue
            self.nonfinite_total += 1
            if self.nonfinite_run == 0:
                self.nonfinite_run_start = first_step + offset
            self.nonfinite_run += 1
            if self.nonfinite_run >= patience:
                raise Diverged(self.nonfinite_run_start, patience)

    def concat(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros(0)


def train_timed(backend: Backend, job: Job, data: Dataset, record: dict[str, Any], progress: ProgressFn | None) -> None:
    """The training loop of one job as a run times it: the batch plan staged in blocks, warm-up
    steps apart, timing windows closed by a device sync, telemetry drained in bulk; fills
    ``record``'s metrics and curves. The harness-overhead benchmark times exactly this."""
    train = job.train
    plan = batch_plan(len(data.y_train), train.batch_size, job.seed, train.epochs, train.steps)
    if job.stop_after_steps:
        plan = plan[: job.stop_after_steps]
    total = len(plan)
    warmup = min(train.timing_warmup_steps, total)
    timer = WindowTimer(backend.synchronize)
    curves = _Curves()
    window = train.timing_window_steps
    # Batches are handed to the backend a block at a time (between timing windows: a block is
    # a whole number of windows), so it can stage many steps' indices on the device at once.
    block = window * max(1, PREPARE_BLOCK_STEPS // window)
    drained_upto = 0
    in_window = 0
    window_end_step: list[int] = []
    warmup_s = 0.0
    backend.synchronize()
    t0 = time.perf_counter()
    try:
        for i, (epoch, _rows) in enumerate(plan):
            if i % block == 0:
                batches = backend.prepare_batches(np.stack([r for _, r in plan[i : i + block]]))
            if i == warmup:
                backend.synchronize()
                warmup_s = time.perf_counter() - t0
            if i >= warmup and not timer.is_open:
                timer.open()
            backend.train_step(batches[i % block])
            curves.epoch_of_step.append(epoch)
            if timer.is_open:
                in_window += 1
            end_of_epoch = i + 1 == total or plan[i + 1][0] != epoch
            evaluate_now = end_of_epoch and train.eval_every_epochs and (epoch + 1) % train.eval_every_epochs == 0
            # A window closes when full, before an evaluation (kept out of timing), at the end of
            # warm-up and of a block, and at the end.
            if in_window == window or evaluate_now or i + 1 in (warmup, total) or (i + 1) % block == 0:
                if in_window:
                    window_end_step.append(i + 1)
                timer.close(in_window)
                in_window = 0
                curves.absorb(backend, drained_upto, train.divergence_patience)
                drained_upto = i + 1
                if progress is not None:
                    progress(i + 1, total)
                if evaluate_now:
                    curves.test_accuracy.append(backend.evaluate().test_accuracy)
                    curves.eval_epoch.append(epoch)
    finally:
        record["curves"] = _curves_dict(curves)
        # The timed windows themselves (not only their percentiles), for step-time statistics
        # downstream (benchmark.json, run-to-run diff) and step-time curves (export).
        record["curves"].update(
            {
                "window_end_step": window_end_step[: len(timer.window_steps)],
                "window_steps": list(timer.window_steps),
                "window_step_time_ms": [s * 1e3 for s in timer.window_step_s],
            }
        )
        record["metrics"].update(
            {
                "warmup_s": warmup_s,
                "warmup_steps": warmup,
                "timed_steps": timer.timed_steps,
                **timer.summary(train.batch_size),
            }
        )
    loss = curves.concat("loss")
    if len(loss) and not math.isfinite(loss[-1]):
        raise Diverged(curves.nonfinite_run_start, curves.nonfinite_run)
    last_epoch = np.asarray(curves.epoch_of_step) == curves.epoch_of_step[-1]
    scale = curves.concat("loss_scale")
    record["metrics"].update(
        {
            "train_loss": float(np.nanmean(np.where(np.isfinite(loss), loss, np.nan)[last_epoch])),
            "loss_scale_final": float(scale[-1]) if len(scale) else None,
            "skipped_steps": int(curves.concat("skipped").sum()),
            "nonfinite_loss_steps": curves.nonfinite_total,
        }
    )


def _curves_dict(curves: _Curves) -> dict[str, Any]:
    loss = curves.concat("loss")
    return {
        "step": list(range(len(loss))),
        "train_loss": [float(v) if math.isfinite(v) else None for v in loss],
        "loss_scale": [float(v) for v in curves.concat("loss_scale")],
        "skipped": [bool(v) for v in curves.concat("skipped")],
        "epoch": list(curves.epoch_of_step[: len(loss)]),
        "test_accuracy": curves.test_accuracy,
        "eval_epoch": curves.eval_epoch,
    }


def run_job(
    job: Job,
    progress: ProgressFn | None = None,
    backend_cls: type[Backend] | None = None,
    finish: Callable[[Backend, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one job and return its result record; never raises for a failure of the job.

    ``backend_cls`` replaces the registry's class of ``job.backend`` (a data-parallel variant,
    ``precision_suite.execution.data_parallel``); ``finish(backend, record)`` runs after training, before
    teardown, even when the job failed."""
    started = time.perf_counter()
    record = new_record(job)
    record["environ"] = base_environment()
    backend: Backend | None = None
    try:
        cls = backend_cls or get_backend_class(job.backend)
        available = cls.is_available()
        if not available.ok:
            record.update(status="unavailable", error=available.reason)
            return record
        try:
            device = cls.resolve_device(job.device)
        except DeviceUnavailable as exc:
            record.update(status="unavailable", error=str(exc))
            return record
        record["device"] = job.device = device
        reason = cls.unsupported_reason(job.policy, device)
        if reason:
            record.update(status="unavailable", error=reason)
            return record
        data = cached_dataset(job)
        weights = initial_weights(job, data)
        if job.perturb_ulp:
            weights = perturb_weights(weights, job.perturb_ulp)
        backend = cls()
        backend.setup(job, weights, data)
        record["environ"].update(backend.environment())
        backend.reset_memory_stats()
        train_timed(backend, job, data, record, progress)
        # After training: what ran includes state a policy writes only in training steps (the
        # amax histories of Keras' float8 layers, fp8-mixed's evidence that FP8 ran).
        record["observed"] = backend.observed_precision()
        result = backend.evaluate()
        memory = backend.memory_stats()
        record["metrics"].update(
            {
                "test_accuracy": result.test_accuracy,
                "test_loss": result.test_loss,
                "peak_memory_bytes": memory.peak_memory_bytes,
                "memory_source": memory.memory_source,
                "memory_breakdown": memory.breakdown,
                "memory_observed": memory.observed,
            }
        )
        record["status"] = "ok"
    except Diverged as exc:
        record.update(status="diverged", error=str(exc))
        record["metrics"]["diverged_at_step"] = exc.step
    except Exception as exc:  # a failed job is data, not a crash of the run
        traceback.print_exc()
        record.update(status="oom" if is_oom(exc) else "error", error=one_line(exc))
    finally:
        if backend is not None and finish is not None:
            finish(backend, record)
        if backend is not None:
            try:
                backend.teardown()
            except Exception:  # teardown failure must not hide the job's own result
                traceback.print_exc()
        record["metrics"]["wall_s"] = time.perf_counter() - started
    return record
