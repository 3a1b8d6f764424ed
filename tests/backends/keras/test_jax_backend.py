"""keras-jax: registered through the entry-point group only, its records, the on-device
telemetry buffer, the accounting it shares with tf-keras, fp32 agreement with PyTorch, and the GPU.
(Loss scaling and fresh-process resume: tests/backends/keras/test_loss_scaling.py, for both
Keras runtimes.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from precision_suite.backends import BUILTIN_BACKENDS, ENTRY_POINT_GROUP, get_backend_class

from tests.helpers.keras import (
    make_backend,
    make_job,
    rows_of,
    tiny_data,
)
from tests.helpers.marks import HAS_TF, TOLERANCES, needs_jax, needs_torch

NAME = "keras-jax"


# ---------------------------------------------------------------- no JAX needed
def test_registered_only_through_the_entry_point_group():
    from importlib.metadata import entry_points

    assert NAME not in BUILTIN_BACKENDS
    (ep,) = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == NAME]
    assert ep.value == "precision_suite.backends.keras.jax_backend:KerasJaxBackend"
    cls = get_backend_class(NAME)
    assert cls.framework == "jax"
    assert set(cls.policies) == {"fp32", "tf32", "fp16-mixed", "bf16-mixed", "fp8-mixed"}


def test_availability_and_config_checks_do_not_import_jax_or_keras():
    code = (
        "import sys; from precision_suite.backends import get_backend_class;"
        "from tests.helpers.keras import make_job;"
        f"cls = get_backend_class({NAME!r}); cls.is_available();"
        f"cls.config_problem(make_job('fp16-mixed', backend={NAME!r}));"
        "print(sorted(m for m in ('jax', 'keras', 'tensorflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs_jax
def test_seeding_on_jax_leaves_the_random_streams_where_keras_own_seeding_does():
    """``common.set_random_seed`` on JAX (no TensorFlow part) against Keras' own
    ``keras.utils.set_random_seed``: the same next draws from Python's, NumPy's and Keras'
    random streams."""
    code = (
        "import random; import numpy as np;"
        "from precision_suite.backends.keras.common import import_keras, set_random_seed;"
        "keras = import_keras('jax'); draws = [];"
        "[(seed(keras, 7), draws.append((random.random(), float(np.random.rand()),"
        " np.asarray(keras.random.uniform((4,))).tolist()))) for seed in"
        " (set_random_seed, lambda k, s: k.utils.set_random_seed(s))];"
        "print(draws[0] == draws[1], draws[0][0] != random.random())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "True"]


@needs_jax
def test_a_keras_jax_job_does_not_import_tensorflow():
    code = (
        "import sys; from precision_suite.measure.loop import run_job; from tests.helpers.keras import make_job;"
        f"run_job(make_job('fp32', backend={NAME!r}), lambda step, total: None);"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"


# ---------------------------------------------------------------- policies and records
@needs_jax
@pytest.mark.parametrize(
    "policy, compute, scaling",
    [("fp32", "float32", "none"), ("fp16-mixed", "float16", "dynamic"), ("bf16-mixed", "bfloat16", "none")],
)
def test_observed_precision_environment_and_memory(policy, compute, scaling):
    import jax

    backend = make_backend(make_job(policy, backend=NAME), tiny_data())
    try:
        observed = backend.observed_precision()
        assert observed["compute_dtype"] == observed["layer_compute_dtype"] == compute
        assert observed["param_dtype"] == observed["master_dtype"] == "float32"
        assert observed["head_compute_dtype"] == "float32"
        assert observed["loss_scaling"] == scaling
        assert observed["matmul_precision"] == "highest"
        env = backend.environment()
        assert env["jax_version"] == jax.__version__ and env["keras_backend"] == "jax"
        assert env["jit_compile"] is True and env["tf32"] is False
        assert {"jaxlib_version", "keras_version", "xla_flags", "device_name"} <= set(env)
        memory = backend.memory_stats()
        assert memory.memory_source == "accounting (cpu)"
        n_params = sum(int(np.prod(v.shape)) for v in backend.model.trainable_variables)
        assert memory.breakdown["gradients"] == 4 * n_params
        assert memory.breakdown["optimizer_state"] >= 8 * n_params  # Adam: two float32 slots
    finally:
        backend.teardown()


@needs_jax
@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed")
def test_cpu_memory_accounting_is_the_same_as_tf_keras():
    data = tiny_data()
    figures = {}
    for name in ("tf-keras", NAME, "tf-keras"):  # and back: both runtimes in one process
        backend = make_backend(make_job("fp16-mixed", backend=name), data)
        memory = backend.memory_stats()
        backend.train_step(rows_of(backend.job, data)[0])
        assert np.isfinite(backend.drain_telemetry().loss).all()
        backend.teardown()
        figures.setdefault(name, memory)
    # One accounting from the model spec: the same figures in both runtimes.
    assert figures[NAME].breakdown == figures["tf-keras"].breakdown
    assert figures[NAME].peak_memory_bytes == figures["tf-keras"].peak_memory_bytes
    # What the variables really hold, beside it.
    jax_figures, tf_figures = figures[NAME].observed, figures["tf-keras"].observed
    assert set(jax_figures) == set(tf_figures)
    for part in ("weights", "gradients", "master_weights"):
        assert jax_figures[part] == tf_figures[part], part
    # The optimizer's integer counters (iterations, loss-scale step counter) are int64 on
    # TensorFlow and int32 on JAX (x64 off): the only difference, a few bytes.
    assert 0 <= tf_figures["optimizer_state"] - jax_figures["optimizer_state"] <= 8 * 3
    assert jax_figures["optimizer_state"] > 2 * jax_figures["gradients"]


# ---------------------------------------------------------------- the jitted step
@needs_jax
def test_telemetry_buffers_grad_accumulation_and_prepared_batches_agree(monkeypatch):
    from precision_suite.backends.keras import jax_backend

    data = tiny_data(poison=False)
    train = {"steps": 8, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    plan = np.stack(rows_of(make_job("fp32", backend=NAME, train=train), data))
    losses = {}
    for name, extra, capacity in (
        ("plain", {}, jax_backend.TELEMETRY_CAPACITY),
        ("small-buffer", {}, 3),  # 8 steps fill two buffers and part of a third
        ("accumulated", {"grad_accumulation": 2}, jax_backend.TELEMETRY_CAPACITY),
    ):
        monkeypatch.setattr(jax_backend, "TELEMETRY_CAPACITY", capacity)
        backend = make_backend(make_job("fp32", backend=NAME, train={**train, **extra}), data)
        # NumPy rows for the first steps, prepared device batches for the rest: same steps.
        for rows in [*plan[:3], *backend.prepare_batches(plan[3:])]:
            backend.train_step(rows)
        backend.synchronize()
        losses[name] = backend.drain_telemetry().loss
        assert len(backend.drain_telemetry().loss) == 0
        backend.teardown()
    assert len(losses["plain"]) == 8 and losses["plain"][-1] < losses["plain"][0]
    np.testing.assert_array_equal(losses["small-buffer"], losses["plain"])
    np.testing.assert_allclose(losses["accumulated"], losses["plain"], rtol=1e-5, atol=1e-6)


@needs_jax
def test_jit_compile_false_runs_the_same_step_op_by_op():
    """``jit_compile: false`` (an option both Keras runtimes take) runs the step without
    ``jax.jit``: the same training to fp32 rounding (measured: 2.4e-7 relative over 8 steps), and
    the record says so. On a CPU no XLA compiler option is passed, deterministic or not."""
    data = tiny_data(poison=False)
    losses, environments = {}, {}
    for jit_compile in (True, False):
        job = make_job("fp32", backend=NAME, options={"jit_compile": jit_compile, "deterministic": True})
        backend = make_backend(job, data)
        assert hasattr(backend._step_fn, "lower") is jit_compile  # a jax.jit function, or plain Python
        for rows in rows_of(job, data):
            backend.train_step(rows)
        losses[jit_compile] = backend.drain_telemetry().loss
        environments[jit_compile] = backend.environment()
        backend.teardown()
    assert [environments[jit]["jit_compile"] for jit in (True, False)] == [True, False]
    assert environments[True]["xla_compiler_options"] is None
    np.testing.assert_allclose(losses[False], losses[True], **TOLERANCES["float32"])


# ---------------------------------------------------------------- fp32 against PyTorch
@needs_jax
@needs_torch
@pytest.mark.parametrize(
    "kind", ["mlp", pytest.param("cnn", marks=pytest.mark.slow), pytest.param("transformer", marks=pytest.mark.slow)]
)
def test_fp32_losses_agree_with_torch(kind):
    """The same model on the same batches from the same weights: per-step fp32 losses agree with
    torch-amp's to float32 rounding (tests/integration/test_cross_framework.py does torch vs tf-keras)."""
    from precision_suite.config import SuiteConfig
    from precision_suite.data import batch_plan, load_dataset
    from precision_suite.models import init_weights
    from precision_suite.plan import expand_jobs

    config = SuiteConfig.model_validate(
        {
            "models": [kind],
            "train": {"steps": 30, "batch_size": 64, "optimizer": {"name": "adam", "lr": 1e-3}, "grad_clip_norm": 1.0},
            "backends": {"names": ["torch-amp", NAME], "policies": {"torch-amp": ["fp32"], NAME: ["fp32"]}},
            "seeds": [0],
            "device": "cpu",
        }
    )
    data = load_dataset(config.data)
    losses = {}
    for job in expand_jobs(config, "cpu"):
        backend = get_backend_class(job.backend)()
        backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, job.seed), data)
        for _, rows in batch_plan(len(data.y_train), 64, job.seed, None, 30):
            backend.train_step(rows)
        losses[job.backend] = backend.drain_telemetry().loss
        backend.teardown()
    rel = np.abs(losses[NAME] - losses["torch-amp"]) / np.abs(losses["torch-amp"])
    assert len(rel) == 30 and rel.max() <= 1e-4, (kind, int(rel.argmax()), float(rel.max()))


# ---------------------------------------------------------------- GPU
@needs_jax
@pytest.mark.gpu
def test_gpu_allocator_peak_precision_and_half_compute():
    """On a GPU: the JAX allocator's peak is recorded, fp32 matmuls run at full precision
    (JAX's GPU default would be TF32) and tf32 asks for TF32; fp16-mixed computes in float16."""
    import jax

    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("JAX sees no GPU")
    data = tiny_data(poison=False)
    for policy, compute, precision in (
        ("fp32", "float32", "highest"),
        ("tf32", "float32", "tensorfloat32"),
        ("fp16-mixed", "float16", "highest"),
    ):
        job = make_job(policy, backend=NAME)
        job.device = "cuda"
        backend = make_backend(job, data)
        backend.reset_memory_stats()
        for rows in rows_of(job, data):
            backend.train_step(rows)
        backend.synchronize()
        telemetry = backend.drain_telemetry()
        assert np.all(np.isfinite(telemetry.loss)) and len(telemetry.loss) == 8
        memory = backend.memory_stats()
        assert memory.memory_source.startswith("jax device.memory_stats()")
        assert memory.peak_memory_bytes > 0
        observed = backend.observed_precision()
        assert observed["compute_dtype"] == compute and observed["matmul_precision"] == precision
        env = backend.environment()
        assert env["jax_platform"] == "gpu" and env["tf32"] is (policy == "tf32")
        # runner.deterministic (default on): XLA's deterministic GPU kernels.
        assert env["xla_compiler_options"] == {"xla_gpu_deterministic_ops": True}
        backend.teardown()
