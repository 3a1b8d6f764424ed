"""Framework-neutral helpers of the backend tests: tiny data, jobs built directly, running a
batch plan, bit-for-bit state comparison."""

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

POISON = 0  # the training row ``tiny_data(poison=True)`` makes overflow fp16


def tiny_data(n_train: int = 192, n_test: int = 64, seed: int = 0, poison: bool = False) -> Dataset:
    """A learnable 10-class problem on (1, 4, 4) images: the label is the argmax of a fixed
    linear map of the pixels. ``poison``: row ``POISON`` is 1e6 everywhere (> fp16 max 65504)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(len(x), -1) @ rng.standard_normal((16, 10))).argmax(1).astype(np.int64)
    if poison:
        x[POISON] = 1e6
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
    """A job for ``backend`` built directly (no config file): 8 steps of batch 16, Adam 1e-2,
    an mlp [16] with dropout unless the arguments say otherwise."""
    train_cfg = {"steps": 8, "batch_size": 16, "optimizer": {"name": "adam", "lr": 1e-2}}
    train_cfg.update(train or {})
    return Job(
        job_id=f"test/{backend}/{policy}",
        backend=backend,
        family=get_backend_class(backend).family,
        runtime=get_backend_class(backend).runtime,
        policy=policy,
        model=model or MlpConfig(hidden=[16], dropout=0.1),
        data=DataConfig(),
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


def assert_learns_only_with_scaling(unscaled: dict[str, float], scaled: dict[str, float]) -> None:
    """The underflow positive control: without loss scaling the fp16 run does not learn (loss at
    ln 10, uniform predictions; accuracy at chance); with scaling the same run learns."""
    import math

    assert unscaled["loss"] > math.log(10) - 0.01
    assert unscaled["accuracy"] < 0.15
    assert scaled["loss"] < math.log(10) - 0.2
    assert scaled["accuracy"] > unscaled["accuracy"]


def resume_in_fresh_process(module: str, spec: dict[str, Any], state_in: Path, state_out: Path, timeout: float) -> Any:
    """Run ``python -m MODULE resume SPEC STATE_IN STATE_OUT`` from the repository root (a fresh
    interpreter loads the checkpoint pickled at ``state_in`` and finishes the run) and return what
    it pickled to ``state_out``."""
    subprocess.run(
        [sys.executable, "-m", module, "resume", json.dumps(spec), str(state_in), str(state_out)],
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    return pickle.loads(state_out.read_bytes())
