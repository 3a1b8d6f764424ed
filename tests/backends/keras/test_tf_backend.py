"""tf-keras: loss scaling against the reference state machine, skipped steps, underflow control,
custom step vs ``model.fit``, fresh-process resume, policies and the global state they touch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from precision_suite.backends.keras.tf_backend import TfKerasBackend
from precision_suite.data import batch_plan
from precision_suite.models import init_weights

from tests.helpers.backends import assert_learns_only_with_scaling
from tests.helpers.keras import (
    make_backend,
    make_job,
    tiny_data,
)
from tests.helpers.marks import TOLERANCES, needs_tf


# ---------------------------------------------------------------- no TensorFlow needed
def test_import_and_availability_do_not_import_tensorflow():
    code = (
        "import sys; from precision_suite.backends.keras.tf_backend import TfKerasBackend;"
        "TfKerasBackend.is_available();"
        "TfKerasBackend.config_problem(__import__('tests.helpers.keras', "
        "fromlist=['make_job']).make_job('fp16-mixed'));"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_policy_and_option_are_rejected_naming_the_valid_ones():
    from pydantic import ValidationError

    problem = TfKerasBackend.config_problem(make_job("fp16-pure"))
    assert problem and '"fp16-pure"' in problem and "bf16-mixed" in problem
    with pytest.raises(ValidationError, match="extra"):
        TfKerasBackend.Options.model_validate({"jit": True})
    assert TfKerasBackend.unsupported_reason("tf32", "cpu") is not None


@needs_tf
def test_lr_schedule_is_the_reference_formula():
    from precision_suite.backends.keras.optim import TorchStyleLrSchedule
    from precision_suite.backends.reference.lr_schedule import lr_factor
    from precision_suite.config import LrScheduleConfig

    for cfg in (
        LrScheduleConfig(name="cosine", warmup_steps=3, min_lr_ratio=0.1),
        LrScheduleConfig(name="step", warmup_steps=2, step_size=4, gamma=0.5),
        LrScheduleConfig(name="constant", warmup_steps=5),
    ):
        schedule = TorchStyleLrSchedule(0.1, cfg, total_steps=20)
        got = [float(schedule(t)) for t in range(22)]
        want = [0.1 * lr_factor(cfg, t, 20) for t in range(20)]
        # Past the plan's last step the lr stays at the last step's, as in the torch backends.
        np.testing.assert_allclose(got, want + [want[-1]] * 2, rtol=1e-6, err_msg=cfg.name)


@needs_tf
@pytest.mark.parametrize(
    "policy, compute, scaling",
    [("fp32", "float32", "none"), ("fp16-mixed", "float16", "dynamic"), ("bf16-mixed", "bfloat16", "none")],
)
def test_observed_precision_and_global_state(policy, compute, scaling):
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_tensor_float_32_execution(True)
    backend = make_backend(make_job(policy), tiny_data())
    try:
        observed = backend.observed_precision()
        assert observed["compute_dtype"] == compute
        assert observed["layer_compute_dtype"] == compute
        assert observed["param_dtype"] == observed["master_dtype"] == "float32"
        assert observed["head_compute_dtype"] == "float32"
        assert observed["loss_scaling"] == scaling
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
        assert tf_config.is_op_determinism_enabled()
        assert keras.config.dtype_policy().name == "float32"
        env = backend.environment()
        assert env["tf32"] is False and env["jit_compile"] is False
        assert env["tensorflow_version"] == tf.__version__
        memory = backend.memory_stats()
        assert memory.memory_source == "accounting (cpu)"
        n_params = sum(int(np.prod(v.shape)) for v in backend.model.trainable_variables)
        assert memory.breakdown["gradients"] == 4 * n_params
        # Adam: two float32 slots per weight, plus iterations (and loss-scale scalars).
        assert memory.breakdown["optimizer_state"] >= 8 * n_params
        assert memory.peak_memory_bytes == sum(memory.breakdown.values())
    finally:
        backend.teardown()
    assert tf.config.experimental.tensor_float_32_execution_enabled()  # restored
    tf.config.experimental.enable_tensor_float_32_execution(False)
    tf_config.disable_op_determinism()


@needs_tf
def test_loss_scale_settings_are_mapped_and_recorded():
    ls = {"init_scale": 1024.0, "growth_interval": 7}
    backend = make_backend(make_job("fp16-mixed", loss_scale=ls), tiny_data())
    try:
        assert backend.optimizer.initial_scale == 1024.0
        assert backend.optimizer.dynamic_growth_steps == 7
        recorded = backend.observed_precision()["loss_scale_config"]
        assert recorded["initial_scale"] == 1024.0 and recorded["dynamic_growth_steps"] == 7
    finally:
        backend.teardown()
    static = make_backend(make_job("fp16-mixed", loss_scale={**ls, "dynamic": False}), tiny_data())
    assert static.optimizer.loss_scale_factor == 1024.0
    assert static.observed_precision()["loss_scaling"] == "static"
    static.teardown()
    off = make_backend(make_job("fp16-mixed", loss_scale={"enabled": False}), tiny_data())
    assert off.optimizer.loss_scale_factor is None
    assert off.observed_precision()["loss_scaling"] == "none"
    off.teardown()


@needs_tf
def test_underflow_positive_control_learns_only_with_scaling():
    # In a fresh process with TF's oneDNN ops off (TF reads TF_ENABLE_ONEDNN_OPTS at import): on
    # CPUs with AVX512_FP16 oneDNN's native fp16 kernels keep even the scaled run at ln 10
    # (measured: 2.307 vs 1.946 with them off), which tests those kernels, not the loss scaler.
    code = (
        "import json; from tests.helpers.keras import sigmoid_stack; "
        "print(json.dumps([sigmoid_stack(enabled=e, steps=400) for e in (False, True)]))"
    )
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    unscaled, scaled = ({"loss": loss, "accuracy": acc} for loss, acc in json.loads(result.stdout.splitlines()[-1]))
    assert_learns_only_with_scaling(unscaled, scaled)


# ---------------------------------------------------------------- the custom step
@needs_tf
def test_custom_step_matches_model_fit():
    import keras
    from precision_suite.backends.keras.models import build_keras_model, to_keras_inputs
    from precision_suite.backends.keras.optim import build_optimizer

    data = tiny_data(poison=False)
    job = make_job("fp16-mixed", train={"steps": 8, "batch_size": 16})
    weights = init_weights(job.model, data.input_shape, data.num_classes, 0)
    backend = TfKerasBackend()
    backend.setup(job, weights, data)
    plan = batch_plan(len(data.y_train), 16, 0, None, 8)
    for _, rows in plan:
        backend.train_step(rows)
    custom = backend.drain_telemetry().loss
    backend.teardown()

    model = build_keras_model(job.model, data.input_shape, 10, weights, "mixed_float16")
    train = job.train
    inner = build_optimizer(train.optimizer, train.lr_schedule, 8, None)
    optimizer = keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**16)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    order = np.concatenate([rows for _, rows in plan])

    class PerBatchLoss(keras.callbacks.Callback):
        # fit reports a running mean; resetting the tracker each batch leaves the batch loss.
        losses: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            for metric in self.model.metrics:
                metric.reset_state()

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    recorder = PerBatchLoss()
    model.fit(
        to_keras_inputs(job.model, data.x_train[order]),
        data.y_train[order],
        batch_size=16,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    np.testing.assert_allclose(recorder.losses, custom, **TOLERANCES["float16"])
    assert custom[-1] < custom[0]


@needs_tf
def test_grad_accumulation_jit_and_prepared_batches_agree():
    data = tiny_data(poison=False)
    train = {"steps": 6, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}}
    losses = {}
    for name, extra, options in (
        ("plain", {}, {}),
        ("accumulated", {"grad_accumulation": 2}, {}),
        ("xla", {}, {"jit_compile": True}),
    ):
        backend = make_backend(make_job("fp32", train={**train, **extra}, options=options), data)
        plan = np.stack([rows for _, rows in batch_plan(len(data.y_train), 16, 0, None, 6)])
        # NumPy rows for the first steps, prepared device batches for the rest: same steps.
        for rows in [*plan[:3], *backend.prepare_batches(plan[3:])]:
            backend.train_step(rows)
        losses[name] = backend.drain_telemetry().loss
        if name == "xla":
            assert backend.environment()["jit_compile"] is True
        backend.teardown()
    assert len(losses["plain"]) == 6
    np.testing.assert_allclose(losses["accumulated"], losses["plain"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses["xla"], losses["plain"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- GPU
@needs_tf
@pytest.mark.gpu
def test_gpu_allocator_peak_tf32_off_and_half_compute():
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU (tensorflow-cpu?)")
    data = tiny_data(poison=False)
    for policy, compute in (("fp32", "float32"), ("fp16-mixed", "float16")):
        job = make_job(policy, options={"jit_compile": policy == "fp16-mixed"})
        job.device = "cuda"
        backend = make_backend(job, data)
        backend.reset_memory_stats()
        for _, rows in batch_plan(len(data.y_train), 16, 0, None, 8):
            backend.train_step(rows)
        backend.synchronize()
        telemetry = backend.drain_telemetry()
        assert np.all(np.isfinite(telemetry.loss)) and len(telemetry.loss) == 8
        memory = backend.memory_stats()
        assert memory.memory_source == "tf.config.experimental.get_memory_info"
        assert memory.peak_memory_bytes > 0
        assert backend.observed_precision()["compute_dtype"] == compute
        assert backend.environment()["tf32"] is False
        backend.teardown()


# ---------------------------------------------------------------- digits parity (acceptance)
@needs_tf
@pytest.mark.slow
def test_digits_mixed_policies_reach_fp32_accuracy_within_parity_tolerance():
    from precision_suite.config import load_config
    from precision_suite.measure.loop import run_job
    from precision_suite.plan import expand_jobs

    every = "backends.policies={tf-keras: [fp32, fp16-mixed, bf16-mixed]}"  # the CPU default has no fp16
    config = load_config(None, ["backends.names=[tf-keras]", every, "device=cpu"])
    accuracy: dict[tuple[str, str], list[float]] = {}
    for job in expand_jobs(config, "cpu"):
        record = run_job(job)
        assert record["status"] == "ok", (job.job_id, record["error"])
        accuracy.setdefault((job.model.name, job.policy), []).append(record["metrics"]["test_accuracy"])
    tolerance = config.parity.tolerance_pts / 100
    for (model, policy), values in accuracy.items():
        baseline = np.mean(accuracy[(model, "fp32")])
        assert len(values) == len(config.seeds)
        assert abs(np.mean(values) - baseline) <= tolerance, (model, policy, values, baseline)
