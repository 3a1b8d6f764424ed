"""Shared helpers of the Keras backend tests (tf-keras, keras-jax); also a tiny CLI the resume
test runs in a fresh process (``python -m tests.backends.keras.keras_helpers resume SPEC_JSON
STATE_IN STATE_OUT``)."""

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

from tests.backends.torch_helpers import REPO, assert_states_equal

POISON = 0  # training row made to overflow fp16 (row values 1e6 > fp16 max 65504)


def tiny_data(poison: bool = True) -> Dataset:
    """A learnable 10-class problem on (1, 4, 4) images; row ``POISON`` overflows fp16."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(len(x), -1) @ rng.standard_normal((16, 10))).argmax(1).astype(np.int64)
    if poison:
        x[POISON] = 1e6
    return Dataset("tiny", x[:192], y[:192], x[192:], y[192:], 10)


def make_job(
    policy: str,
    *,
    backend: str = "tf-keras",
    model: Any = None,
    train: dict[str, Any] | None = None,
    loss_scale: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Job:
    train_cfg: dict[str, Any] = {"steps": 8, "batch_size": 16, "optimizer": {"name": "adam"}}
    train_cfg.update(train or {})
    return Job(
        job_id=f"test/{backend}/{policy}",
        backend=backend,
        framework=get_backend_class(backend).framework,
        policy=policy,
        model=model or MlpConfig(hidden=[16]),
        data=DataConfig(),
        seed=0,
        device="cpu",
        train=TrainConfig.model_validate(train_cfg),
        loss_scale=LossScaleConfig.model_validate(loss_scale or {}),
        options=options or {},
        runner=RunnerConfig(),
        parity=ParityConfig(),
    )


def make_backend(job: Job, data: Dataset) -> Any:
    backend = get_backend_class(job.backend)()
    backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, job.seed), data)
    return backend


def rows_of(job: Job, data: Dataset, overflow: set[int] = frozenset()) -> list[np.ndarray]:
    """The job's batch plan with the poisoned row swapped in on the ``overflow`` steps (and
    kept out of every other step)."""
    plan = batch_plan(len(data.y_train), job.train.batch_size, 0, None, job.train.steps)
    out = []
    for i, (_, rows) in enumerate(plan):
        rows = np.where(rows == POISON, 1, rows)
        if i in overflow:
            rows[0] = POISON
        out.append(rows)
    return out


# growth_interval 3 with an overflow at step 1: clean steps 2, 3, 4 grow the scale after step 4,
# so the checkpoint at k=4 sits just before a growth event.
RESUME = {
    "policy": "fp16-mixed",
    "loss_scale": {"init_scale": 1024.0, "growth_interval": 3},
    "overflow": [1],
    "k": 4,
    "n": 8,
}


def resume_job(spec: dict) -> Job:
    return make_job(
        spec["policy"],
        backend=spec["backend"],
        train={"steps": spec["n"], "grad_clip_norm": 1.0},
        loss_scale=spec["loss_scale"],
    )


def resume_in_this_process(spec: dict, state_path: str, out_path: str) -> None:
    data = tiny_data()
    job = resume_job(spec)
    backend = make_backend(job, data)
    with open(state_path, "rb") as f:
        backend.load_state_dict(pickle.load(f))
    for batch in rows_of(job, data, set(spec["overflow"]))[spec["k"] :]:
        backend.train_step(batch)
    result = {"state": backend.state_dict(), "telemetry": backend.drain_telemetry().loss}
    with open(out_path, "wb") as f:
        pickle.dump(result, f)


def assert_resume_matches_uninterrupted(tmp_path: Path, backend_name: str, spec: dict = RESUME) -> dict[str, Any]:
    """Checkpoint at step k, resume in a fresh process: the final state and the losses after k
    equal an uninterrupted run's bit for bit. Returns the step-k checkpoint."""
    spec = {**spec, "backend": backend_name}
    data = tiny_data()
    job = resume_job(spec)
    backend = make_backend(job, data)
    rows = rows_of(job, data, set(spec["overflow"]))
    for batch in rows[: spec["k"]]:
        backend.train_step(batch)
    checkpoint = backend.state_dict()
    backend.drain_telemetry()
    for batch in rows[spec["k"] :]:
        backend.train_step(batch)
    uninterrupted = backend.state_dict()
    tail = backend.drain_telemetry().loss
    backend.teardown()

    state_in, state_out = tmp_path / "k.pkl", tmp_path / "n.pkl"
    state_in.write_bytes(pickle.dumps(checkpoint))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.backends.keras.keras_helpers",
            "resume",
            json.dumps(spec),
            str(state_in),
            str(state_out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    resumed = pickle.loads(state_out.read_bytes())
    assert_states_equal(uninterrupted, resumed["state"])
    np.testing.assert_array_equal(tail, resumed["telemetry"])
    return {"checkpoint": checkpoint, "final": uninterrupted}


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        resume_in_this_process(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
