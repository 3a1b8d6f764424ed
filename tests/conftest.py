"""Shared test fixtures: tolerance table, global-state restoration, framework skips."""

from __future__ import annotations

import importlib.util
import os

import pytest

# One table of tolerances keyed by dtype (CONVENTIONS.md). A test needing another states
# both rtol and atol.
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"rtol": 1e-6, "atol": 1e-6},
    "float16": {"rtol": 1e-3, "atol": 1e-3},
    "bfloat16": {"rtol": 1.6e-2, "atol": 1.6e-2},
}

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None and (importlib.util.find_spec("keras") is not None)
HAS_JAX = importlib.util.find_spec("jax") is not None and importlib.util.find_spec("keras") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="tensorflow/keras is not installed")
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax/keras is not installed")


def _cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Put back the global state tests may change: environment, torch default dtype and
    TF32 flags, the Keras global dtype policy."""
    env = dict(os.environ)
    torch_state = None
    if HAS_TORCH and "torch" in __import__("sys").modules:
        import torch

        torch_state = (
            torch.get_default_dtype(),
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        )
    yield
    os.environ.clear()
    os.environ.update(env)
    import sys

    if torch_state is not None:
        import torch

        torch.set_default_dtype(torch_state[0])
        torch.backends.cuda.matmul.allow_tf32 = torch_state[1]
        torch.backends.cudnn.allow_tf32 = torch_state[2]
    if "keras" in sys.modules:
        import keras

        keras.config.set_dtype_policy("float32")
