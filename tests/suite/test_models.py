"""Framework-neutral model specs: deterministic initial weights in the canonical names and
layouts, and the input arrays each model's first layer reads."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.config import CnnConfig, MlpConfig, TransformerConfig
from precision_suite.models import init_weights, num_tokens, perturb_weights, prepare_inputs

MODELS = [
    (MlpConfig(hidden=[16, 8]), (1, 8, 8)),
    (CnnConfig(channels=[4, 6], dense=12), (3, 8, 8)),
    (TransformerConfig(patch_size=2, d_model=8, num_heads=2, depth=2), (1, 8, 8)),
]


@pytest.mark.parametrize(("cfg", "shape"), MODELS, ids=lambda v: getattr(v, "kind", ""))
def test_same_seed_same_weights_different_seed_different(cfg, shape):
    first = init_weights(cfg, shape, 10, seed=0)
    again = init_weights(cfg, shape, 10, seed=0)
    other = init_weights(cfg, shape, 10, seed=1)
    assert list(first) == list(again)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert all(v.dtype == np.float32 for v in first.values())
    random_kernels = [k for k in first if k.endswith("kernel")]
    assert all(not np.array_equal(first[k], other[k]) for k in random_kernels)


def test_canonical_names_and_layouts():
    mlp = init_weights(MlpConfig(hidden=[16, 8]), (1, 8, 8), 10, 0)
    assert {k: v.shape for k, v in mlp.items()} == {
        "dense0.kernel": (64, 16),
        "dense0.bias": (16,),
        "dense1.kernel": (16, 8),
        "dense1.bias": (8,),
        "head.kernel": (8, 10),
        "head.bias": (10,),
    }
    cnn = init_weights(CnnConfig(channels=[4, 6], kernel_size=3, dense=12), (3, 8, 8), 5, 0)
    assert cnn["conv0.kernel"].shape == (3, 3, 3, 4)  # HWIO
    assert cnn["conv1.kernel"].shape == (3, 3, 4, 6)
    assert cnn["dense.kernel"].shape == (6, 12) and cnn["head.kernel"].shape == (12, 5)
    np.testing.assert_array_equal(cnn["bn1.moving_var"], np.ones(6, np.float32))
    np.testing.assert_array_equal(cnn["bn1.moving_mean"], np.zeros(6, np.float32))
    tr = init_weights(TransformerConfig(patch_size=2, d_model=8, num_heads=2, depth=2), (1, 8, 8), 10, 0)
    assert tr["embed.kernel"].shape == (4, 8) and tr["pos"].shape == (16, 8)
    assert tr["block1.attn.out.kernel"].shape == (8, 8)
    assert tr["block1.mlp1.kernel"].shape == (8, 16) and tr["block1.mlp2.kernel"].shape == (16, 8)
    assert {"ln_f.gamma", "ln_f.beta", "block0.ln2.gamma"} <= set(tr)


def test_prepare_inputs_mlp_flattens_channel_major():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    flat = prepare_inputs(MlpConfig(), x)
    assert flat.shape == (2, 12)
    # Feature index c·H·W + h·W + w: all of channel 0 first.
    assert flat[1, 4] == x[1, 1, 0, 0] and flat[1, 11] == x[1, 2, 1, 1]


def test_prepare_inputs_cnn_keeps_nchw():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(prepare_inputs(CnnConfig(), x), x)
    with pytest.raises(ValueError, match="cnn needs image inputs"):
        prepare_inputs(CnnConfig(), x.reshape(2, -1))


def test_prepare_inputs_transformer_patch_order_by_hand():
    cfg = TransformerConfig(patch_size=2, d_model=8, num_heads=2)
    n, c, h, w, p = 2, 3, 4, 6, 2
    x = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
    tokens = prepare_inputs(cfg, x)
    assert tokens.shape == (n, (h // p) * (w // p), c * p * p)
    for i in range(n):
        t = 0
        for row in range(h // p):  # row-major over the patch grid
            for col in range(w // p):
                patch = [
                    x[i, ch, row * p + dy, col * p + dx] for ch in range(c) for dy in range(p) for dx in range(p)
                ]  # each patch flattened (C, p, p)
                np.testing.assert_array_equal(tokens[i, t], patch)
                t += 1


def test_num_tokens_and_its_errors():
    cfg = TransformerConfig(patch_size=4)
    assert num_tokens(cfg, (3, 8, 12)) == (6, 48)
    with pytest.raises(ValueError, match="patch_size 4 does not divide the image size 8x10"):
        num_tokens(cfg, (1, 8, 10))
    with pytest.raises(ValueError, match="transformer needs image inputs"):
        num_tokens(cfg, (64,))
    with pytest.raises(ValueError, match=r"transformer needs image inputs \(N, C, H, W\)"):
        prepare_inputs(cfg, np.zeros((2, 64), np.float32))


def test_cnn_that_pools_below_one_pixel_is_rejected():
    with pytest.raises(ValueError, match="pools a 4x4 image below 1x1"):
        init_weights(CnnConfig(channels=[2, 2, 2]), (1, 4, 4), 10, 0)


def test_perturb_weights_moves_every_value_one_float32_ulp_up():
    weights = init_weights(MlpConfig(hidden=[16]), (1, 8, 8), 10, seed=0)
    moved = perturb_weights(weights, 1)
    for name, value in weights.items():
        assert moved[name].dtype == np.float32
        assert (moved[name] > value).all()
        np.testing.assert_array_equal(moved[name], np.nextafter(value, np.float32(np.inf)))
    assert not np.shares_memory(moved["head.kernel"], weights["head.kernel"])
