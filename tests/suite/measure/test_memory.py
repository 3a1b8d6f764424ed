"""The framework-neutral memory accounting: checked against what torch's autograd really saves,
and the same figure for the same model in torch and Keras."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from precision_suite.config import load_config
from precision_suite.measure.memory import PrecisionLayout, account, account_job, activation_bytes, breakdown_shares
from precision_suite.plan import expand_jobs

FP32 = PrecisionLayout("float32", "float32", ("float32",), None, "float32")
AUTOCAST_BF16 = PrecisionLayout("float32", "bfloat16", ("float32",), None, "float32")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None,
    reason="tensorflow/keras not installed",
)


def _jobs(*overrides: str):
    config = load_config(None, ["seeds=[0]", "train.steps=2", *overrides])
    return expand_jobs(config, "cpu")


def test_components_follow_the_layout():
    job = _jobs("backends.names=[torch-amp]", "models=[mlp]")[0]
    fp32 = account_job(job, (1, 8, 8), 10, FP32)
    params = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert fp32.weights == fp32.gradients == 4 * params
    assert fp32.optimizer_state == 2 * 4 * params  # Adam: two fp32 slots
    assert fp32.master_weights == 0
    manual = account_job(
        job, (1, 8, 8), 10, PrecisionLayout("bfloat16", "bfloat16", ("bfloat16", "float32"), "float32", "float32")
    )
    assert manual.weights == 2 * params and manual.master_weights == 4 * params and manual.gradients == 6 * params
    # Mixed precision halves the saved activations except the fp32 log-softmax of the loss.
    mixed = account_job(job, (1, 8, 8), 10, AUTOCAST_BF16)
    assert mixed.activations < fp32.activations and mixed.total < fp32.total
    shares = breakdown_shares(fp32.breakdown())
    assert sum(shares.values()) == pytest.approx(1.0)


def test_sgd_without_momentum_has_no_optimizer_state():
    job = _jobs("backends.names=[torch-amp]", "models=[mlp]", "train.optimizer.name=sgd")[0]
    assert account(job.model, (1, 8, 8), 10, 32, job.train.optimizer, FP32).optimizer_state == 0


@needs_torch
@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_fp32_activations_match_what_torch_autograd_saves(model):
    """The accounting's activation rules against torch's saved tensors (ActivationCounter) on
    the default models: within 5 % in fp32 (the residuals the module docstring names)."""
    from precision_suite.backends import get_backend_class
    from precision_suite.measure.loop import cached_dataset
    from precision_suite.models import init_weights

    [job] = [j for j in _jobs("backends.names=[torch-amp]") if j.model.name == model and j.policy == "fp32"]
    data = cached_dataset(job)
    backend = get_backend_class("torch-amp")()
    backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, 0), data)
    try:
        backend.train_step(np.arange(job.train.batch_size))
        stats = backend.memory_stats()
    finally:
        backend.teardown()
    counted = activation_bytes(job.model, data.input_shape, data.num_classes, job.train.batch_size, FP32)
    assert stats.observed["activations"] == pytest.approx(counted, rel=0.05)
    assert stats.breakdown["activations"] == counted
    for key in ("weights", "gradients", "optimizer_state"):
        assert stats.observed[key] == pytest.approx(stats.breakdown[key], rel=0.01), key


@needs_torch
@needs_keras
def test_torch_and_keras_report_the_same_memory_for_the_same_model():
    from precision_suite.backends import get_backend_class
    from precision_suite.measure.loop import cached_dataset
    from precision_suite.models import init_weights

    every = "[fp32, fp16-mixed, bf16-mixed]"
    policies = f"backends.policies={{torch-amp: {every}, tf-keras: {every}}}"
    # every policy on the transformer (the default config runs fp16-mixed on the mlp only)
    jobs = _jobs("backends.names=[torch-amp, tf-keras]", policies, "models=[transformer]", "backends.policy_models={}")
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for job in jobs:
        data = cached_dataset(job)
        backend = get_backend_class(job.backend)()
        backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, 0), data)
        try:
            stats = backend.memory_stats()
        finally:
            backend.teardown()
        assert stats.memory_source == "accounting (cpu)"
        totals[(job.framework, job.policy)] = stats.breakdown
    assert totals[("torch", "fp32")] == totals[("tensorflow", "fp32")]
    for framework in ("torch", "tensorflow"):
        fp32 = sum(totals[(framework, "fp32")].values())
        for policy in ("fp16-mixed", "bf16-mixed"):
            mixed = totals[(framework, policy)]
            assert sum(mixed.values()) < fp32, (framework, policy)
            assert mixed["activations"] < totals[(framework, "fp32")]["activations"]
