"""Helpers of the Keras backend tests (tf-keras, keras-jax); also a tiny CLI the resume test
runs in a fresh process (``python -m tests.helpers.keras resume SPEC_JSON STATE_IN STATE_OUT``)."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
from precision_suite.config import DataConfig, MlpConfig
from precision_suite.data import Dataset, batch_plan, load_dataset
from precision_suite.jobs import Job

from tests.helpers import backends
from tests.helpers.backends import POISON, assert_states_equal, make_backend, resume_in_fresh_process


def tiny_data(poison: bool = True) -> Dataset:
    """``backends.tiny_data``, poisoned by default: row ``POISON`` overflows fp16."""
    return backends.tiny_data(poison=poison)


def make_job(
    policy: str, *, backend: str = "tf-keras", model: Any = None, train: dict[str, Any] | None = None, **kwargs: Any
) -> Job:
    """A Keras job: an mlp [16] (no dropout), Adam at its default lr, unless told otherwise."""
    train_cfg: dict[str, Any] = {"optimizer": {"name": "adam"}, **(train or {})}
    return backends.make_job(backend, policy, model=model or MlpConfig(hidden=[16]), train=train_cfg, **kwargs)


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
    resumed = resume_in_fresh_process("tests.helpers.keras", spec, state_in, state_out, timeout=300)
    assert_states_equal(uninterrupted, resumed["state"])
    np.testing.assert_array_equal(tail, resumed["telemetry"])
    return {"checkpoint": checkpoint, "final": uninterrupted}


def sigmoid_stack(enabled: bool, steps: int) -> tuple[float, float]:
    """fp16-mixed on a 9-layer sigmoid stack, whose backward shrinks gradients ~4x per layer until
    fp16 flushes them to zero: (mean loss of the last 10 steps, test accuracy)."""
    data = load_dataset(DataConfig())
    job = make_job(
        "fp16-mixed",
        model=MlpConfig(hidden=[32] * 9, activation="sigmoid"),
        train={"steps": steps, "batch_size": 64, "optimizer": {"name": "adam", "lr": 1e-2}},
        loss_scale={"enabled": enabled},
    )
    backend = make_backend(job, data)
    for _, rows in batch_plan(len(data.y_train), 64, 0, None, steps):
        backend.train_step(rows)
    loss = float(backend.drain_telemetry().loss[-10:].mean())
    accuracy = backend.evaluate().test_accuracy
    backend.teardown()
    return loss, accuracy


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        resume_in_this_process(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
