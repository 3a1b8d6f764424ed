"""Shared helpers of the PyTorch backend tests; also a tiny CLI the resume test runs in a
fresh process (``python -m tests.backends.torch_helpers resume SPEC_JSON``)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from precision_suite.backends import get_backend_class
from precision_suite.config import (
    DataConfig,
    LossScaleConfig,
    MlpConfig,
    ParityConfig,
    RunnerConfig,
    TrainConfig,
)
from precision_suite.data import Dataset, batch_plan
from precision_suite.jobs import Job
from precision_suite.models import init_weights

REPO = Path(__file__).resolve().parents[2]


def tiny_data(n_train: int = 192, n_test: int = 64, seed: int = 0) -> Dataset:
    """A learnable 10-class problem on (1, 4, 4) images: the label is the argmax of a fixed
    linear map of the pixels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(len(x), -1) @ rng.standard_normal((16, 10))).argmax(1).astype(np.int64)
    return Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


def make_job(
    backend: str,
    policy: str,
    *,
    model: Any = None,
    train: dict[str, Any] | None = None,
    loss_scale: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Job:
    train_cfg = {"steps": 8, "batch_size": 16, "optimizer": {"name": "adam", "lr": 1e-2}}
    train_cfg.update(train or {})
    return Job(
        job_id=f"test/{backend}/{policy}",
        backend=backend,
        framework="torch",
        policy=policy,
        model=model or MlpConfig(hidden=[16], dropout=0.1),
        data=None,  # type: ignore[arg-type]
        seed=seed,
        device=device,
        train=TrainConfig.model_validate(train_cfg),
        loss_scale=LossScaleConfig.model_validate(loss_scale or {}),
        options=options or {},
        runner=RunnerConfig(),
        parity=ParityConfig(),
    )


def make_backend(job: Job, data: Dataset, weights: dict[str, np.ndarray] | None = None) -> Any:
    backend = get_backend_class(job.backend)()
    if weights is None:
        weights = init_weights(job.model, data.input_shape, data.num_classes, job.seed)
    backend.setup(job, weights, data)
    return backend


def plan(job: Job, data: Dataset) -> list[np.ndarray]:
    steps = batch_plan(len(data.x_train), job.train.batch_size, job.seed, job.train.epochs, job.train.steps)
    return [rows for _, rows in steps]


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


def run(backend: Any, rows: list[np.ndarray], start: int = 0, inject: Any = None) -> None:
    for i, batch in enumerate(rows, start=start):
        if inject is not None:
            inject.before(i)
        backend.train_step(batch)


def assert_states_equal(a: dict[str, Any], b: dict[str, Any], path: str = "") -> None:
    """Bit-for-bit equality of two nested plain/numpy states."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a)} != {set(b)}"
        for key in a:
            assert_states_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_states_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape}"
        assert np.array_equal(a, b, equal_nan=True), f"{path}: values differ"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


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
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.backends.torch_helpers",
            "resume",
            json.dumps(spec),
            str(state_path),
            str(out_path),
        ],
        cwd=REPO,
        check=True,
        timeout=120,
    )
    resumed = pickle.loads(out_path.read_bytes())
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
    and the unscaled run learns part of the way."""
    from precision_suite.data import load_dataset

    data = load_dataset(DataConfig())
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
    return out[0], out[1]
