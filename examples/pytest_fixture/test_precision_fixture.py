"""A user's test of their model's precision policies with the ``precision_run`` fixture (from the
pytest plugin precision-suite installs) and ``assert_parity``: fails, with the verdict table as its
message, when bf16-mixed or fp16-mixed loses accuracy against fp32 beyond the parity band."""

import os
from pathlib import Path

import pytest
from precision_suite.testing import assert_parity

pytest.importorskip("torch")
CONFIG = Path(__file__).with_name("parity.yaml")
# CI size: seconds. PRECISION_SUITE_EXAMPLES=full runs parity.yaml as written (a real comparison).
CI_SIZE = {} if os.environ.get("PRECISION_SUITE_EXAMPLES") == "full" else {"train": {"steps": 40}, "seeds": [0, 1, 2]}


def test_half_precision_keeps_the_accuracy_of_fp32(precision_run):
    result = precision_run(CONFIG, **CI_SIZE)
    assert_parity(result)
