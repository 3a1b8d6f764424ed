"""Keras tests load Keras on TensorFlow or on JAX in the test process (``import_keras`` switches
it); each module leaves it on TensorFlow where that is installed, as a bare ``import keras``
would find it, so a module's outcome never depends on which ran before it."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.marks import HAS_TF


@pytest.fixture(scope="module", autouse=True)
def _keras_back_on_tensorflow():
    yield
    if HAS_TF and "keras" in sys.modules:
        from precision_suite.backends.keras.common import import_keras

        import_keras("tensorflow")
