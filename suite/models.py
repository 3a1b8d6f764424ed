"""Framework-neutral model specs and their initial weights.

Initial weights are generated once, in NumPy, from the seed; every backend loads exactly
these arrays. Canonical layouts (the builders convert):

* dense kernel ``(in, out)`` (Keras layout; torch ``Linear.weight`` is its transpose)
* conv kernel ``(kh, kw, in, out)`` (HWIO, Keras layout; torch is OIHW)

Names, per model kind::

    mlp          dense{i}.kernel, dense{i}.bias          hidden layers i = 0..len(hidden)-1
                 head.kernel, head.bias
    cnn          conv{i}.kernel                           3x3 'same' conv, stride 1, no bias
                 bn{i}.gamma, bn{i}.beta, bn{i}.moving_mean, bn{i}.moving_var
                 (block i = conv → BatchNorm → ReLU → 2x2 max-pool, stride 2)
                 dense.kernel, dense.bias                 after global average pooling, ReLU
                 head.kernel, head.bias
    transformer  embed.kernel, embed.bias, pos            patch tokens (T, P) → (T, d) + pos (T, d)
                 block{b}.ln1.gamma, block{b}.ln1.beta    pre-norm blocks b = 0..depth-1
                 block{b}.attn.{q,k,v,out}.kernel/.bias   heads split from d; scale 1/sqrt(d/h)
                 block{b}.ln2.gamma, block{b}.ln2.beta
                 block{b}.mlp1.kernel/.bias, block{b}.mlp2.kernel/.bias  (d → r·d, GELU, → d)
                 ln_f.gamma, ln_f.beta                    then mean over tokens
                 head.kernel, head.bias

Every constant that frameworks default differently is fixed here and set explicitly by each
builder. The computation every builder reproduces, op for op (backends/torch/models.py is the
reference):

* mlp: ``dense{i}`` → activation (``MlpConfig.activation``; GELU exact) → dropout; ``head``.
* cnn: conv with 'same' padding (= kernel//2 each side for odd kernels; for even kernels the
  extra row/column is padded after, as torch ``padding="same"`` and Keras 'same' both do) →
  BatchNorm (eps ``BATCH_NORM_EPS``; running stat ← (1-m)·running + m·batch with
  m = ``BATCH_NORM_MOMENTUM``) → ReLU → max-pool 2x2 stride 2 (floor); then mean over H, W →
  ``dense`` → ReLU → dropout → ``head``. BatchNorm follows torch's standard ``BatchNorm2d``:
  normalises a training batch with the *biased* batch variance but updates ``moving_var`` with
  the *unbiased* one (× n/(n-1), n = N·H·W); Keras' BatchNormalization uses the biased one, so
  the Keras builder uses a layer that matches torch. Evaluation uses the moving statistics.
* transformer: ``embed``(patch) + ``pos`` → dropout → blocks → ``ln_f`` → mean over tokens →
  ``head``. Block (pre-norm): ``x = x + attn(ln1(x))``, ``x = x + dropout(mlp2(gelu(mlp1(
  ln2(x)))))``. Attention: q, k, v = dense projections split into ``num_heads`` heads of
  d/h (head j = features j·d/h .. (j+1)·d/h); ``q`` is multiplied by 1/sqrt(d/h) *before*
  q·kᵀ; softmax over keys in the compute dtype; no mask; heads concatenated in order →
  ``out`` → dropout. LayerNorm eps ``LAYER_NORM_EPS``.
* Dropout (``model.dropout``, 0 by default) is active in training only; its random masks are
  not shared across frameworks, so cross-framework comparisons run with dropout 0.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.config import CnnConfig, CustomModelConfig, MlpConfig, TransformerConfig
from precision_suite.errors import UserError, first_line

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job

LAYER_NORM_EPS = 1e-5
BATCH_NORM_EPS = 1e-5
# Fraction of the new batch statistic mixed into the running statistic each step: torch
# BatchNorm2d(momentum=0.1) == Keras BatchNormalization(momentum=0.9).
BATCH_NORM_MOMENTUM = 0.1
GELU_APPROXIMATE = False  # exact erf GELU (torch default; Keras defaults to the tanh form)
MAX_POOL = 2
# The model kinds this module specifies (their blocks: ``block_names``).
BUILT_IN_KINDS = ("mlp", "cnn", "transformer")


def _rng(seed: int, salt: int = 0x5EED) -> np.random.Generator:
    return np.random.default_rng([seed, salt])


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int, shape: tuple[int, ...]):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _he(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]):
    return (rng.standard_normal(size=shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _dense(w: dict[str, np.ndarray], rng, name: str, n_in: int, n_out: int, he: bool) -> None:
    w[f"{name}.kernel"] = _he(rng, n_in, (n_in, n_out)) if he else _glorot(rng, n_in, n_out, (n_in, n_out))
    w[f"{name}.bias"] = np.zeros(n_out, np.float32)


def _norm(w: dict[str, np.ndarray], name: str, n: int) -> None:
    w[f"{name}.gamma"] = np.ones(n, np.float32)
    w[f"{name}.beta"] = np.zeros(n, np.float32)


def num_tokens(model: TransformerConfig, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(number of patch tokens T, values per patch P) for an image of ``input_shape`` (C,H,W)."""
    if len(input_shape) != 3:
        raise ValueError(f"transformer needs image inputs (C, H, W), got shape {input_shape}")
    c, h, wd = input_shape
    p = model.patch_size
    if h % p or wd % p:
        raise ValueError(f"patch_size {p} does not divide the image size {h}x{wd}")
    return (h // p) * (wd // p), c * p * p


def prepare_inputs(model: Any, x: np.ndarray) -> np.ndarray:
    """The array a model's first layer reads, from canonical inputs ``x`` of shape (N, C, H, W)
    or (N, F), computed once in NumPy so every framework sees the same values in the same order.

    mlp: flattened (N, C·H·W) in C-major order. cnn: (N, C, H, W) unchanged (a channels-last
    framework transposes it). transformer: non-overlapping patches (N, T, C·p·p), row-major over
    the patch grid, each patch flattened as (C, p, p).
    """
    if model.kind == "custom":
        return np.ascontiguousarray(x)  # the user's arrays as the loader gave them (token ids stay integers)
    x = np.asarray(x, np.float32)
    if model.kind == "mlp":
        return np.ascontiguousarray(x.reshape(len(x), -1))
    if model.kind == "cnn":
        if x.ndim != 4:
            raise ValueError(f"cnn needs image inputs (N, C, H, W), got shape {x.shape}")
        return x
    if x.ndim != 4:
        raise ValueError(f"transformer needs image inputs (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    p = model.patch_size
    num_tokens(model, (c, h, w))
    patches = x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(patches.reshape(n, (h // p) * (w // p), c * p * p))


def init_weights(model: Any, input_shape: tuple[int, ...], num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """The initial weights of ``model`` for inputs of canonical ``input_shape`` (no batch dim),
    deterministic in ``seed``, in the canonical names and layouts of this module."""
    rng = _rng(seed)
    w: dict[str, np.ndarray] = {}
    if isinstance(model, MlpConfig):
        n_in = int(np.prod(input_shape))
        for i, n_out in enumerate(model.hidden):
            _dense(w, rng, f"dense{i}", n_in, n_out, he=model.activation == "relu")
            n_in = n_out
        _dense(w, rng, "head", n_in, num_classes, he=False)
    elif isinstance(model, CnnConfig):
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
        c_in, h, wd = input_shape
        k = model.kernel_size
        for i, c_out in enumerate(model.channels):
            if h < MAX_POOL or wd < MAX_POOL:
                raise ValueError(
                    f"cnn with {len(model.channels)} blocks pools a {input_shape[1]}x"
                    f"{input_shape[2]} image below 1x1; use fewer channels entries"
                )
            w[f"conv{i}.kernel"] = _he(rng, k * k * c_in, (k, k, c_in, c_out))
            _norm(w, f"bn{i}", c_out)
            w[f"bn{i}.moving_mean"] = np.zeros(c_out, np.float32)
            w[f"bn{i}.moving_var"] = np.ones(c_out, np.float32)
            c_in, h, wd = c_out, h // MAX_POOL, wd // MAX_POOL
        _dense(w, rng, "dense", c_in, model.dense, he=True)
        _dense(w, rng, "head", model.dense, num_classes, he=False)
    elif isinstance(model, TransformerConfig):
        t, p = num_tokens(model, input_shape)
        d = model.d_model
        _dense(w, rng, "embed", p, d, he=False)
        w["pos"] = (rng.standard_normal((t, d)) * 0.02).astype(np.float32)
        for b in range(model.depth):
            _norm(w, f"block{b}.ln1", d)
            for proj in ("q", "k", "v", "out"):
                _dense(w, rng, f"block{b}.attn.{proj}", d, d, he=False)
            _norm(w, f"block{b}.ln2", d)
            _dense(w, rng, f"block{b}.mlp1", d, d * model.mlp_ratio, he=False)
            _dense(w, rng, f"block{b}.mlp2", d * model.mlp_ratio, d, he=False)
        _norm(w, "ln_f", d)
        _dense(w, rng, "head", d, num_classes, he=False)
    else:  # pragma: no cover - the config union admits nothing else
        raise TypeError(f"unknown model config {type(model).__name__}")
    return w


def block_names(model: Any) -> list[str]:
    """The blocks of a built-in model, in forward order: what ``keep_fp32`` may name and what
    ``precision-suite bisect`` ranks. The same names in every framework (torch module qualified
    names, Keras layer names); a transformer's ``block{b}`` also names its whole block at once
    (``keep_fp32_names``)."""
    if isinstance(model, MlpConfig):
        return [f"dense{i}" for i in range(len(model.hidden))] + ["head"]
    if isinstance(model, CnnConfig):
        return [name for i in range(len(model.channels)) for name in (f"conv{i}", f"bn{i}")] + ["dense", "head"]
    if isinstance(model, TransformerConfig):
        parts = ("ln1", "attn", "ln2", "mlp1", "mlp2")
        return ["embed"] + [f"block{b}.{part}" for b in range(model.depth) for part in parts] + ["ln_f", "head"]
    raise TypeError(f"no built-in blocks for model config {type(model).__name__}")


def keep_fp32_names(model: Any) -> list[str]:
    """Every name ``keep_fp32`` accepts for a built-in model: its blocks and, for a transformer,
    each whole ``block{b}``."""
    groups = [f"block{b}" for b in range(model.depth)] if isinstance(model, TransformerConfig) else []
    return block_names(model) + groups


def check_weight_names(expected: Any, weights: dict[str, np.ndarray], what: str) -> None:
    """Raise if ``weights`` does not name exactly the slots ``expected`` (any iterable of
    canonical names) of the model ``what``: every weight is loaded exactly once."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit the {what}: missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )


def perturb_weights(weights: dict[str, np.ndarray], ulps: int) -> dict[str, np.ndarray]:
    """Every value moved ``ulps`` floats toward +inf (``np.nextafter``): the smallest change a
    float32 run can see, used to measure how fast training amplifies rounding (its chaos)."""
    out = {}
    for name, value in weights.items():
        if value.dtype.kind != "f":  # a counter (BatchNorm's num_batches_tracked) is no weight
            out[name] = value
            continue
        moved = value
        for _ in range(ulps):
            moved = np.nextafter(moved, np.asarray(np.inf, dtype=moved.dtype))
        out[name] = moved.astype(value.dtype, copy=False)
    return out


# ---------------------------------------------------------------- your own model (kind: custom)
# A custom model has no spec here: its factories (``CustomModelConfig``) build it, one per API
# family, and its initial weights are what the family's factory builds under the seed — the torch
# module's ``state_dict`` as {name: ndarray}; the Keras model's ``weights`` in order as
# {"<index> <path>": ndarray}, or, with ``convert``, the Keras model the converter filled from the
# torch state. They are built once per seed and family in a process and copied into each job, so
# every policy of a seed starts from the same weights. The code lives in
# ``backends/torch/custom.py`` and ``backends/keras/custom.py``.


class UserCodeError(UserError, ValueError):
    """An import string that does not resolve, or a user's function that returned the wrong thing;
    the message is one line naming the string."""


def add_python_path(paths: list[str]) -> None:
    """Put ``paths`` (``SuiteConfig.python_path``) on ``sys.path`` of this process, first, in order.
    Worker processes get them through ``PYTHONPATH`` (``execution/local.worker_environment``)."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def set_python_path_env(env: dict[str, str], paths: list[str]) -> None:
    """A worker's environment ``env`` with ``paths`` (``SuiteConfig.python_path``: where a custom
    model's or a python loader's code is imported from) first on its ``PYTHONPATH``; unchanged
    when there are none."""
    if paths:
        current = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
        env["PYTHONPATH"] = os.pathsep.join([*paths, *current])


def resolve_import(spec: str, key: str) -> Callable[..., Any]:
    """The callable an import string ``package.module:function`` names (attribute paths allowed),
    importing its module; ``UserCodeError`` naming ``key``, the string and the import error."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any failure of the user's module is the same thing to the user
        raise UserCodeError(
            f"{key}: cannot import {spec!r}: {type(exc).__name__}: {first_line(exc)} "
            f"(searched sys.path, which starts {sys.path[:3]})"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise UserCodeError(f"{key}: cannot import {spec!r}: module {module_name!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserCodeError(f"{key}: {spec!r} is a {type(target).__name__}, not a function")
    return target


_CUSTOM_WEIGHTS: dict[tuple[str, ...], dict[str, np.ndarray]] = {}


def initial_weights(job: Job, data: Dataset) -> dict[str, np.ndarray]:
    """The initial weights of ``job``'s model for its seed: the spec's (``init_weights``), or a
    custom model's as its family builds them (module comment above), built once per seed and
    family in this process. Callers must not change the arrays."""
    if not isinstance(job.model, CustomModelConfig):
        return init_weights(job.model, data.input_shape, data.num_classes, job.seed)
    key = (json.dumps(job.model.model_dump(mode="json"), sort_keys=True), job.family, str(job.seed), data.name)
    key += (str(data.input_shape), str(data.num_classes))
    if key not in _CUSTOM_WEIGHTS:
        _CUSTOM_WEIGHTS[key] = custom_initial_weights(
            job.model, job.family, job.runtime, data.input_shape, data.num_classes, job.seed
        )
    return _CUSTOM_WEIGHTS[key]


def custom_initial_weights(
    model: CustomModelConfig, family: str, runtime: str, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> dict[str, np.ndarray]:
    """A custom model's initial weights for an API ``family`` (Keras: on ``runtime``), from its
    factory under ``seed``."""
    if family == "torch":
        from precision_suite.backends.torch.custom import torch_initial_state

        return torch_initial_state(model, input_shape, num_classes, seed)
    from precision_suite.backends.keras.custom import keras_initial_weights

    return keras_initial_weights(model, input_shape, num_classes, seed, runtime=runtime)


# Rows of x_train the checks before a run push through each factory's model.
CHECK_ROWS = 4


def check_custom_model(model: CustomModelConfig, data: Dataset, backends: list[tuple[str, str]]) -> list[str]:
    """Before any job, for each API family of ``backends`` ((family, runtime) pairs) with a
    factory: the factory resolves and returns the right type, one forward pass on a few rows of
    x_train gives (rows, [T,] num_classes) logits, and ``convert`` sets every Keras weight so the
    Keras model computes what the torch one does. ``UserCodeError`` (one line) otherwise. A
    factory that itself raises is left to the jobs (each records the error, the run goes on):
    returned as warnings."""
    x = data.x_train[:CHECK_ROWS]
    expected = (len(x), *data.y_train.shape[1:], data.num_classes)
    families = {family: runtime for family, runtime in reversed(backends)}  # the first runtime of each family
    warnings: list[str] = []
    torch_output = None
    if "torch" in model.families and ("torch" in families or model.convert is not None):
        from precision_suite.backends.torch.custom import check_torch_model

        found = check_torch_model(model, x, expected, data.num_classes)
        if isinstance(found, Exception):
            warnings.append(f"models ({model.name}): the torch factory raised {type(found).__name__}: {found}")
        else:
            torch_output = found
    if "keras" in model.families and "keras" in families:
        from precision_suite.backends.keras.custom import check_keras_model

        raised = check_keras_model(model, x, expected, data.num_classes, families["keras"], torch_output)
        if raised is not None:
            warnings.append(f"models ({model.name}): the keras factory raised {type(raised).__name__}: {raised}")
    return warnings
