"""Test markers and the tolerance table, shared by every test module."""

from __future__ import annotations

import importlib.util

import pytest

# One table of tolerances keyed by dtype. A test needing another states
# both rtol and atol.
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"rtol": 1e-6, "atol": 1e-6},
    "float16": {"rtol": 1e-3, "atol": 1e-3},
    "bfloat16": {"rtol": 1.6e-2, "atol": 1.6e-2},
}

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None and (importlib.util.find_spec("keras") is not None)

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="tensorflow/keras is not installed")
HAS_JAX = importlib.util.find_spec("jax") is not None and importlib.util.find_spec("keras") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax/keras is not installed")


def cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()
