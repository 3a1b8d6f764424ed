"""The suite's strongest check: in fp32, PyTorch and Keras are the same model on the same
batches from the same weights, so their logits and per-step losses agree to float32 rounding.

Losses come from the real backends (``torch-amp`` and ``tf-keras`` through setup / train_step /
drain_telemetry), with jobs built from one config, so any drift in either backend's model,
optimizer, schedule or data path shows up here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from precision_suite.backends import get_backend_class
from precision_suite.config import SuiteConfig
from precision_suite.data import batch_plan, load_dataset
from precision_suite.models import init_weights
from precision_suite.plan import expand_jobs

from tests.helpers.marks import needs_tf, needs_torch

pytestmark = [needs_torch, needs_tf]

KINDS = ("mlp", "cnn", "transformer")
# The acceptance tolerances of the cross-framework equivalence.
LOGITS_RTOL = 1e-5
LOSS_RTOL = 1e-4
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 1e-3}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(SuiteConfig().data)


def _jobs(kind: str, train: dict[str, Any]) -> dict[str, Any]:
    config = SuiteConfig.model_validate(
        {
            "models": [kind],
            "train": train,
            "backends": {
                "names": ["torch-amp", "tf-keras"],
                "policies": {"torch-amp": ["fp32"], "tf-keras": ["fp32"]},
            },
            "seeds": [0],
            "device": "cpu",
        }
    )
    return {job.backend: job for job in expand_jobs(config, "cpu")}


def _losses(job: Any, data: Any) -> np.ndarray:
    train = job.train
    plan = batch_plan(len(data.y_train), train.batch_size, job.seed, train.epochs, train.steps)
    backend = get_backend_class(job.backend)()
    backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, job.seed), data)
    try:
        for _, rows in plan:
            backend.train_step(rows)
        losses = backend.drain_telemetry().loss
    finally:
        backend.teardown()
    assert len(losses) == len(plan)
    return losses


def _assert_same_trajectory(kind: str, train: dict[str, Any], data: Any) -> None:
    jobs = _jobs(kind, train)
    torch_losses = _losses(jobs["torch-amp"], data)
    keras_losses = _losses(jobs["tf-keras"], data)
    assert np.all(np.isfinite(torch_losses))
    rel = np.abs(keras_losses - torch_losses) / np.abs(torch_losses)
    worst = int(rel.argmax())
    assert rel.max() <= LOSS_RTOL, (
        f"{kind} {train['optimizer']['name']}: step {worst} torch {torch_losses[worst]!r} "
        f"keras {keras_losses[worst]!r} (rel {rel[worst]:.2e})"
    )
    assert torch_losses[-10:].mean() < torch_losses[:10].mean()  # a run that trained


@pytest.mark.parametrize("kind", KINDS)
def test_initial_logits_agree(kind, digits):
    import torch
    from precision_suite.backends.keras.models import build_keras_model, to_keras_inputs
    from precision_suite.backends.torch.models import build_torch_model
    from precision_suite.models import prepare_inputs

    cfg = SuiteConfig.model_validate({"models": [kind]}).models[0]
    weights = init_weights(cfg, digits.input_shape, digits.num_classes, seed=0)
    torch_model = build_torch_model(cfg, digits.input_shape, digits.num_classes, weights)
    keras_model = build_keras_model(cfg, digits.input_shape, digits.num_classes, weights)
    x = digits.x_train[:128]
    for training in (False, True):  # cnn: moving statistics, then batch statistics
        torch_model.train(training)
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(prepare_inputs(cfg, x))).numpy()
        got = np.asarray(keras_model(to_keras_inputs(cfg, x), training=training))
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=LOGITS_RTOL, atol=LOGITS_RTOL * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_losses_agree_over_100_sgd_and_50_adam_steps(kind, digits):
    _assert_same_trajectory(kind, {"steps": 100, "batch_size": 64, "optimizer": SGD}, digits)
    _assert_same_trajectory(kind, {"steps": 50, "batch_size": 64, "optimizer": ADAM}, digits)


@pytest.mark.parametrize(
    "optimizer, schedule",
    [
        ({**SGD, "weight_decay": 1e-3}, {"name": "cosine", "warmup_steps": 5, "min_lr_ratio": 0.1}),
        (
            {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
            {"name": "step", "step_size": 10, "gamma": 0.5},
        ),
        ({**ADAM, "weight_decay": 1e-3}, {"name": "constant"}),
    ],
    ids=["sgd-l2-cosine", "adamw-step", "adam-l2"],
)
def test_fp32_losses_agree_with_weight_decay_clipping_schedules(optimizer, schedule, digits):
    train = {
        "steps": 30,
        "batch_size": 64,
        "optimizer": optimizer,
        "lr_schedule": schedule,
        "grad_clip_norm": 0.5,
        "grad_accumulation": 2,
    }
    _assert_same_trajectory("mlp", train, digits)
