"""Helpers of the PyTorch backend tests; also a tiny CLI the resume test runs in a fresh
process (``python -m tests.helpers.torch resume SPEC_JSON``)."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

from precision_suite.config import DataConfig, MlpConfig
from precision_suite.data import Dataset
from precision_suite.jobs import Job

from tests.helpers.backends import (
    assert_states_equal,
    make_backend,
    make_job,
    plan,
    resume_in_fresh_process,
    run,
    tiny_data,
)


class OverflowInjector:
    """Adds inf to the first parameter's gradient on chosen steps (a gradient hook, so the
    overflow enters where a real one would: during backward)."""

    def __init__(self, backend: Any, steps: set[int]) -> None:
        import torch

        param = next(backend.model.parameters())
        self.flag = torch.zeros((), dtype=param.dtype, device=param.device)
        self.steps = steps
        param.register_hook(lambda grad: grad + self.flag)

    def before(self, step: int) -> None:
        self.flag.fill_(float("inf") if step in self.steps else 0.0)


def resume_spec(
    backend: str,
    policy: str,
    loss_scale: dict,
    overflow: list[int],
    k: int,
    n: int,
    train: dict[str, Any] | None = None,
) -> dict:
    """``train``: overrides of the job's train section (e.g. another optimizer)."""
    return {
        "backend": backend,
        "policy": policy,
        "loss_scale": loss_scale,
        "overflow": overflow,
        "k": k,
        "n": n,
        "train": train or {},
    }


def job_of(spec: dict) -> Job:
    return make_job(
        spec["backend"],
        spec["policy"],
        train={"steps": spec["n"], "grad_clip_norm": 1.0, **spec["train"]},
        loss_scale=spec["loss_scale"],
    )


def resume_in_this_process(spec: dict, state_path: str, out_path: str) -> None:
    """Fresh setup, load the step-k checkpoint, run steps k..n, write the final state."""
    data = tiny_data()
    job = job_of(spec)
    backend = make_backend(job, data)
    inject = OverflowInjector(backend, set(spec["overflow"]))
    with open(state_path, "rb") as f:
        backend.load_state_dict(pickle.load(f))
    run(backend, plan(job, data)[spec["k"] :], start=spec["k"], inject=inject)
    with open(out_path, "wb") as f:
        pickle.dump(backend.state_dict(), f)


def assert_resume_matches_uninterrupted(tmp_path: Path, spec: dict) -> None:
    """Checkpoint at step k, resume in a fresh process: the final state equals an uninterrupted
    run of the same steps bit for bit."""
    data = tiny_data()
    job = job_of(spec)
    backend = make_backend(job, data)
    inject = OverflowInjector(backend, set(spec["overflow"]))
    rows = plan(job, data)
    run(backend, rows[: spec["k"]], inject=inject)
    state_path, out_path = tmp_path / "k.pkl", tmp_path / "final.pkl"
    state_path.write_bytes(pickle.dumps(backend.state_dict()))
    run(backend, rows[spec["k"] :], start=spec["k"], inject=inject)
    uninterrupted = backend.state_dict()
    resumed = resume_in_fresh_process("tests.helpers.torch", spec, state_path, out_path, timeout=120)
    assert_states_equal(uninterrupted, resumed)
    assert uninterrupted["skipped_steps"] == len(spec["overflow"])


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        resume_in_this_process(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])


def underflow_control(backend_name: str) -> tuple[dict[str, float], dict[str, float]]:
    """fp16-mixed on a 9-layer sigmoid stack (whose backward shrinks gradients ~4x per layer,
    so without scaling fp16 flushes every useful gradient to zero), with loss scaling disabled
    and enabled: final train loss (mean of the last 10 steps) and test accuracy of each.
    Eight layers are not enough: Adam amplifies the few gradients that survive as subnormals,
    and the unscaled run learns part of the way.

    oneDNN is switched off for it: on CPUs with AVX512_FP16 its native fp16 kernels (measured on a
    Xeon with AVX512_FP16/AMX, torch 2.13) keep even the scaled run near ln 10 for 400 steps
    (loss 2.21 vs 1.95 with oneDNN off), which tests those kernels, not the loss scaler."""
    import torch
    from precision_suite.data import load_dataset

    data = load_dataset(DataConfig())
    out = []
    with torch.backends.mkldnn.flags(enabled=False):
        out = _underflow_runs(backend_name, data)
    return out[0], out[1]


def _underflow_runs(backend_name: str, data: Dataset) -> list[dict[str, float]]:
    out = []
    for enabled in (False, True):
        job = make_job(
            backend_name,
            "fp16-mixed",
            model=MlpConfig(hidden=[32] * 9, activation="sigmoid"),
            train={"steps": 400, "batch_size": 64, "optimizer": {"name": "adam", "lr": 1e-2}},
            loss_scale={"enabled": enabled},
        )
        backend = make_backend(job, data)
        run(backend, plan(job, data))
        loss = float(backend.drain_telemetry().loss[-10:].mean())
        out.append({"loss": loss, "accuracy": backend.evaluate().test_accuracy})
        backend.teardown()
    return out
