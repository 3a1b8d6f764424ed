"""The PyTorch builders: exact canonical weights in and out, the op-by-op spec of
suite/models.py (checked against a NumPy forward pass written from that docstring), and
enough accuracy on digits with a plain training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from precision_suite.config import CnnConfig, MlpConfig, TransformerConfig, load_config
from precision_suite.data import batch_plan, load_dataset
from precision_suite.models import (
    BATCH_NORM_EPS,
    BATCH_NORM_MOMENTUM,
    LAYER_NORM_EPS,
    init_weights,
    prepare_inputs,
)

from tests.helpers.marks import needs_torch

pytestmark = needs_torch

# NumPy and torch sum in different orders; a few fp32 ulps of the logits' scale.
FORWARD_TOL = {"rtol": 1e-5, "atol": 1e-5}

MODELS = {
    "mlp": (MlpConfig(hidden=[16, 12], activation="gelu"), (1, 8, 8)),
    "cnn": (CnnConfig(channels=[4, 6], dense=10), (3, 8, 8)),
    "transformer": (TransformerConfig(patch_size=2, d_model=16, num_heads=4, depth=2), (2, 8, 8)),
}


def _perturbed(weights: dict[str, np.ndarray], seed: int = 7) -> dict[str, np.ndarray]:
    # Ones/zeros (LayerNorm, biases, BN stats) would hide a swapped or untransposed slot.
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in weights.items():
        noise = rng.standard_normal(value.shape).astype(np.float32) * 0.3
        out[name] = np.abs(value + noise) + 0.5 if name.endswith("moving_var") else value + noise
    return out


# ---------------------------------------------------------------- NumPy reference forward
def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * gamma + beta


def _conv_same(x, kernel):
    k = kernel.shape[0]
    pad = k // 2
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, kernel.shape[3], h, w))
    for di in range(k):
        for dj in range(k):
            out += np.einsum("nchw,co->nohw", xp[:, :, di : di + h, dj : dj + w], kernel[di, dj])
    return out


def _reference_forward(kind, cfg, w, x, training_bn=False):
    x = x.astype(np.float64)
    if kind == "mlp":
        act = {"relu": lambda v: np.maximum(v, 0), "gelu": _gelu, "tanh": np.tanh}[cfg.activation]
        for i in range(len(cfg.hidden)):
            x = act(x @ w[f"dense{i}.kernel"] + w[f"dense{i}.bias"])
        return x @ w["head.kernel"] + w["head.bias"]
    if kind == "cnn":
        for i in range(len(cfg.channels)):
            x = _conv_same(x, w[f"conv{i}.kernel"])
            if training_bn:
                mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
            else:
                mean, var = w[f"bn{i}.moving_mean"], w[f"bn{i}.moving_var"]
            x = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + BATCH_NORM_EPS)
            x = x * w[f"bn{i}.gamma"][:, None, None] + w[f"bn{i}.beta"][:, None, None]
            x = np.maximum(x, 0)
            n, c, h, wd = x.shape
            x = x.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
        x = np.maximum(x.mean((2, 3)) @ w["dense.kernel"] + w["dense.bias"], 0)
        return x @ w["head.kernel"] + w["head.bias"]
    x = x @ w["embed.kernel"] + w["embed.bias"] + w["pos"]
    n, t, d = x.shape
    heads, dh = cfg.num_heads, d // cfg.num_heads
    for b in range(cfg.depth):
        p = f"block{b}."
        h = _layer_norm(x, w[p + "ln1.gamma"], w[p + "ln1.beta"])
        q, k, v = (
            (h @ w[f"{p}attn.{s}.kernel"] + w[f"{p}attn.{s}.bias"]).reshape(n, t, heads, dh).transpose(0, 2, 1, 3)
            for s in "qkv"
        )
        scores = (q / math.sqrt(dh)) @ k.transpose(0, 1, 3, 2)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        mixed = (probs @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        x = x + mixed @ w[p + "attn.out.kernel"] + w[p + "attn.out.bias"]
        h = _layer_norm(x, w[p + "ln2.gamma"], w[p + "ln2.beta"])
        h = _gelu(h @ w[p + "mlp1.kernel"] + w[p + "mlp1.bias"])
        x = x + h @ w[p + "mlp2.kernel"] + w[p + "mlp2.bias"]
    x = _layer_norm(x, w["ln_f.gamma"], w["ln_f.beta"]).mean(1)
    return x @ w["head.kernel"] + w["head.bias"]


def _build(kind: str, seed: int = 0, perturb: bool = True):
    from precision_suite.backends.torch.models import build_torch_model

    cfg, shape = MODELS[kind]
    weights = init_weights(cfg, shape, 10, seed)
    if perturb:
        weights = _perturbed(weights)
    return cfg, shape, weights, build_torch_model(cfg, shape, 10, weights)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", list(MODELS))
def test_loads_exactly_the_canonical_weights_and_exports_them_back(kind):
    from precision_suite.backends.torch.models import torch_model_weights

    _, _, weights, module = _build(kind)
    exported = torch_model_weights(module)
    assert sorted(exported) == sorted(weights)
    for name, value in weights.items():
        assert exported[name].dtype == np.float32
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


@pytest.mark.parametrize("wrapper", ["compile", "data_parallel"])
def test_export_and_load_see_through_wrappers(wrapper):
    import torch
    from precision_suite.backends.torch.models import load_canonical_weights, torch_model_weights

    class CompiledLike(torch.nn.Module):
        # What torch.compile returns: the model registered as `_orig_mod` (importing dynamo
        # for the real thing costs seconds).
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    _, _, weights, module = _build("mlp")
    wrapped = CompiledLike(module) if wrapper == "compile" else torch.nn.DataParallel(module)
    assert sorted(torch_model_weights(wrapped)) == sorted(weights)
    load_canonical_weights(wrapped, {k: np.zeros_like(v) for k, v in weights.items()})
    assert not module.head.weight.detach().numpy().any()


def test_exported_weights_are_copies_not_views_of_the_parameters():
    import torch
    from precision_suite.backends.torch.models import torch_model_weights

    _, _, weights, module = _build("cnn")
    exported = torch_model_weights(module)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.add_(1)
    for name, value in weights.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_layouts_dense_transposed_and_conv_hwio_to_oihw():
    _, _, w, module = _build("cnn")
    np.testing.assert_array_equal(module.conv0.weight.detach().numpy(), w["conv0.kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(module.dense.weight.detach().numpy(), w["dense.kernel"].T)
    np.testing.assert_array_equal(module.bn1.running_var.numpy(), w["bn1.moving_var"])
    assert module.conv0.bias is None
    assert module.bn0.eps == BATCH_NORM_EPS and module.bn0.momentum == BATCH_NORM_MOMENTUM


def test_parameter_names_are_deterministic_and_follow_the_canonical_prefixes():
    _, _, _, first = _build("transformer")
    _, _, _, second = _build("transformer", seed=3)
    names = list(first.state_dict())
    assert names == list(second.state_dict())
    assert names[:3] == ["pos", "embed.weight", "embed.bias"]
    assert "block1.attn.out.weight" in names and names[-2:] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("kind", list(MODELS))
def test_forward_matches_a_numpy_reference_of_the_spec(kind):
    import torch

    cfg, shape, w, module = _build(kind)
    x = prepare_inputs(cfg, np.random.default_rng(1).standard_normal((5, *shape)).astype(np.float32))
    module.eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    assert logits.shape == (5, 10)
    np.testing.assert_allclose(logits, _reference_forward(kind, cfg, w, x), **FORWARD_TOL)


def test_batch_norm_training_uses_batch_stats_and_updates_running_var_unbiased():
    import torch

    cfg, shape, w, module = _build("cnn")
    x = prepare_inputs(cfg, np.random.default_rng(2).standard_normal((6, *shape)).astype(np.float32))
    module.train()
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, _reference_forward("cnn", cfg, w, x, True), **FORWARD_TOL)
    # conv0's output statistics, as the spec in suite/models.py defines the update.
    conv = _conv_same(x.astype(np.float64), w["conv0.kernel"])
    n = conv.shape[0] * conv.shape[2] * conv.shape[3]
    m = BATCH_NORM_MOMENTUM
    expected = (1 - m) * w["bn0.moving_var"] + m * conv.var((0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(module.bn0.running_var.numpy(), expected, **FORWARD_TOL)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
def test_mlp_activation_is_the_configured_one(activation):
    import torch
    from precision_suite.backends.torch.models import build_torch_model

    cfg = MlpConfig(hidden=[8], activation=activation)
    w = _perturbed(init_weights(cfg, (12,), 3, 0))
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    with torch.no_grad():
        out = build_torch_model(cfg, (12,), 3, w)(torch.from_numpy(x)).numpy()
    act = {
        "relu": lambda v: np.maximum(v, 0),
        "gelu": _gelu,
        "tanh": np.tanh,
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    }[activation]
    hidden = act(x.astype(np.float64) @ w["dense0.kernel"] + w["dense0.bias"])
    np.testing.assert_allclose(out, hidden @ w["head.kernel"] + w["head.bias"], **FORWARD_TOL)


def test_output_shapes_for_vectors_and_other_image_sizes():
    import torch
    from precision_suite.backends.torch.models import build_torch_model

    cases = [
        (MlpConfig(hidden=[5]), (20,)),
        (CnnConfig(channels=[3], kernel_size=5, dense=4), (1, 7, 9)),
        (TransformerConfig(patch_size=4, d_model=8, num_heads=2, depth=1), (3, 8, 12)),
    ]
    for cfg, shape in cases:
        module = build_torch_model(cfg, shape, 7, init_weights(cfg, shape, 7, 0))
        x = prepare_inputs(cfg, np.zeros((3, *shape), np.float32))
        assert module(torch.from_numpy(x)).shape == (3, 7), cfg.kind


def test_wrong_weights_are_rejected_by_name():
    from precision_suite.backends.torch.models import build_torch_model

    cfg, shape = MODELS["mlp"]
    w = init_weights(cfg, shape, 10, 0)
    missing = {k: v for k, v in w.items() if k != "dense1.bias"}
    with pytest.raises(ValueError, match=r"missing \['dense1.bias'\]"):
        build_torch_model(cfg, shape, 10, missing)
    with pytest.raises(ValueError, match=r"unexpected \['extra.kernel'\]"):
        build_torch_model(cfg, shape, 10, {**w, "extra.kernel": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="'head.kernel'"):
        build_torch_model(cfg, shape, 10, {**w, "head.kernel": w["head.kernel"].T})


def test_dropout_is_configurable_and_off_by_default():
    import torch
    from precision_suite.backends.torch.models import build_torch_model

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32))
    for dropout, expect_equal in ((0.0, True), (0.5, False)):
        cfg = MlpConfig(hidden=[32], dropout=dropout)
        module = build_torch_model(cfg, (64,), 10, init_weights(cfg, (64,), 10, 0))
        module.train()
        torch.manual_seed(0)
        train_out = module(x)
        module.eval()
        assert torch.equal(train_out, module(x)) is expect_equal


def test_export_from_a_half_module_is_float32_canonical():
    import torch
    from precision_suite.backends.torch.models import torch_model_weights

    _, _, w, module = _build("transformer", perturb=False)
    exported = torch_model_weights(module.to(torch.bfloat16))
    assert all(v.dtype == np.float32 for v in exported.values())
    np.testing.assert_allclose(exported["embed.kernel"], w["embed.kernel"], rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- accuracy on digits
# Targets for fp32 after the default training (configs/default.yaml).
TARGET_ACCURACY = {"mlp": 0.95, "cnn": 0.96, "transformer": 0.93}


@pytest.fixture(scope="module")
def default_digits():
    cfg = load_config(None)
    return cfg, load_dataset(cfg.data)


@pytest.fixture
def one_torch_thread():
    # Models this small gain nothing from a second thread, and when other processes share
    # the 2 cores, torch's spinning worker threads make training 10x slower.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_default_training_on_digits_reaches_the_target_accuracy(default_digits, one_torch_thread, kind, seed):
    import torch
    import torch.nn.functional as F
    from precision_suite.backends.torch.models import build_torch_model

    cfg, ds = default_digits
    model = next(m for m in cfg.models if m.kind == kind)
    torch.manual_seed(seed)
    weights = init_weights(model, ds.input_shape, ds.num_classes, seed)
    module = build_torch_model(model, ds.input_shape, ds.num_classes, weights)
    x_train = torch.from_numpy(prepare_inputs(model, ds.x_train))
    y_train = torch.from_numpy(ds.y_train)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.train.optimizer.lr)
    module.train()
    plan = batch_plan(len(ds.x_train), cfg.train.batch_size, seed, cfg.train.epochs, None)
    for _, rows in plan:
        index = torch.from_numpy(rows)
        loss = F.cross_entropy(module(x_train[index]), y_train[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        predictions = module(torch.from_numpy(prepare_inputs(model, ds.x_test))).argmax(1)
    accuracy = float((predictions.numpy() == ds.y_test).mean())
    assert accuracy >= TARGET_ACCURACY[kind], f"{kind} seed {seed}: {accuracy:.4f}"
