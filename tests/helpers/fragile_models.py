"""Positive controls for ``precision-suite bisect``: a user's model package (``kind: custom``) whose
one block, ``fragile``, breaks a half precision on purpose, with its Keras twin (same layer names)
and a converter; and the healthy twin with nothing fragile.

* ``overflow``: the block scales its input by 1000 and normalises by the root mean square computed
  as sqrt(mean(z²)): z² passes fp16's largest value (65504) for |z| > 256, so in fp16 the norm is
  inf and the block outputs zeros (fp32 and bf16 are fine: bf16 has fp32's range).
* ``cancel``: the block centres and scales its input with the variance computed as E[x²] − E[x]²
  on its input offset by 4 (the hidden activations are 0–2 and their variance about 0.2): in bf16
  (8 significant bits) E[x²] ≈ 20 is known to ±0.06 per term and the difference of two such numbers
  is noise (catastrophic cancellation); fp32 stays within 1e-4 of the exact output.
* ``healthy``: the same network with a plain LayerNorm-like block (the centred variance).

Flatten → ``dense_in`` (Linear 64→32) → ReLU → ``fragile`` → ``head`` (Linear 32→classes).
"""

from __future__ import annotations

import numpy as np

HIDDEN = 32
GAIN = 1000.0
OFFSET = 4.0
EPS = 1e-5


def _torch_block(kind: str):
    import torch
    from torch import nn

    class Fragile(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if kind == "overflow":
                z = x * GAIN
                return z / torch.sqrt((z * z).mean(dim=-1, keepdim=True) + EPS)
            if kind == "cancel":
                z = x + OFFSET
                mean = z.mean(dim=-1, keepdim=True)
                var = (z * z).mean(dim=-1, keepdim=True) - mean * mean
                return (z - mean) / torch.sqrt(var.clamp(min=0.0) + EPS)
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + EPS)

    return Fragile()


def _torch(input_shape, num_classes, kind):
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.dense_in = nn.Linear(int(np.prod(input_shape)), HIDDEN)
            self.act = nn.ReLU()
            self.fragile = _torch_block(kind)
            self.head = nn.Linear(HIDDEN, num_classes)

        def forward(self, x):
            return self.head(self.fragile(self.act(self.dense_in(self.flatten(x)))))

    return Net()


def _keras(input_shape, num_classes, kind):
    import keras
    from keras import ops

    class Fragile(keras.layers.Layer):
        def call(self, x):
            if kind == "overflow":
                z = x * GAIN
                return z / ops.sqrt(ops.mean(z * z, axis=-1, keepdims=True) + EPS)
            if kind == "cancel":
                z = x + OFFSET
                mean = ops.mean(z, axis=-1, keepdims=True)
                var = ops.mean(z * z, axis=-1, keepdims=True) - mean * mean
                return (z - mean) / ops.sqrt(ops.maximum(var, 0.0) + EPS)
            centred = x - ops.mean(x, axis=-1, keepdims=True)
            return centred / ops.sqrt(ops.mean(centred * centred, axis=-1, keepdims=True) + EPS)

    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(HIDDEN, name="dense_in")(x)
    x = keras.layers.ReLU(name="act")(x)
    x = Fragile(name="fragile")(x)
    logits = keras.layers.Dense(num_classes, name="head", dtype="float32")(x)
    return keras.Model(inputs, logits)


def torch_overflow(input_shape, num_classes):
    return _torch(input_shape, num_classes, "overflow")


def keras_overflow(input_shape, num_classes):
    return _keras(input_shape, num_classes, "overflow")


def torch_cancel(input_shape, num_classes):
    return _torch(input_shape, num_classes, "cancel")


def keras_cancel(input_shape, num_classes):
    return _keras(input_shape, num_classes, "cancel")


def torch_healthy(input_shape, num_classes):
    return _torch(input_shape, num_classes, "healthy")


def keras_healthy(input_shape, num_classes):
    return _keras(input_shape, num_classes, "healthy")


def torch_to_keras(state, model):
    for name in ("dense_in", "head"):
        model.get_layer(name).set_weights([state[f"{name}.weight"].T, state[f"{name}.bias"]])
