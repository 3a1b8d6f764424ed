"""The embedded default comparison end to end (slow: ~90 s on 2 cores): it runs, every
enforced verdict passes, and its report.html renders with every plot."""

from __future__ import annotations

import pytest
from precision_suite.cli import main
from precision_suite.results import read_records

from tests.helpers.marks import HAS_TF, HAS_TORCH
from tests.helpers.render import assert_renders_in_chromium, needs_chromium


@pytest.mark.slow
@needs_chromium
@pytest.mark.skipif(not (HAS_TORCH and HAS_TF), reason="needs torch and tensorflow")
def test_default_run_passes_check_and_its_report_renders(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out)]) == 0
    read = read_records(out / "results.jsonl")
    records = read.records
    # 3 models x 8 backend-policies x 3 seeds (keras-jax jobs are recorded, unavailable, even
    # without jax), and the one-ulp noise-floor runs of the three frameworks' fp32 (3 x 3 x 3).
    assert len(records) == 3 * 8 * 3 + 3 * 3 * 3
    # The paired speed phase: one per (model, framework), every one ok.
    assert sorted(r["job_id"] for r in read.speed if r["status"] == "ok") == sorted(
        f"speed/{m}/digits/{f}" for m in ("mlp", "cnn", "transformer") for f in ("torch", "tensorflow", "jax")
    )
    # One memory accounting: torch and Keras fp32 agree within 10 % per model, and Keras' mixed
    # policies show their activation savings.
    memory = {(r["model"], r["backend"], r["policy"]): r["metrics"]["peak_memory_bytes"] for r in records}
    for model in ("mlp", "cnn", "transformer"):
        torch_fp32, keras_fp32 = memory[(model, "torch-amp", "fp32")], memory[(model, "tf-keras", "fp32")]
        assert abs(keras_fp32 / torch_fp32 - 1) <= 0.10, model
        assert memory[(model, "tf-keras", "bf16-mixed")] < keras_fp32, model  # the CPU default has no fp16
    # digits is not noisy: every enforced verdict is a PASS, none INCONCLUSIVE.
    assert main(["check", str(out), "--strict"]) == 0
    plots = sorted((out / "plots").glob("*.png"))
    # loss, speed/memory, memory breakdown, accuracy, equivalence for each of 3 models (no loss
    # scale plot: no policy of the CPU default scales its loss)
    assert len(plots) == 15
    assert_renders_in_chromium(tmp_path, out / "report.html", len(plots))
