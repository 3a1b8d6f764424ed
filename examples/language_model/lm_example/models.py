"""A decoder-only transformer (token + learned position embeddings, pre-norm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm, a linear head over the vocabulary)
in PyTorch, the same network in Keras, and ``torch_to_keras``.

Inputs are token ids (N, T); outputs logits (N, T, vocabulary): one prediction per position.
Constants set on both sides: LayerNorm epsilon 1e-5, exact (erf) GELU, attention scaled by
1/sqrt(head size) with a causal mask, no dropout.
"""

from __future__ import annotations

import numpy as np

D_MODEL = 48
HEADS = 2
LAYERS = 2
LN_EPS = 1e-5


def build_torch(input_shape, num_classes):
    import torch
    import torch.nn.functional as F
    from torch import nn

    (context,) = input_shape

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(D_MODEL, eps=LN_EPS)
            self.q = nn.Linear(D_MODEL, D_MODEL)
            self.k = nn.Linear(D_MODEL, D_MODEL)
            self.v = nn.Linear(D_MODEL, D_MODEL)
            self.out = nn.Linear(D_MODEL, D_MODEL)
            self.ln2 = nn.LayerNorm(D_MODEL, eps=LN_EPS)
            self.mlp1 = nn.Linear(D_MODEL, 4 * D_MODEL)
            self.mlp2 = nn.Linear(4 * D_MODEL, D_MODEL)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, d = x.shape
            h = self.ln1(x)

            def heads(z: torch.Tensor) -> torch.Tensor:
                return z.view(n, t, HEADS, d // HEADS).transpose(1, 2)

            att = F.scaled_dot_product_attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), is_causal=True)
            x = x + self.out(att.transpose(1, 2).reshape(n, t, d))
            return x + self.mlp2(F.gelu(self.mlp1(self.ln2(x))))

    class DecoderLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(num_classes, D_MODEL)
            self.positions = nn.Embedding(context, D_MODEL)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.ln_f = nn.LayerNorm(D_MODEL, eps=LN_EPS)
            self.head = nn.Linear(D_MODEL, num_classes)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    return DecoderLM()


def build_keras(input_shape, num_classes):
    import keras
    from keras import layers, ops

    (context,) = input_shape

    class PositionEmbedding(layers.Layer):
        def build(self, shape):
            self.table = self.add_weight(shape=(context, D_MODEL), initializer="random_normal", name="table")

        def call(self, x):
            return x + ops.cast(self.table, x.dtype)

    def block(x, i: int):
        h = layers.LayerNormalization(epsilon=LN_EPS, name=f"b{i}_ln1")(x)
        att = layers.MultiHeadAttention(HEADS, D_MODEL // HEADS, name=f"b{i}_attn")(h, h, use_causal_mask=True)
        x = layers.Add()([x, att])
        h = layers.LayerNormalization(epsilon=LN_EPS, name=f"b{i}_ln2")(x)
        h = layers.Dense(4 * D_MODEL, name=f"b{i}_mlp1")(h)
        h = layers.Activation(lambda z: keras.activations.gelu(z, approximate=False))(h)
        return layers.Add()([x, layers.Dense(D_MODEL, name=f"b{i}_mlp2")(h)])

    ids = keras.Input((context,), dtype="int32")
    x = layers.Embedding(num_classes, D_MODEL, name="tokens")(ids)
    x = PositionEmbedding(name="positions")(x)
    for i in range(LAYERS):
        x = block(x, i)
    x = layers.LayerNormalization(epsilon=LN_EPS, name="ln_f")(x)
    return keras.Model(ids, layers.Dense(num_classes, dtype="float32", name="head")(x))


def torch_to_keras(state: dict[str, np.ndarray], model) -> None:
    """Copy the torch initial weights into the Keras model: Linear (out, in) -> Dense (in, out);
    the q/k/v/out projections -> MultiHeadAttention's per-head kernels."""
    model.get_layer("tokens").set_weights([state["tokens.weight"]])
    model.get_layer("positions").set_weights([state["positions.weight"]])
    head_size = D_MODEL // HEADS
    for i in range(LAYERS):
        p = f"blocks.{i}"
        for ln in ("ln1", "ln2"):
            model.get_layer(f"b{i}_{ln}").set_weights([state[f"{p}.{ln}.weight"], state[f"{p}.{ln}.bias"]])
        for mlp in ("mlp1", "mlp2"):
            model.get_layer(f"b{i}_{mlp}").set_weights([state[f"{p}.{mlp}.weight"].T, state[f"{p}.{mlp}.bias"]])
        attn = model.get_layer(f"b{i}_attn")
        weights = []
        for proj in ("q", "k", "v"):  # (d, heads, head size) kernels, (heads, head size) biases
            weights += [
                state[f"{p}.{proj}.weight"].T.reshape(D_MODEL, HEADS, head_size),
                state[f"{p}.{proj}.bias"].reshape(HEADS, head_size),
            ]
        weights += [state[f"{p}.out.weight"].T.reshape(HEADS, head_size, D_MODEL), state[f"{p}.out.bias"]]
        attn.set_weights(weights)
    model.get_layer("ln_f").set_weights([state["ln_f.weight"], state["ln_f.bias"]])
    model.get_layer("head").set_weights([state["head.weight"].T, state["head.bias"]])
