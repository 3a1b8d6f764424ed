"""Measurement: timing windows closed by a device sync, and the environment of a record.

Timing rules (docs/architecture.md, "Measurement rules"): warm-up steps are excluded and reported apart; a timing window
closes with ``backend.synchronize()``; per-step times are window means (no per-step sync);
evaluation and telemetry reads happen outside the timed windows.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


class WindowTimer:
    """Accumulates timed windows of whole steps. ``open()`` starts a window; ``close(steps)``
    syncs the device, then stops the clock and records the window's mean step time."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self._synchronize = synchronize
        self._start: float | None = None
        self.window_step_s: list[float] = []
        self.window_steps: list[int] = []

    @property
    def is_open(self) -> bool:
        return self._start is not None

    def open(self) -> None:
        self._start = time.perf_counter()

    def close(self, steps: int) -> None:
        if self._start is None:
            return
        self._synchronize()
        elapsed = time.perf_counter() - self._start
        self._start = None
        if steps > 0:
            self.window_step_s.append(elapsed / steps)
            self.window_steps.append(steps)

    @property
    def timed_s(self) -> float:
        return float(sum(s * n for s, n in zip(self.window_step_s, self.window_steps, strict=True)))

    @property
    def timed_steps(self) -> int:
        return int(sum(self.window_steps))

    def summary(self, batch_size: int) -> dict[str, float | None]:
        if not self.window_step_s:
            return {"samples_per_s": None, "step_time_ms_p50": None, "step_time_ms_p90": None}
        # Percentiles over per-step times, each window's mean standing for its steps.
        per_step_ms = np.repeat(np.array(self.window_step_s) * 1e3, self.window_steps)
        return {
            "samples_per_s": self.timed_steps * batch_size / self.timed_s,
            "step_time_ms_p50": float(np.percentile(per_step_ms, 50)),
            "step_time_ms_p90": float(np.percentile(per_step_ms, 90)),
        }


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container's
    cpuset), not every core of the machine: the default thread count of every framework."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@cache
def cpu_info() -> dict[str, Any]:
    """CPU model and the ISA flags that decide whether half precision is accelerated."""
    # /proc/cpuinfo (Linux) names the model and its flags; elsewhere only the platform's name.
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    model = model or platform.processor() or "unknown"
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_available": available_cores(),
        "cpu_flags": {
            name: name in flags
            for name in ("avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "amx_tile")
        },
    }


@cache
def git_commit() -> str | None:
    """Commit of the suite's own source tree, if it is a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def base_environment() -> dict[str, Any]:
    """What every record carries regardless of framework."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "hostname": platform.node(),
        **cpu_info(),
        "git_commit": git_commit(),
        "threads_env": {
            k: os.environ.get(k)
            for k in (
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS",
            )
        },
    }
