"""The Keras backends' options, one schema for both runtimes, and ``optimizer_rules: keras``
against what a Keras user's ``model.fit`` runs, on TensorFlow and on JAX."""

from __future__ import annotations

import typing
from typing import Any

import numpy as np
import pytest
from precision_suite.backends import get_backend_class
from precision_suite.backends.keras.common import KerasOptions, OptimizerRules
from precision_suite.config import ConfigError, MlpConfig, load_config
from precision_suite.data import Dataset, batch_plan
from precision_suite.jobs import Job
from precision_suite.models import init_weights
from precision_suite.plan import check_backends

from tests.helpers.keras import make_backend, make_job, tiny_data
from tests.helpers.marks import TOLERANCES, needs_jax, needs_tf

KERAS_BACKENDS = ("tf-keras", "keras-jax")
NEEDS = {"tf-keras": needs_tf, "keras-jax": needs_jax}


# ---------------------------------------------------------------- one options schema
def test_both_keras_runtimes_take_the_same_options():
    """Same keys, same types, same defaults but ``jit_compile`` (each runtime's own: Keras'
    "auto" on JAX is XLA; tf-keras keeps it off unless asked)."""
    tf_options, jax_options = (get_backend_class(name).Options for name in KERAS_BACKENDS)
    assert issubclass(tf_options, KerasOptions) and issubclass(jax_options, KerasOptions)
    assert set(tf_options.model_fields) == set(jax_options.model_fields) == {
        "jit_compile",
        "deterministic",
        "optimizer_rules",
    }
    for key in tf_options.model_fields:
        assert tf_options.model_fields[key].annotation == jax_options.model_fields[key].annotation, key
    tf_defaults, jax_defaults = tf_options().model_dump(), jax_options().model_dump()
    assert {**tf_defaults, "jit_compile": None} == {**jax_defaults, "jit_compile": None}
    assert (tf_defaults["jit_compile"], jax_defaults["jit_compile"]) == (False, True)


def test_optimizer_rules_name_exactly_the_optimizers_built():
    pytest.importorskip("keras")
    from precision_suite.backends.keras.optim import OPTIMIZER_RULES

    assert set(typing.get_args(OptimizerRules)) == set(OPTIMIZER_RULES)


def only_backend(name: str) -> list[str]:
    """Overrides of the default config that run backend ``name`` alone."""
    return [f"backends.names=[{name}]", "backends.policies={}", "backends.options={}", "backends.policy_models={}"]


@pytest.mark.parametrize("name", KERAS_BACKENDS)
def test_each_keras_backend_accepts_optimizer_rules_and_rejects_unknown_rules(name):
    """Through the config check a run starts with (no framework imported)."""
    config = load_config(None, [*only_backend(name), f"backends.options.{name}={{optimizer_rules: keras}}"])
    check_backends(config, "cli")
    for bad, expected in (("{optimizer_rules: tf}", "'torch' or 'keras'"), ("{optimiser_rules: keras}", "optimiser")):
        config = load_config(None, [*only_backend(name), f"backends.options.{name}={bad}"])
        with pytest.raises(ConfigError, match=rf"backends\.options\.{name}\..*{expected}"):
            check_backends(config, "cli")


def test_keras_jax_refuses_eager_steps_where_deterministic_gpu_kernels_are_asked_for():
    cls = get_backend_class("keras-jax")

    def problem(device: str, **options: Any) -> str | None:
        return cls.config_problem(make_job("fp32", backend="keras-jax", options=options, device=device))

    assert "deterministic: false" in problem("cuda", jit_compile=False)
    assert problem("cpu", jit_compile=False) is None
    assert problem("cuda", jit_compile=False, deterministic=False) is None
    assert problem("cuda") is None


# ---------------------------------------------------------------- optimizer_rules: keras == model.fit
def stock_optimizer(job: Job) -> Any:
    """Keras' own optimizer for ``job.train.optimizer``, built here from the config's numbers (not
    by the suite's ``build_stock_optimizer``)."""
    import keras

    cfg = job.train.optimizer
    if cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)
    return keras.optimizers.Adam(learning_rate=cfg.lr, beta_1=cfg.betas[0], beta_2=cfg.betas[1], epsilon=cfg.eps)


def stock_fit_losses(
    job: Job, data: Dataset, weights: dict, plan: list, optimizer: Any, jit_compile: bool
) -> list[float]:
    """Per-step losses of stock ``model.fit`` (fresh model from ``weights``) over ``plan``."""
    import keras
    from precision_suite.backends.keras.models import build_keras_model, to_keras_inputs

    model = build_keras_model(job.model, data.input_shape, data.num_classes, weights, "float32")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    order = np.concatenate([rows for _, rows in plan])
    losses: list[float] = []

    class PerBatchLoss(keras.callbacks.Callback):
        # fit reports a running mean; resetting the tracker each batch leaves the batch loss.
        def on_train_batch_begin(self, batch, logs=None):
            for metric in self.model.metrics:
                metric.reset_state()

        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    model.fit(
        to_keras_inputs(job.model, data.x_train[order]),
        data.y_train[order],
        batch_size=job.train.batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[PerBatchLoss()],
    )
    return losses


OPTIMIZERS = {
    "sgd-momentum": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    # ε large enough that where it sits (Keras: before bias correction, torch: after) shows in 12 steps.
    "adam": {"name": "adam", "lr": 3e-3, "eps": 1e-3},
}
STEPS = 12


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", [pytest.param(n, marks=NEEDS[n]) for n in KERAS_BACKENDS])
def test_keras_optimizer_rules_reproduce_stock_model_fit(name, optimizer):
    """``optimizer_rules: keras`` is what a Keras user's ``model.fit`` runs on the same runtime
    (compiled as the backend's default ``jit_compile``): the same per-step fp32 losses on the same
    weights and batches. The default torch rules are not (Adam: ε before bias correction;
    momentum SGD: a velocity), so the comparison can tell them apart."""
    data = tiny_data(poison=False)
    train = {"steps": STEPS, "batch_size": 16, "optimizer": OPTIMIZERS[optimizer]}
    weights = init_weights(MlpConfig(hidden=[16]), data.input_shape, data.num_classes, 0)
    plan = batch_plan(len(data.y_train), 16, 0, None, STEPS)
    losses = {}
    for rules in ("keras", "torch"):
        job = make_job("fp32", backend=name, train=train, options={"optimizer_rules": rules})
        backend = make_backend(job, data, weights)
        for _, rows in plan:
            backend.train_step(rows)
        losses[rules] = backend.drain_telemetry().loss
        assert backend.environment()["optimizer_rules"] == rules
        jit_compile = backend.options.jit_compile
        backend.teardown()
    stock = np.asarray(stock_fit_losses(job, data, weights, plan, stock_optimizer(job), jit_compile))
    if name == "keras-jax":
        # One jitted step of stateless_call + stateless_apply, as fit's: bit for bit (measured).
        np.testing.assert_array_equal(losses["keras"], stock)
        assert not np.array_equal(losses["torch"], stock)
    else:
        # TensorFlow: the suite's graph step and fit's round differently, up to 1.1e-7 relative
        # in 12 steps (measured; plain SGD too), within the fp32 tolerance.
        np.testing.assert_allclose(losses["keras"], stock, **TOLERANCES["float32"])
    if optimizer == "adam":
        relative = np.abs(losses["torch"] - stock) / np.abs(stock)
        assert relative.max() > 100 * TOLERANCES["float32"]["rtol"]
