"""The embedded default comparison end to end (slow: its two-minute budget on 2 cores): it runs,
every enforced verdict passes, loss scaling is at work in every fp16 row, and its report.html
renders with every plot."""

from __future__ import annotations

import pytest
from precision_suite.cli import main
from precision_suite.results import read_records

from tests.helpers.marks import HAS_JAX, HAS_TF, HAS_TORCH
from tests.helpers.render import assert_renders_in_chromium, needs_chromium

FP16_BACKENDS = ("torch-amp", "torch-manual", "tf-keras", "keras-jax")


@pytest.mark.slow
@needs_chromium
@pytest.mark.skipif(
    not (HAS_TORCH and HAS_TF and HAS_JAX),
    reason="the default config runs torch, TensorFlow and JAX (keras-jax): needs all three installed",
)
def test_default_run_passes_check_and_its_report_renders(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out)]) == 0
    read = read_records(out / "results.jsonl")
    records = read.records
    # Backend-policies: the mlp 12 (fp32 of 3 frameworks; bf16-mixed and fp16-mixed of 4
    # backends; torch-manual's bf16-pure), the cnn and the transformer 7 each (no fp16, no -pure);
    # 3 seeds each; and the one-ulp noise-floor runs of the three frameworks' fp32 (3 x 3 x 3).
    assert len(records) == (12 + 7 + 7) * 3 + 3 * 3 * 3
    assert {r["status"] for r in records} == {"ok"}
    # The paired speed phase: one per (model, framework), every one ok.
    assert sorted(r["job_id"] for r in read.speed if r["status"] == "ok") == sorted(
        f"speed/{m}/digits/{f}" for m in ("mlp", "cnn", "transformer") for f in ("torch", "tensorflow", "jax")
    )
    # fp16-mixed on the mlp for every backend that has it, with dynamic loss scaling that moved
    # the scale during the run (the skipped and final-scale columns mean something).
    fp16 = [r for r in records if r["policy"] == "fp16-mixed"]
    assert sorted({(r["model"], r["backend"]) for r in fp16}) == sorted(("mlp", b) for b in FP16_BACKENDS)
    for record in fp16:
        assert record["observed"]["loss_scaling"] == "dynamic", record["job_id"]
        scales = record["curves"]["loss_scale"]
        assert len(set(scales)) > 1 and scales[-1] == record["metrics"]["loss_scale_final"], record["job_id"]
        assert sum(record["curves"]["skipped"]) == record["metrics"]["skipped_steps"], record["job_id"]
    assert sum(record["metrics"]["skipped_steps"] for record in fp16) > 0
    # One memory accounting: torch and Keras fp32 agree within 10 % per model, and Keras' mixed
    # policies show their activation savings.
    memory = {(r["model"], r["backend"], r["policy"]): r["metrics"]["peak_memory_bytes"] for r in records}
    for model in ("mlp", "cnn", "transformer"):
        torch_fp32, keras_fp32 = memory[(model, "torch-amp", "fp32")], memory[(model, "tf-keras", "fp32")]
        assert abs(keras_fp32 / torch_fp32 - 1) <= 0.10, model
        assert memory[(model, "tf-keras", "bf16-mixed")] < keras_fp32, model
    assert memory[("mlp", "tf-keras", "fp16-mixed")] < memory[("mlp", "tf-keras", "fp32")]
    # digits is not noisy: every enforced verdict is a PASS, none INCONCLUSIVE.
    assert main(["check", str(out), "--strict"]) == 0
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    # loss, speed/memory, memory breakdown, accuracy, equivalence for each of 3 models, and the
    # loss scale of the one model with fp16
    assert len(plots) == 3 * 5 + 1 and "loss_scale_mlp_digits_cpu.png" in plots
    assert_renders_in_chromium(tmp_path, out / "report.html", len(plots))
