"""fp8-mixed on the Keras runtimes (tf-keras, keras-jax): Keras' float8 Dense layers, trained on
the CPU (emulated), the FP8 evidence and its absence. The scaling arithmetic itself is checked in
tests/backends/reference/test_fp8.py."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from precision_suite.backends.reference.fp8 import KERAS_AMAX_HISTORY_LENGTH
from precision_suite.config import MlpConfig, TransformerConfig
from precision_suite.verdicts.compare import FAIL, PASS, compare

from tests.helpers.keras import make_backend, make_job, rows_of, tiny_data
from tests.helpers.marks import HAS_JAX, HAS_TF, needs_torch
from tests.helpers.records import make_record

RUNTIMES = [
    pytest.param("tf-keras", marks=pytest.mark.skipif(not HAS_TF, reason="tensorflow/keras is not installed")),
    pytest.param("keras-jax", marks=pytest.mark.skipif(not HAS_JAX, reason="jax/keras is not installed")),
]
MLP = MlpConfig(hidden=[32, 16])
TRANSFORMER = TransformerConfig(patch_size=4, d_model=16, num_heads=2, depth=1)
TRANSFORMER_FP8_LAYERS = ["embed", *(f"block0.attn.{p}" for p in ("q", "k", "v", "out")), "block0.mlp1", "block0.mlp2"]


def _trained(backend_name: str, model=MLP, steps: int = 8):
    data = tiny_data(poison=False)
    job = make_job("fp8-mixed", backend=backend_name, model=model, train={"steps": steps, "batch_size": 16})
    backend = make_backend(job, data)
    for rows in rows_of(job, data):
        backend.train_step(rows)
    return backend


@pytest.mark.parametrize("backend_name", RUNTIMES)
def test_eligible_dense_layers_train_in_fp8_with_delayed_scaling(backend_name):
    backend = _trained(backend_name)
    try:
        losses = backend.drain_telemetry().loss
        assert np.all(np.isfinite(losses)) and losses[-3:].mean() < losses[:3].mean()
        fp8 = backend.environment()["fp8"]
        assert fp8["converted"] == ["dense0", "dense1"]
        assert fp8["not_converted"] == {"head": "out 10 not a multiple of 16 (FP8 GEMM kernels need it)"}
        assert fp8["recipe"] == "delayed" and fp8["amax_history_length"] == KERAS_AMAX_HISTORY_LENGTH
        assert fp8["emulate"] is True and fp8["emulate_reason"].startswith("cpu")
        dense0 = backend.model.get_layer("dense0")
        assert dense0.dtype_policy.name == "float8_from_mixed_bfloat16"
        assert backend.model.get_layer("head").quantization_mode is None
        observed = backend.observed_precision()
        assert observed["compute_dtype"] == "bfloat16" and observed["master_dtype"] == "float32"
        assert observed["loss_scaling"] == "none"
        assert observed["fp8_layers"] == ["dense0", "dense1"]
        assert observed["fp8_operands"] == {"forward": ["float8_e4m3fn"], "backward": ["float8_e5m2"]}
        # The evidence is what training wrote: one amax per step at the front of each history.
        history = np.asarray(dense0.inputs_amax_history.value)
        assert np.count_nonzero(history) == 8 and history[0] > 0
        record = make_record(backend_name, "fp8-mixed", observed=observed)
        assert compare([record]).rows[0].verdict("precision-active").outcome == PASS
    finally:
        backend.teardown()


@pytest.mark.parametrize("backend_name", RUNTIMES)
def test_a_silently_unquantised_model_fails_precision_active(backend_name, monkeypatch):
    import precision_suite.backends.keras.fp8 as keras_fp8

    monkeypatch.setattr(keras_fp8, "fp8_eligible", lambda n_in, n_out: "refused by the test")
    backend = _trained(backend_name, steps=2)
    try:
        observed = backend.observed_precision()
    finally:
        backend.teardown()
    assert observed["compute_dtype"] == "bfloat16"  # mixed_bfloat16 alone: the dtypes look right
    verdict = compare([make_record(backend_name, "fp8-mixed", observed=observed)]).rows[0].verdict("precision-active")
    assert verdict.outcome == FAIL and "no layer ran in FP8" in verdict.detail


@pytest.mark.parametrize("backend_name", RUNTIMES)
def test_gradient_accumulation_is_refused_before_anything_runs(backend_name):
    from precision_suite.backends import get_backend_class

    job = make_job("fp8-mixed", backend=backend_name, train={"grad_accumulation": 2, "batch_size": 16})
    problem = get_backend_class(backend_name).config_problem(job)
    assert problem and "grad_accumulation: 1" in problem and backend_name in problem
    assert get_backend_class(backend_name).config_problem(make_job("fp8-mixed", backend=backend_name)) is None


@needs_torch
@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (.[fp8])")
@pytest.mark.parametrize("backend_name", RUNTIMES)
def test_keras_and_torch_convert_the_same_layers(backend_name):
    from tests.helpers.torch import make_backend as make_torch_backend
    from tests.helpers.torch import make_job as make_torch_job

    data = tiny_data(poison=False)
    keras_backend = make_backend(make_job("fp8-mixed", backend=backend_name, model=TRANSFORMER), data)
    torch_backend = make_torch_backend(make_torch_job("torch-amp", "fp8-mixed", model=TRANSFORMER), data)
    try:
        keras_fp8, torch_fp8 = keras_backend.environment()["fp8"], torch_backend.environment()["fp8"]
    finally:
        keras_backend.teardown()
        torch_backend.teardown()
    assert keras_fp8["converted"] == torch_fp8["converted"] == TRANSFORMER_FP8_LAYERS
    assert keras_fp8["not_converted"] == torch_fp8["not_converted"] == {"head": torch_fp8["not_converted"]["head"]}


@pytest.mark.skipif(not HAS_TF, reason="tensorflow/keras is not installed")
def test_data_parallel_fp8_is_refused_on_tf_keras():
    from precision_suite.backends.keras.distributed import MirroredTfKerasBackend

    from tests.helpers.data_parallel import dp_job

    problem = MirroredTfKerasBackend.config_problem(dp_job("tf-keras", "fp8-mixed"))
    assert problem and "fp8-mixed cannot run data-parallel on tf-keras" in problem
    assert MirroredTfKerasBackend.config_problem(dp_job("tf-keras", "bf16-mixed")) is None
