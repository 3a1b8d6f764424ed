"""Keras 3 models for the framework-neutral model specs of ``suite/models.py``.

Imports keras at module level, so only the Keras backends import it, inside their methods.
``backends/torch/models.py`` is the reference computation; every constant Keras defaults
differently is set here explicitly (see ``suite/models.py`` for the op-by-op spec).

Layer names are the canonical name prefixes (``dense0``, ``block1.attn``, ``bn0``, ``pos``...),
and the canonical layouts are already Keras' (dense ``(in, out)``, conv HWIO), so loading and
exporting is a name lookup; ``bnI.moving_var`` ↔ the layer's ``moving_var`` variable.

The dtype policy is passed to every layer (never read from the global Keras policy), except the
classifier head, which is float32 as Keras' mixed-precision guide recommends so logits and loss
are computed in float32.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops
from precision_suite.models import (
    BATCH_NORM_EPS,
    BATCH_NORM_MOMENTUM,
    GELU_APPROXIMATE,
    LAYER_NORM_EPS,
    MAX_POOL,
    check_weight_names,
    num_tokens,
)


def _activation(name: str):
    table = {
        "relu": keras.activations.relu,
        # Keras' gelu defaults to the tanh approximation; torch's nn.GELU() is exact.
        "gelu": lambda x: keras.activations.gelu(x, approximate=GELU_APPROXIMATE),
        "tanh": keras.activations.tanh,
        "sigmoid": keras.activations.sigmoid,
    }
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(table)}") from None


class TorchStyleBatchNorm(keras.layers.Layer):
    """BatchNorm over the channels-last axis with torch ``BatchNorm2d`` semantics: a training
    batch is normalised with its biased variance, but ``moving_var`` is updated with the
    unbiased one (× n/(n-1)); Keras' BatchNormalization would use the biased one. Computed in
    float32 like Keras' own BatchNormalization (and cuDNN's half-precision BatchNorm)."""

    def __init__(self, epsilon: float, momentum: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon
        # Fraction of the batch statistic mixed in (torch convention; Keras' is 1 - this).
        self.momentum = momentum

    def build(self, input_shape: tuple[int, ...]) -> None:
        n = input_shape[-1]

        def weight(name: str, init: str, trainable: bool) -> keras.Variable:
            return self.add_weight(shape=(n,), initializer=init, trainable=trainable, name=name, autocast=False)

        self.gamma = weight("gamma", "ones", True)
        self.beta = weight("beta", "zeros", True)
        self.moving_mean = weight("moving_mean", "zeros", False)
        self.moving_var = weight("moving_var", "ones", False)

    def call(self, inputs, training: bool | None = None):
        x = ops.cast(inputs, "float32")
        if training:
            axes = list(range(len(x.shape) - 1))
            mean, var = ops.moments(x, axes=axes)
            count = ops.cast(ops.size(x) // x.shape[-1], "float32")
            unbiased = var * count / (count - 1.0)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * (1.0 - m) + mean * m)
            self.moving_var.assign(self.moving_var * (1.0 - m) + unbiased * m)
        else:
            mean, var = self.moving_mean, self.moving_var
        y = (x - mean) * ops.rsqrt(var + self.epsilon) * self.gamma + self.beta
        return ops.cast(y, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}


class PositionEmbedding(keras.layers.Layer):
    """Adds the learned position table ``pos`` (T, d)."""

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.pos = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros", name="pos")

    def call(self, inputs):
        return inputs + self.pos


class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention from four Dense projections (not keras MultiHeadAttention, whose
    layout and op order differ): q scaled by 1/sqrt(d_head) before q·kᵀ, softmax over keys in
    the compute dtype, heads concatenated in order, then ``out``."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        self.scale = 1.0 / math.sqrt(self.d_head)
        self.dropout_rate = dropout
        policy = self.dtype_policy
        self.q = keras.layers.Dense(d_model, name="q", dtype=policy)
        self.k = keras.layers.Dense(d_model, name="k", dtype=policy)
        self.v = keras.layers.Dense(d_model, name="v", dtype=policy)
        self.out = keras.layers.Dense(d_model, name="out", dtype=policy)
        self.drop = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape: tuple[int, ...]) -> None:
        for proj in (self.q, self.k, self.v):
            proj.build(input_shape)
        self.out.build(input_shape)

    def _heads(self, x):
        t = ops.shape(x)[1]
        x = ops.reshape(x, (-1, t, self.num_heads, self.d_head))
        return ops.transpose(x, (0, 2, 1, 3))  # (N, h, T, dh)

    def call(self, inputs, training: bool | None = None):
        t = ops.shape(inputs)[1]
        q = self._heads(self.q(inputs)) * ops.cast(self.scale, self.compute_dtype)
        k = self._heads(self.k(inputs))
        v = self._heads(self.v(inputs))
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        mixed = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (-1, t, self.d_model))
        return self.drop(self.out(mixed), training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "dropout": self.dropout_rate,
        }


def _mlp(cfg: Any, input_shape: tuple[int, ...], num_classes: int, policy) -> keras.Model:
    inputs = keras.Input((int(np.prod(input_shape)),), name="inputs")
    x = inputs
    act = _activation(cfg.activation)
    for i, n_out in enumerate(cfg.hidden):
        x = keras.layers.Dense(n_out, name=f"dense{i}", dtype=policy)(x)
        x = keras.layers.Activation(act, name=f"act{i}", dtype=policy)(x)
        x = keras.layers.Dropout(cfg.dropout, name=f"drop{i}", dtype=policy)(x)
    return _with_head(inputs, x, num_classes, cfg.name)


def _cnn(cfg: Any, input_shape: tuple[int, ...], num_classes: int, policy) -> keras.Model:
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
    c, h, w = input_shape
    inputs = keras.Input((h, w, c), name="inputs")  # channels-last: the backend transposes once
    x = inputs
    for i, c_out in enumerate(cfg.channels):
        x = keras.layers.Conv2D(c_out, cfg.kernel_size, padding="same", use_bias=False, name=f"conv{i}", dtype=policy)(
            x
        )
        x = TorchStyleBatchNorm(BATCH_NORM_EPS, BATCH_NORM_MOMENTUM, name=f"bn{i}", dtype=policy)(x)
        x = keras.layers.ReLU(name=f"relu{i}", dtype=policy)(x)
        x = keras.layers.MaxPooling2D(MAX_POOL, strides=MAX_POOL, padding="valid", name=f"pool{i}", dtype=policy)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap", dtype=policy)(x)
    x = keras.layers.Dense(cfg.dense, activation="relu", name="dense", dtype=policy)(x)
    x = keras.layers.Dropout(cfg.dropout, name="drop", dtype=policy)(x)
    return _with_head(inputs, x, num_classes, cfg.name)


def _transformer(cfg: Any, input_shape: tuple[int, ...], num_classes: int, policy) -> keras.Model:
    t, p = num_tokens(cfg, tuple(input_shape))
    d = cfg.d_model
    gelu = _activation("gelu")

    def layer_norm(name: str) -> keras.layers.LayerNormalization:
        # Keras' default epsilon is 1e-3; torch's LayerNorm is 1e-5.
        return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPS, name=name, dtype=policy)

    inputs = keras.Input((t, p), name="inputs")
    x = keras.layers.Dense(d, name="embed", dtype=policy)(inputs)
    x = PositionEmbedding(name="pos", dtype=policy)(x)
    x = keras.layers.Dropout(cfg.dropout, name="drop", dtype=policy)(x)
    for b in range(cfg.depth):
        pre = f"block{b}"
        attn = SelfAttention(d, cfg.num_heads, cfg.dropout, name=f"{pre}.attn", dtype=policy)
        x = keras.layers.Add(name=f"{pre}.add1", dtype=policy)([x, attn(layer_norm(f"{pre}.ln1")(x))])
        y = layer_norm(f"{pre}.ln2")(x)
        y = keras.layers.Dense(d * cfg.mlp_ratio, name=f"{pre}.mlp1", dtype=policy)(y)
        y = keras.layers.Activation(gelu, name=f"{pre}.gelu", dtype=policy)(y)
        y = keras.layers.Dense(d, name=f"{pre}.mlp2", dtype=policy)(y)
        y = keras.layers.Dropout(cfg.dropout, name=f"{pre}.drop", dtype=policy)(y)
        x = keras.layers.Add(name=f"{pre}.add2", dtype=policy)([x, y])
    x = layer_norm("ln_f")(x)
    x = keras.layers.GlobalAveragePooling1D(name="mean_tokens", dtype=policy)(x)
    return _with_head(inputs, x, num_classes, cfg.name)


def _with_head(inputs, x, num_classes: int, name: str) -> keras.Model:
    # float32 head: logits and loss in float32 whatever the policy (Keras mixed-precision guide).
    logits = keras.layers.Dense(num_classes, name="head", dtype="float32")(x)
    return keras.Model(inputs, logits, name=name)


def keras_input_shape(model_cfg: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-example shape the Keras model reads, from the canonical ``input_shape``."""
    if model_cfg.kind == "mlp":
        return (int(np.prod(input_shape)),)
    if model_cfg.kind == "cnn":
        c, h, w = input_shape
        return (h, w, c)
    return num_tokens(model_cfg, tuple(input_shape))


def keras_variable_map(model: keras.Model) -> dict[str, keras.Variable]:
    """Canonical weight name → the model's variable holding it."""
    out: dict[str, keras.Variable] = {}
    for layer in model.layers:
        if isinstance(layer, PositionEmbedding):
            out["pos"] = layer.pos
        elif isinstance(layer, SelfAttention):
            for proj in ("q", "k", "v", "out"):
                dense = getattr(layer, proj)
                out[f"{layer.name}.{proj}.kernel"] = dense.kernel
                out[f"{layer.name}.{proj}.bias"] = dense.bias
        elif isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
            out[f"{layer.name}.kernel"] = layer.kernel
            if layer.use_bias:
                out[f"{layer.name}.bias"] = layer.bias
        elif isinstance(layer, keras.layers.LayerNormalization):
            out[f"{layer.name}.gamma"] = layer.gamma
            out[f"{layer.name}.beta"] = layer.beta
        elif isinstance(layer, TorchStyleBatchNorm):
            for var in ("gamma", "beta", "moving_mean", "moving_var"):
                out[f"{layer.name}.{var}"] = getattr(layer, var)
    return out


def load_keras_weights(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Assign ``weights`` (canonical names/layouts) to ``model``, every variable exactly once.
    Missing, unexpected or misshapen names raise."""
    slots = keras_variable_map(model)
    check_weight_names(slots, weights, f"Keras {model.name}")
    for name, var in slots.items():
        value = np.asarray(weights[name], np.float32)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(
                f"weight {name!r}: canonical shape {value.shape} does not fit the Keras shape {tuple(var.shape)}"
            )
        var.assign(value.astype(var.dtype))


def keras_model_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights (BatchNorm moving statistics included) as the canonical dict of
    float32 NumPy arrays."""
    return {
        name: np.asarray(ops.convert_to_numpy(var.value), np.float32) for name, var in keras_variable_map(model).items()
    }


def build_keras_model(
    model_cfg: Any,
    input_shape: tuple[int, ...],
    num_classes: int,
    weights: dict[str, np.ndarray],
    dtype_policy: str | keras.DTypePolicy = "float32",
) -> keras.Model:
    """A Keras model for ``model_cfg`` holding exactly ``weights`` (canonical, for canonical
    ``input_shape`` without batch dim), every layer under ``dtype_policy`` but the float32
    head. It reads ``precision_suite.models.prepare_inputs`` output, channels-last for cnn (see
    ``to_keras_inputs``), and returns float32 logits (N, num_classes)."""
    policy = keras.DTypePolicy(dtype_policy) if isinstance(dtype_policy, str) else dtype_policy
    builders = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer}
    try:
        build = builders[model_cfg.kind]
    except KeyError:
        raise ValueError(f"unknown model kind {model_cfg.kind!r}; known: {', '.join(builders)}") from None
    model = build(model_cfg, tuple(input_shape), num_classes, policy)
    load_keras_weights(model, weights)
    return model


def to_keras_inputs(model_cfg: Any, x: np.ndarray) -> np.ndarray:
    """``prepare_inputs`` in the layout the Keras model reads (NHWC for cnn), in NumPy. The
    backend does the same transpose once on the device; this is for tests and ``model.fit``."""
    from precision_suite.models import prepare_inputs

    prepared = prepare_inputs(model_cfg, x)
    if model_cfg.kind == "cnn":
        return np.ascontiguousarray(prepared.transpose(0, 2, 3, 1))
    return prepared
