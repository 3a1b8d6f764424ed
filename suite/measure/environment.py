"""The environment of a record: the cores this process may use, the CPU model and its ISA
flags, the suite's git commit, versions and thread settings (docs/architecture.md,
"Measurement rules": every record carries them)."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


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
