"""FP8 numerics without a GPU: the formats against ``ml_dtypes`` (an independent implementation of
the OCP FP8 formats), torchao's scale arithmetic and casts, Keras' delayed scaling (scale and amax
history), each against ``backends/reference/fp8.py``, and signal-to-noise gates on one FP8 layer's
output and gradients against fp32. torchao's own float8 tests skip without a GPU; its emulated
path is what runs here."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
from precision_suite.backends.reference import fp8

ml_dtypes = pytest.importorskip("ml_dtypes")
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None and importlib.util.find_spec("torch") is not None
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed (pip install '.[fp8]')")
FORMATS = ["float8_e4m3fn", "float8_e5m2"]

# Signal-to-noise gates (dB) on one Linear(256 → 128), 64 standard-normal rows, against fp32.
# Measured on this suite's CPU (5 seeds, min / mean): torchao tensorwise output 28.6 / 28.7,
# grad input 24.6 / 24.7, grad weight 24.6 / 24.7; rowwise 28.8 / 29.0, 28.9 / 29.0, 28.4 / 28.4;
# Keras float8 (delayed, history warmed up) 28.7, 24.7, 24.6 on TensorFlow and JAX. e4m3 keeps 3
# mantissa bits (~28 dB on Gaussian data), e5m2 2 bits (~24 dB). The gates sit 2.5 dB below; the
# ceiling proves FP8 ran at all (an unconverted layer matches fp32 to > 100 dB).
SNR_MIN_DB = {"output": 26.0, "grad": 22.0}
SNR_MAX_DB = 40.0


def _grid() -> np.ndarray:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(2000) * 10.0 ** rng.uniform(-8, 5, 2000),  # normals, subnormals, overflow
            [0.0, -0.0, 448.0, 449.0, 464.0, 500.0, -1e6, 57344.0, 61440.0, 1e9, np.nan],
            [1.0625, 1.1875, 1.125, 1.375, 2.0**-9, 2.0**-10, 2.0**-17],  # ties and tiny values
        ]
    )
    return values.astype(np.float32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32), equal_nan=True))


# ------------------------------------------------------------------ the formats themselves
@pytest.mark.parametrize("fmt", FORMATS)
def test_largest_finite_values_are_the_formats(fmt):
    assert fp8.FP8_MAX[fmt] == float(ml_dtypes.finfo(getattr(ml_dtypes, fmt)).max)
    assert fp8.FP8_MAX == {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}  # the OCP spec's numbers


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        # e4m3: 3 mantissa bits, spacing 1/8 in [1, 2): a tie goes to the even mantissa.
        ("float8_e4m3fn", 1.0625, 1.0),
        ("float8_e4m3fn", 1.1875, 1.25),
        ("float8_e4m3fn", 1.07, 1.125),  # not a tie: nearest
        # e5m2: 2 mantissa bits, spacing 1/4 in [1, 2).
        ("float8_e5m2", 1.125, 1.0),
        ("float8_e5m2", 1.375, 1.5),
        # beyond the largest finite value: saturates to it
        ("float8_e4m3fn", 500.0, 448.0),
        ("float8_e4m3fn", -1e6, -448.0),
        ("float8_e5m2", 1e9, 57344.0),
        # the smallest subnormals: e4m3 2^-9, e5m2 2^-16; half of it is a tie to zero
        ("float8_e4m3fn", 2.0**-10, 0.0),
        ("float8_e4m3fn", 1.5 * 2.0**-9, 2.0**-8),
        ("float8_e5m2", 2.0**-17, 0.0),
    ],
)
def test_saturated_cast_rounds_to_nearest_even(fmt, value, expected):
    assert float(fp8.cast_saturated(np.float32(value), fmt)) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_stays_nan(fmt):
    assert np.isnan(fp8.cast_saturated(np.float32(np.nan), fmt))


def test_an_unsaturated_e4m3_cast_of_an_overflow_is_nan():
    # Why every FP8 cast here clips first: e4m3fn has no infinity, an overflow becomes NaN.
    assert np.isnan(np.float32(500.0).astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


@needs_torchao
@pytest.mark.parametrize("fmt", FORMATS)
def test_torchao_saturated_cast_matches_ml_dtypes(fmt):
    import torch
    from torchao.float8.float8_utils import to_fp8_saturated

    values = _grid()
    torch_values = to_fp8_saturated(torch.from_numpy(values), getattr(torch, fmt)).float().numpy()
    assert _same(torch_values, fp8.cast_saturated(values, fmt))
    assert torch.finfo(getattr(torch, fmt)).max == fp8.FP8_MAX[fmt]


# ------------------------------------------------------------------ torchao's scales
@needs_torchao
@pytest.mark.parametrize("fmt", FORMATS)
def test_torchao_tensorwise_scale(fmt):
    import torch
    from torchao.float8.float8_utils import tensor_to_scale

    x = np.random.default_rng(1).standard_normal((32, 48)).astype(np.float32) * 3
    scale = tensor_to_scale(torch.from_numpy(x), getattr(torch, fmt)).numpy()
    assert _same(scale, fp8.tensorwise_scale(x, fmt))
    # The scale maps the amax onto the largest finite value (to float32 rounding).
    np.testing.assert_allclose(np.abs(x).max() * scale, fp8.FP8_MAX[fmt], rtol=1e-6)


@needs_torchao
def test_torchao_tensorwise_scale_of_zeros_is_finite():
    import torch
    from torchao.float8.float8_utils import tensor_to_scale

    scale = tensor_to_scale(torch.zeros(4, 4), torch.float8_e4m3fn).numpy()
    assert _same(scale, fp8.tensorwise_scale(np.zeros((4, 4)), "float8_e4m3fn"))
    assert scale == np.float32(448.0 / 1e-12)


@needs_torchao
@pytest.mark.parametrize("fmt", FORMATS)
def test_torchao_rowwise_scale(fmt):
    import torch
    from torchao.float8.config import Float8LinearConfig, ScalingGranularity
    from torchao.float8.float8_utils import tensor_to_scale

    config = Float8LinearConfig.from_recipe_name("rowwise")
    assert config.round_scales_to_power_of_2  # the recipe the reference describes
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32) * np.arange(1, 17)[:, None]
    scale = tensor_to_scale(
        torch.from_numpy(x),
        getattr(torch, fmt),
        scaling_granularity=ScalingGranularity.AXISWISE,
        axiswise_dim=-1,
        round_scales_to_power_of_2=True,
    ).numpy()
    expected = fp8.rowwise_scale(x, fmt, axis=-1)
    assert scale.shape == (16, 1) and _same(scale, expected)
    # Powers of two, each the largest that keeps the row's amax within the format.
    assert np.all(np.log2(expected) == np.round(np.log2(expected)))
    amax = np.abs(x).max(axis=1, keepdims=True)
    assert np.all(amax * expected <= fp8.FP8_MAX[fmt]) and np.all(amax * expected * 2 > fp8.FP8_MAX[fmt])


@needs_torchao
@pytest.mark.parametrize("recipe", fp8.TORCHAO_RECIPES)
def test_torchao_recipes_cast_forward_to_e4m3_and_gradients_as_described(recipe):
    import torch
    from torchao.float8.config import Float8LinearConfig, ScalingGranularity

    config = Float8LinearConfig.from_recipe_name(recipe)
    assert config.cast_config_input.target_dtype == torch.float8_e4m3fn
    assert config.cast_config_weight.target_dtype == torch.float8_e4m3fn
    # tensorwise: gradients in e5m2; rowwise keeps e4m3 for them too (torchao's recipe).
    expected_grad = torch.float8_e5m2 if recipe == "tensorwise" else torch.float8_e4m3fn
    assert config.cast_config_grad_output.target_dtype == expected_grad
    granularity = config.cast_config_input.scaling_granularity
    assert (granularity is ScalingGranularity.AXISWISE) == (fp8.torchao_recipe(recipe).granularity == "per row")


# ------------------------------------------------------------------ Keras' delayed scaling
@pytest.fixture(params=["tensorflow", "jax"])
def keras_runtime(request):
    module = request.param
    if importlib.util.find_spec(module) is None or importlib.util.find_spec("keras") is None:
        pytest.skip(f"{module}/keras is not installed")
    from precision_suite.backends.keras.common import import_keras

    yield import_keras(module)
    if importlib.util.find_spec("tensorflow") is not None:
        import_keras("tensorflow")  # as a bare `import keras` would find it


@pytest.mark.parametrize("fmt", FORMATS)
def test_keras_scale_and_history_updates(keras_runtime, fmt):
    from keras import ops, quantizers

    rng = np.random.default_rng(3)
    history = np.abs(rng.standard_normal(8)).astype(np.float32)
    x = rng.standard_normal((5, 7)).astype(np.float32) * 9
    new_history = np.asarray(ops.convert_to_numpy(quantizers.compute_float8_amax_history(x, history)))
    assert _same(new_history, fp8.keras_update_history(history, x))
    assert new_history[0] == np.abs(x).max() and _same(new_history[-1:], history[:1])
    dtype_max = np.float32(fp8.FP8_MAX[fmt])
    scale = quantizers.compute_float8_scale(np.float32(history.max()), np.float32(0.5), dtype_max)
    assert _same(ops.convert_to_numpy(scale), fp8.keras_next_scale(history, 0.5, fmt))
    kept = quantizers.compute_float8_scale(np.float32(0.0), np.float32(0.5), dtype_max)
    assert _same(ops.convert_to_numpy(kept), fp8.keras_next_scale(np.zeros(8), 0.5, fmt))


def test_keras_quantize_dequantize_matches_reference(keras_runtime):
    from keras import ops, quantizers

    x = _grid()[np.isfinite(_grid())]
    stored = np.float32(0.25)  # Keras stores 1/s: quantize is x / stored
    out = quantizers.quantize_and_dequantize(x, stored, "float8_e4m3fn", "float32")
    assert _same(ops.convert_to_numpy(out), fp8.quantize_dequantize(x, np.float32(1) / stored, "float8_e4m3fn"))


def _keras_dense_step(keras, layer, x, g):
    """One training call of ``layer`` with output gradient ``g``: (output, [dx, *variable grads])."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function  # Keras' float8 custom gradient is written for graphs on TensorFlow
        def run(xt):
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = layer(xt, training=True)
                loss = tf.reduce_sum(y * g)
            return y, tape.gradient(loss, [xt, *layer.trainable_variables])

        y, grads = run(tf.constant(x))
        return np.asarray(y), [np.asarray(v) for v in grads]
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    def loss(xx, tv):
        y, _ = layer.stateless_call(tv, frozen, xx, training=True)
        return (y * g).sum(), y

    (_, y), (dx, dvars) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, trainable)
    return np.asarray(y), [np.asarray(dx), *[np.asarray(v) for v in dvars]]


def _keras_dense_pair(keras, n_in=256, n_out=128):
    ref = keras.layers.Dense(n_out, dtype="float32")
    ref.build((None, n_in))
    low = keras.layers.Dense(n_out, dtype="float32")
    low.build((None, n_in))
    low.kernel.assign(ref.kernel.value)
    low.bias.assign(ref.bias.value)
    low.quantize("float8")
    return ref, low


def test_keras_dense_follows_the_delayed_scaling_reference(keras_runtime):
    keras = keras_runtime
    _, layer = _keras_dense_pair(keras, 32, 16)
    assert layer.quantization_mode == "float8"
    assert layer.inputs_amax_history.shape == (fp8.KERAS_AMAX_HISTORY_LENGTH,)
    optimizer = keras.optimizers.SGD(0.0)  # the kernel stays put; scales are overwritten, not stepped
    optimizer.build(layer.trainable_variables)
    rng = np.random.default_rng(4)
    history = np.zeros(fp8.KERAS_AMAX_HISTORY_LENGTH, np.float32)
    grad_history = history.copy()
    scale = grad_scale = np.float32(1.0)
    for step in range(4):
        x = (rng.standard_normal((8, 32)) * (step + 1)).astype(np.float32)
        g = (rng.standard_normal((8, 16)) * 10.0 ** (step - 2)).astype(np.float32)
        y, grads = _keras_dense_step(keras, layer, x, g)
        optimizer.apply(grads[1:], layer.trainable_variables)
        # The reference: scale from the history before this step's amax enters it.
        scale = fp8.keras_next_scale(history, scale, "float8_e4m3fn")
        history = fp8.keras_update_history(history, x)
        # The output gradient the layer saw, dequantised: reference from the float32 g and its scale.
        grad_scale = fp8.keras_next_scale(grad_history, grad_scale, "float8_e5m2")
        grad_history = fp8.keras_update_history(grad_history, g)
    assert _same(layer.inputs_amax_history.value, history)
    assert _same(layer.inputs_scale.value, scale)
    assert _same(layer.outputs_grad_amax_history.value, grad_history)
    assert _same(layer.outputs_grad_scale.value, grad_scale)
    # After the last step: the largest amax of the steps before it (index 0 holds the last one's).
    np.testing.assert_allclose(float(np.asarray(layer.inputs_scale.value)), history[1:].max() / 448, rtol=1e-6)


# ------------------------------------------------------------------ signal-to-noise gates
def _gate(what: str, snr: float) -> None:
    floor = SNR_MIN_DB["output" if what == "output" else "grad"]
    assert floor <= snr <= SNR_MAX_DB, f"{what}: SNR {snr:.1f} dB outside [{floor}, {SNR_MAX_DB}]"


@needs_torchao
@pytest.mark.parametrize("recipe", fp8.TORCHAO_RECIPES)
def test_torchao_linear_snr_vs_fp32(recipe):
    import torch
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(256, 128))
    low = torch.nn.Sequential(torch.nn.Linear(256, 128))
    low.load_state_dict(ref.state_dict())
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=True)
    low = convert_to_float8_training(low, config=config)
    x = torch.randn(64, 256)
    g = torch.randn(64, 128)
    outputs, grads = [], []
    for model in (ref, low):
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        y.backward(g)
        outputs.append(y.detach().numpy())
        grads.append((xi.grad.numpy(), model[0].weight.grad.numpy()))
    _gate("output", fp8.snr_db(*outputs))
    _gate("grad input", fp8.snr_db(grads[0][0], grads[1][0]))
    _gate("grad weight", fp8.snr_db(grads[0][1], grads[1][1]))


def test_keras_dense_snr_vs_fp32(keras_runtime):
    keras = keras_runtime
    ref, low = _keras_dense_pair(keras)
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(low.trainable_variables)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    g = rng.standard_normal((64, 128)).astype(np.float32)
    for _ in range(3):  # delayed scaling: the scales settle from the history
        y_low, g_low = _keras_dense_step(keras, low, x, g)
        optimizer.apply(g_low[1:], low.trainable_variables)
    y_ref, g_ref = _keras_dense_step(keras, ref, x, g)
    _gate("output", fp8.snr_db(y_ref, y_low))
    _gate("grad input", fp8.snr_db(g_ref[0], g_low[0]))
    _gate("grad weight", fp8.snr_db(g_ref[1], g_low[1]))


def test_eligibility_rule():
    assert fp8.fp8_eligible(64, 128) is None
    assert "out 10 not a multiple of 16" in fp8.fp8_eligible(64, 10)
    assert fp8.fp8_eligible(8, 10).startswith("in 8 and out 10")
