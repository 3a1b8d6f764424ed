"""The suite's training loop: warm-up, timing windows, evaluation schedule, staged batches."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.config import SuiteConfig
from precision_suite.data import batch_plan, load_dataset
from precision_suite.measure import loop
from precision_suite.models import init_weights
from precision_suite.plan import expand_jobs
from precision_suite.results import new_record

from tests.helpers.fake_backend import FakeBackend


class RecordingBackend(FakeBackend):
    """The fake backend, noting which prepared batches it was given and when it evaluated."""

    def setup(self, job, init_weights, data):
        super().setup(job, init_weights, data)
        self.events: list[tuple[str, int]] = []
        self.seen: list[np.ndarray] = []

    def prepare_batches(self, rows):
        self.events.append(("prepare", len(rows)))
        return [("prepared", r) for r in rows]

    def train_step(self, batch_indices):
        tag, rows = batch_indices
        assert tag == "prepared"
        self.seen.append(rows)
        super().train_step(rows)

    def evaluate(self):
        self.events.append(("evaluate", self.step))
        return super().evaluate()


def _run(monkeypatch, **train):
    config = SuiteConfig.model_validate(
        {
            "models": [{"kind": "mlp", "hidden": [8]}],
            "train": {"batch_size": 64, "timing_warmup_steps": 3, **train},
            "backends": {"names": ["torch-amp"], "policies": {"torch-amp": ["fp32"]}},
            "seeds": [0],
        }
    )
    (job,) = expand_jobs(config, "cpu")
    job.options = {}
    data = load_dataset(config.data)
    backend = RecordingBackend()
    backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, 0), data)
    record = new_record(job)
    loop.train_timed(backend, job, data, record, None)
    plan = batch_plan(len(data.y_train), 64, 0, job.train.epochs, job.train.steps)
    return backend, record, plan


def test_every_step_of_the_plan_runs_in_order_with_warmup_excluded(monkeypatch):
    backend, record, plan = _run(monkeypatch, epochs=3, timing_window_steps=5)
    assert len(backend.seen) == len(plan) == 3 * 22
    for seen, (_, rows) in zip(backend.seen, plan, strict=True):
        np.testing.assert_array_equal(seen, rows)
    assert record["metrics"]["timed_steps"] == len(plan) - 3
    assert record["metrics"]["warmup_steps"] == 3
    assert len(record["curves"]["train_loss"]) == len(plan)
    assert record["curves"]["epoch"] == [e for e, _ in plan]


@pytest.mark.parametrize(("every", "evaluated_at"), [(1, [22, 44, 66]), (2, [44]), (0, [])])
def test_evaluation_schedule(monkeypatch, every, evaluated_at):
    backend, record, _ = _run(monkeypatch, epochs=3, eval_every_epochs=every)
    assert [step for kind, step in backend.events if kind == "evaluate"] == evaluated_at
    assert record["curves"]["eval_epoch"] == [s // 22 - 1 for s in evaluated_at]
    assert len(record["curves"]["test_accuracy"]) == len(evaluated_at)


def test_batches_are_staged_in_blocks_of_whole_windows(monkeypatch):
    monkeypatch.setattr(loop, "PREPARE_BLOCK_STEPS", 40)
    backend, _, plan = _run(monkeypatch, steps=100, timing_window_steps=15)
    # block = 15 * (40 // 15) = 30 steps
    assert [n for kind, n in backend.events if kind == "prepare"] == [30, 30, 30, 10]


class ObservingBackend(FakeBackend):
    """The fake backend, saying in its observed precision how many steps it had trained."""

    def observed_precision(self):
        return {**super().observed_precision(), "steps_trained": self.step}


def test_observed_precision_is_read_after_training():
    # What a policy writes only in training steps (Keras float8's amax histories: fp8-mixed's
    # evidence that FP8 ran) must be in the record.
    config = SuiteConfig.model_validate(
        {
            "models": [{"kind": "mlp", "hidden": [8]}],
            "train": {"batch_size": 64, "steps": 7, "timing_warmup_steps": 2},
            "backends": {"names": ["torch-amp"], "policies": {"torch-amp": ["fp32"]}},
            "seeds": [0],
        }
    )
    (job,) = expand_jobs(config, "cpu")
    job.options = {}
    record = loop.run_job(job, backend_cls=ObservingBackend)
    assert record["status"] == "ok", record["error"]
    assert record["observed"]["steps_trained"] == 7
