"""The paired speed phase, run in a worker: speed you can trust.

A speedup is never a ratio of two jobs timed alone at different moments: load drift (another
process, a thermal step, a noisy neighbour) would land on one side only. Instead, per
(framework, model, dataset, device) one worker sets up every policy's backend once — the same
initial weights, the same batches — and times them in rotation in short windows::

    round r:  fp32, c1, fp32, c2, fp32, ..., cn, fp32        (candidate order reversed on odd r)

The windows, the rotation, the median and its CI and the noise labels are
``precision_suite.measure.timing``'s; this module sets the sides up, runs the phase and writes
its record.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from precision_suite.measure.timing import SystemLoad, WindowSample, assess, measure_window, rotation
from precision_suite.results import SCHEMA, SPEED_KIND

# A worker message: set a phase's sides up ahead of it (``warm_speed_task``).
WARM_KIND = "warm"
# Warm-up steps of every side before any timing (compilation, autotuning, allocator growth);
# more when the job's train.timing_warmup_steps says so.
MIN_WARMUP_STEPS = 3
# Rows of the batch plan staged on the device; windows cycle through them.
PLAN_STEPS = 200
MAX_WINDOW_STEPS = 10_000


# ---------------------------------------------------------------- the speed phase
@dataclass
class SpeedTask:
    """One timed phase: the jobs of one (model, dataset, device) of one API family on one runtime,
    baseline first: they share one worker process (the runtime's). ``kind`` tells an executor
    this is a timed phase (exclusive use of the machine)."""

    job_id: str
    runtime: str
    jobs: list[Any]  # precision_suite.jobs.Job; jobs[0] is the fp32 baseline
    rounds: int
    window_ms: float
    batch_probe: bool
    kind: ClassVar[str] = SPEED_KIND
    is_timed_phase: ClassVar[bool] = True
    world_size: ClassVar[int] = 1  # one device: the phase times policies against each other there

    @property
    def model(self) -> Any:
        return self.jobs[0].model

    @property
    def family(self) -> str:
        return self.jobs[0].family

    @property
    def backend(self) -> str:
        """The baseline's backend: whose framework must be available for the phase to run."""
        return self.jobs[0].backend

    @property
    def timed(self) -> bool:
        """An executor gives a timed phase the machine (a cluster node) to itself."""
        return self.is_timed_phase

    @property
    def device(self) -> str:
        return self.jobs[0].device

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "framework": self.runtime,
            "jobs": [job.to_dict() for job in self.jobs],
            "rounds": self.rounds,
            "window_ms": self.window_ms,
            "batch_probe": self.batch_probe,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeedTask:
        from precision_suite.jobs import Job

        jobs = [Job.from_dict(j) for j in raw["jobs"]]
        return cls(raw["job_id"], raw["framework"], jobs, raw["rounds"], raw["window_ms"], raw["batch_probe"])


def new_speed_record(task: SpeedTask) -> dict[str, Any]:
    """A speed record: shares the job record's identifying keys (``job_id``, ``status``), told
    apart by ``kind`` (``precision_suite.results.read_records`` files it under ``speed``)."""
    first = task.jobs[0]
    return {
        "schema": SCHEMA,
        "kind": SPEED_KIND,
        "job_id": task.job_id,
        "framework": task.runtime,
        "family": task.family,
        "model": first.model.name,
        "dataset": first.data.name,
        "device": first.device,
        "status": None,
        "error": None,
        "config": task.to_dict(),
        "environ": {},
        "speed": {},
    }


@dataclass
class _Side:
    label: str
    job: Any
    backend: Any
    batches: Sequence[Any]
    steps: int = 1
    cursor: int = 0

    def run(self, steps: int) -> int:
        for _ in range(steps):
            self.backend.train_step(self.batches[self.cursor % len(self.batches)])
            self.cursor += 1
        self.backend.synchronize()
        return steps

    def window(self, load: SystemLoad, steps: int | None = None) -> WindowSample:
        self.backend.activate()
        sample = measure_window(lambda: self.run(steps or self.steps), load)
        self.backend.drain_telemetry()  # outside the window: keeps device telemetry bounded
        return sample


def _size_window(side: _Side, load: SystemLoad, window_ms: float) -> float:
    """Steps per window so one lasts about ``window_ms``; returns the probed step time (s)."""
    # Single-step probes: a large model's step can take a second; the median of three keeps
    # one preempted probe from sizing every window.
    probes = [side.window(load, 1).step_s for _ in range(3)]
    step_s = max(statistics.median(probes), 1e-7)
    side.steps = int(min(max(math.ceil(window_ms / 1e3 / step_s), 1), MAX_WINDOW_STEPS))
    return step_s


def _side_backend(job: Any) -> tuple[Any, str | None]:
    """The backend class of one side of a phase, with ``job.device`` resolved, and why that side
    cannot run here (None when it can)."""
    from precision_suite.backends import get_backend_class
    from precision_suite.backends.base import Availability, DeviceUnavailable

    cls = get_backend_class(job.backend)
    available = cls.is_available()
    try:
        job.device = cls.resolve_device(job.device)
    except DeviceUnavailable as exc:
        available = Availability(False, str(exc))
    return cls, available.reason if not available.ok else cls.unsupported_reason(job.policy, job.device)


def _phase_rows(job: Any, data: Any) -> Any:
    """The rows of the ``PLAN_STEPS`` batches every side of a phase trains on, (steps, batch)."""
    import numpy as np
    from precision_suite.data import batch_plan

    plan = batch_plan(len(data.y_train), job.train.batch_size, job.seed, None, PLAN_STEPS)
    return np.stack([rows for _, rows in plan])


def warm_speed_task(task: SpeedTask) -> None:
    """Do ahead of a phase (while other work still runs) what its timing must not wait for: the
    framework and data loaded, each side set up once and torn down (a backend may keep what it
    compiled for the phase's own setup: the Keras compiled-step cache). Never raises: the phase
    itself reports what fails."""
    from precision_suite.measure.loop import cached_dataset
    from precision_suite.models import initial_weights

    try:
        base_job = task.jobs[0]
        data = cached_dataset(base_job)
        weights = initial_weights(base_job, data)
        probe = _half_batch_job(base_job) if task.batch_probe else None
        for job in [*task.jobs, *([probe] if probe is not None else [])]:
            cls, reason = _side_backend(job)
            if reason:
                continue
            backend = cls()
            try:
                # Setup only: a first step would compile what compiles lazily (a jitted step) too,
                # but measured on the 2-core CPU that work, done beside the side-by-side training
                # jobs, cost them more time than it saved the phases.
                backend.setup(job, weights, data)
            finally:
                backend.teardown()
    except Exception:
        traceback.print_exc()


def run_speed_task(task: SpeedTask, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run one timed phase in this process and return its record; never raises for a failure."""
    from precision_suite.measure.environment import base_environment
    from precision_suite.measure.loop import cached_dataset, is_oom, one_line
    from precision_suite.models import initial_weights

    started = time.perf_counter()
    record = new_speed_record(task)
    record["environ"] = base_environment()
    sides: list[_Side] = []
    skipped: dict[str, str] = {}
    try:
        base_job = task.jobs[0]
        data = cached_dataset(base_job)
        weights = initial_weights(base_job, data)
        rows = _phase_rows(base_job, data)
        unavailable = _set_up_sides(task, weights, data, rows, sides, skipped)
        if unavailable:
            record.update(status="unavailable", error=unavailable)
            return record
        record["device"] = base_job.device
        record["environ"].update(sides[0].backend.environment())
        load = SystemLoad()
        for side in sides:
            side.backend.activate()
            side.run(max(base_job.train.timing_warmup_steps, MIN_WARMUP_STEPS))
            side.backend.drain_telemetry()
        probe_step_s = {side.label: _size_window(side, load, task.window_ms) for side in sides}

        def on_round(r: int) -> None:
            if progress is not None:
                progress(r, task.rounds)

        base, candidates = sides[0], sides[1:]
        rot = rotation(
            lambda: base.window(load), [lambda s=s: s.window(load) for s in candidates], task.rounds, on_round
        )
        speed = _phase_results(task, sides, rot, probe_step_s, skipped)
        speed["input_shape"] = list(data.input_shape)
        speed["num_classes"] = data.num_classes
        speed["batch_size"] = base_job.train.batch_size
        if task.batch_probe:
            speed["batch_scaling"] = _batch_scaling(base, data, weights, rows, load)
        speed["matmul_tflops"] = _matmul_rates(base)
        record["speed"] = speed
        record["status"] = "ok"
    except Exception as exc:  # a failed phase is data, not a crash of the run
        traceback.print_exc()
        record.update(status="oom" if is_oom(exc) else "error", error=one_line(exc))
    finally:
        for side in reversed(sides):
            try:
                side.backend.teardown()
            except Exception:
                traceback.print_exc()
        record["speed"]["wall_s"] = time.perf_counter() - started
    return record


def _set_up_sides(
    task: SpeedTask, weights: Any, data: Any, rows: Any, sides: list[_Side], skipped: dict[str, str]
) -> str | None:
    """Set every side of the phase up, appending it to ``sides`` (set up, so torn down even if a
    later one fails); a candidate that cannot run here goes to ``skipped`` with the reason. Returns
    why the phase cannot run at all (its baseline cannot), else None."""
    for job in task.jobs:
        label = f"{job.backend} {job.policy}"
        cls, reason = _side_backend(job)
        if reason:
            if job is task.jobs[0]:
                return f"baseline {label}: {reason}"
            skipped[label] = reason
            continue
        backend = cls()
        backend.setup(job, weights, data)
        sides.append(_Side(label, job, backend, backend.prepare_batches(rows)))
    return None


def _phase_results(
    task: SpeedTask, sides: list[_Side], rot: Any, probe_step_s: dict[str, float], skipped: dict[str, str]
) -> dict[str, Any]:
    """The ``speed`` section of the phase's record: each candidate's paired speedup and noise label
    (``precision_suite.measure.timing.assess``), every window, and each side's environment."""
    from precision_suite.measure.environment import available_cores

    base, candidates = sides[0], sides[1:]
    baseline_windows = [w for ws in rot.baseline for w in ws]
    results = []
    for side, windows, speedups in zip(candidates, rot.candidates, rot.speedups, strict=True):
        estimate = assess(speedups, baseline_windows, windows)
        results.append(
            {"backend": side.job.backend, "policy": side.job.policy, **asdict(estimate), "round_speedups": speedups}
        )
    speed: dict[str, Any] = {
        "baseline": {"backend": base.job.backend, "policy": base.job.policy},
        "rounds": task.rounds,
        "window_ms": task.window_ms,
        "threads_available": available_cores(),
        "candidates": results,
        "skipped": skipped,
        "windows": {
            side.label: {
                "steps_per_window": side.steps,
                "probe_step_ms": probe_step_s[side.label] * 1e3,
                "samples": [asdict(w) for w in windows],
            }
            for side, windows in [(base, baseline_windows), *zip(candidates, rot.candidates, strict=True)]
        },
        "environ_by_side": {side.label: side.backend.environment() for side in sides},
        "observed_by_side": {side.label: side.backend.observed_precision() for side in sides},
    }
    speed["baseline_step_ms"] = statistics.median(w.step_s for w in baseline_windows) * 1e3
    return speed


def _half_batch_job(job: Any) -> Any | None:
    """The baseline job at half its batch (the batch probe's other side), if that splits into its
    micro-batches."""
    import dataclasses

    half = job.train.batch_size // 2
    if half < 1 or half % job.train.grad_accumulation:
        return None
    return dataclasses.replace(job, train=job.train.model_copy(update={"batch_size": half}))


def _batch_scaling(base: _Side, data: Any, weights: Any, rows: Any, load: SystemLoad) -> dict[str, Any] | None:
    """fp32 step time at the full batch over the step time at half of it, timed alternately
    (3 rounds): ≈ 2 when the step is compute-bound, ≈ 1 when fixed per-step overhead dominates."""

    from precision_suite.backends import get_backend_class

    job = base.job
    half_job = _half_batch_job(job)
    if half_job is None:
        return None
    half = half_job.train.batch_size
    backend = get_backend_class(job.backend)()
    backend.setup(half_job, weights, data)
    try:
        side = _Side(f"{base.label} batch {half}", half_job, backend, backend.prepare_batches(rows[:, :half]))
        side.run(MIN_WARMUP_STEPS)
        backend.drain_telemetry()
        side.steps = base.steps
        full_s, half_s = [], []
        for _ in range(3):
            full_s.append(base.window(load).step_s)
            half_s.append(side.window(load).step_s)
        ratio = statistics.median(full_s) / statistics.median(half_s)
        return {"batch_size": job.train.batch_size, "half_batch_size": half, "step_time_ratio": ratio}
    finally:
        backend.teardown()
        base.backend.activate()


def _matmul_rates(base: _Side) -> dict[str, float]:
    """The framework's measured large-matmul TFLOP/s in the baseline's dtype on this device:
    the ceiling the baseline's achieved FLOP/s is held against (diagnose.py). Half dtypes are
    not measured: an emulated one (fp16 in TF on a CPU) would take seconds."""
    from precision_suite.backends.policy import get_policy

    dtype = get_policy(base.job.policy).compute_dtype
    base.backend.activate()
    rate = base.backend.matmul_tflops(dtype)
    return {} if rate is None else {dtype: rate}
