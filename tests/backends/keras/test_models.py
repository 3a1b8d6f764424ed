"""The Keras builders load exactly the canonical weights and set every constant that Keras
defaults differently from torch. (Logit equality with torch is in tests/integration/test_cross_framework.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from precision_suite.config import CnnConfig, MlpConfig, TransformerConfig
from precision_suite.models import BATCH_NORM_EPS, LAYER_NORM_EPS, init_weights

from tests.helpers.marks import needs_tf

pytestmark = needs_tf

INPUT_SHAPE = (1, 8, 8)
MODELS = {
    "mlp": MlpConfig(hidden=[16, 8]),
    "cnn": CnnConfig(channels=[4, 8], dense=8),
    "transformer": TransformerConfig(d_model=8, num_heads=2, depth=1, patch_size=4),
}


@pytest.fixture(scope="module")
def km():
    from precision_suite.backends.keras import models as keras_models

    return keras_models


@pytest.mark.parametrize("kind", list(MODELS))
def test_weights_round_trip_exactly(km, kind):
    cfg = MODELS[kind]
    weights = init_weights(cfg, INPUT_SHAPE, 10, seed=3)
    model = km.build_keras_model(cfg, INPUT_SHAPE, 10, weights, "float32")
    exported = km.keras_model_weights(model)
    assert sorted(exported) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_mixed_policy_is_per_model_with_float32_head_and_variables(km):
    import keras

    cfg = MODELS["transformer"]
    weights = init_weights(cfg, INPUT_SHAPE, 10, seed=0)
    model = km.build_keras_model(cfg, INPUT_SHAPE, 10, weights, "mixed_float16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is untouched
    x = km.to_keras_inputs(cfg, np.ones((2, *INPUT_SHAPE), np.float32))
    logits = model(x)
    assert logits.dtype.name == "float32"
    assert model.get_layer("head").compute_dtype == "float32"
    assert model.get_layer("embed").compute_dtype == "float16"
    assert model.get_layer("block0.attn").q.compute_dtype == "float16"
    assert all(v.dtype == "float32" for v in model.variables if "seed" not in v.path)


def test_layer_norm_epsilon_and_exact_gelu(km):
    cfg = MODELS["transformer"]
    model = km.build_keras_model(cfg, INPUT_SHAPE, 10, init_weights(cfg, INPUT_SHAPE, 10, 0))
    assert model.get_layer("block0.ln1").epsilon == LAYER_NORM_EPS
    assert model.get_layer("ln_f").epsilon == LAYER_NORM_EPS
    gelu = model.get_layer("block0.gelu")
    value = float(np.asarray(gelu(np.array([[1.0]], np.float32)))[0, 0])
    exact = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    tanh_form = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    assert value == pytest.approx(exact, rel=1e-6)
    assert abs(value - tanh_form) > 1e-5


def test_batch_norm_running_variance_is_unbiased_like_torch(km):
    layer = km.TorchStyleBatchNorm(BATCH_NORM_EPS, 0.1, dtype="float32")
    x = np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype(np.float32)
    y = np.asarray(layer(x, training=True))
    flat = x.reshape(-1, 2)
    np.testing.assert_allclose(np.asarray(layer.moving_var), 0.9 + 0.1 * flat.var(axis=0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.1 * flat.mean(axis=0), atol=1e-7)
    # The batch itself is normalised with the biased variance.
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + BATCH_NORM_EPS)
    np.testing.assert_allclose(y.reshape(-1, 2), expected, rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_fit_are_rejected_naming_them(km):
    cfg = MODELS["mlp"]
    weights = init_weights(cfg, INPUT_SHAPE, 10, seed=0)
    missing = {k: v for k, v in weights.items() if k != "head.bias"}
    with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
        km.build_keras_model(cfg, INPUT_SHAPE, 10, missing)
    bad = dict(weights, **{"dense0.kernel": weights["dense0.kernel"].T})
    with pytest.raises(ValueError, match="dense0.kernel"):
        km.build_keras_model(cfg, INPUT_SHAPE, 10, bad)


def test_cnn_reads_channels_last(km):
    cfg = MODELS["cnn"]
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    assert km.to_keras_inputs(cfg, x).shape == (2, 4, 6, 3)
    assert km.keras_input_shape(cfg, (3, 4, 6)) == (4, 6, 3)
