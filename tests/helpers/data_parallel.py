"""Helpers for the data-parallel tests: build one N-replica job and run it through the launcher
(real processes, loopback only, bounded timeouts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from precision_suite.config import validate
from precision_suite.jobs import Job
from precision_suite.plan import expand_jobs


def dp_config(backend: str, policy: str, world_size: int = 2, steps: int = 10, **distributed: Any) -> dict[str, Any]:
    return {
        "models": [{"kind": "mlp", "hidden": [32]}],
        "data": {"name": "digits"},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "warmup_steps": 2,
            "timing_window_steps": 4,
            "eval_every_epochs": 0,
        },
        "backends": {"names": [backend], "policies": {backend: [policy]}},
        "seeds": [0],
        "device": "cpu",
        "runner": {"job_timeout_s": 90, "threads": 2},
        "distributed": {"world_size": world_size, **distributed},
    }


def dp_job(backend: str, policy: str, world_size: int = 2, **kwargs: Any) -> Job:
    config = validate(dp_config(backend, policy, world_size, **kwargs), "test")
    return next(j for j in expand_jobs(config, "cpu") if j.world_size == world_size)


def run_dp(job: Job, tmp_path: Path, timeout_s: float = 300) -> dict[str, Any]:
    from precision_suite.execution.data_parallel import run_distributed

    env = dict(os.environ, OMP_NUM_THREADS="2", PRECISION_SUITE_THREADS="2", TF_CPP_MIN_LOG_LEVEL="2")
    return run_distributed(job, timeout_s, tmp_path / "logs", env)


def rank_processes_left() -> list[int]:
    """Children of this process still running a rank (they must all be gone after a job)."""
    me = str(os.getpid())
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid == me and b"precision_suite.execution.data_parallel" in cmdline:
            left.append(int(entry.name))
    return left


def assert_replicas_consistent(record: dict[str, Any], expect_skips: list[int]) -> None:
    replicas = record["distributed"]["replicas"]
    assert len(replicas) == record["world_size"]
    for replica in replicas:
        assert replica["skipped_steps"] == expect_skips, replicas
        assert replica["loss_scale_final"] == replicas[0]["loss_scale_final"]
        assert replica["params_sha256"] == replicas[0]["params_sha256"]
    assert record["metrics"]["skipped_steps"] == len(expect_skips)
