"""The embedded default comparison end to end (slow: ~80 s on 2 cores): it runs, every
enforced verdict passes, and its report.html renders with every plot."""

from __future__ import annotations

import pytest
from precision_suite.cli import main
from precision_suite.results import read_records

from tests.conftest import HAS_TF, HAS_TORCH
from tests.suite.test_report import assert_renders_in_chromium, needs_chromium


@pytest.mark.slow
@needs_chromium
@pytest.mark.skipif(not (HAS_TORCH and HAS_TF), reason="needs torch and tensorflow")
def test_default_run_passes_check_and_its_report_renders(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out)]) == 0
    records = read_records(out / "results.jsonl").records
    assert len(records) == 3 * 12 * 3  # keras-jax jobs are recorded (unavailable) even without jax
    assert main(["check", str(out)]) == 0
    plots = sorted((out / "plots").glob("*.png"))
    assert len(plots) == 12  # loss, loss scale, speed/memory, accuracy for each of 3 models
    assert_renders_in_chromium(tmp_path, out / "report.html", len(plots))
