"""Shared test fixtures: tolerance table, global-state restoration, framework skips."""

from __future__ import annotations

import os

import pytest

from tests.helpers.marks import HAS_TORCH, cuda_available


def pytest_collection_modifyitems(config, items):
    if any(item.get_closest_marker("gpu") for item in items) and not cuda_available():
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
