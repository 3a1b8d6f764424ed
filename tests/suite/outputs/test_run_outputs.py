"""A real run (the fake NumPy backend through the CLI) writes junit.xml and benchmark.json that
the standard readers accept, and export/advise work on it. Slow: one run of worker processes
took 25 s on the heavily loaded 2-core development machine; the unit tests beside this
file cover the same code on synthetic records in well under a second each.

The run's fp16-mixed is a broken candidate (its learning rate ×10, through the fake backend's
options): that gives advise one correct answer whatever the machine's speed or ISA (fp16 is
emulated on most CPUs, not on all, and timings move), and gives junit.xml a failure to carry."""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

import pytest
from precision_suite.cli import main

from tests.helpers.cli import read_run, run_cli
from tests.suite.outputs.test_export import _read_events

xmlschema = pytest.importorskip("xmlschema")
pb_file = pytest.importorskip("pytest_benchmark.storage.file")
pytest.importorskip("tensorboardX")
SCHEMA = Path(__file__).resolve().parent.parent / "data" / "junit-10.xsd"


BROKEN_FP16 = "backends.options={fake: {lr_factor: 10, fault_policies: [fp16-mixed]}}"


@pytest.mark.slow
def test_a_run_writes_ci_files_and_exports_its_curves(fake_backends, fake_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(fake_config, out, BROKEN_FP16) == 1  # fp16-mixed fails parity: check's exit code
    records = {r["job_id"]: r for r in read_run(out) if r["status"] == "ok"}

    xmlschema.XMLSchema(str(SCHEMA)).validate(str(out / "junit.xml"))
    storage = pb_file.FileStorage(tmp_path, logger=logging.getLogger("test"))
    benches = {b["name"]: b for b in storage.load_benchmarks(str(out / "benchmark.json"))}
    assert set(benches) == {"fake[fp32]", "fake[fp16-mixed]"}  # tf32 is unavailable on a CPU
    fp16 = [r for r in records.values() if r["policy"] == "fp16-mixed"]
    windows = [ms / 1e3 for r in fp16 for ms in r["curves"]["window_step_time_ms"]]
    assert benches["fake[fp16-mixed]"]["data"] == pytest.approx(windows, rel=1e-12)
    assert benches["fake[fp16-mixed]"]["iterations"] == 4
    assert json.loads((out / "benchmark.json").read_text())["commit_info"]["project"] == "precision-suite"

    assert main(["export", str(out), "--to", "tensorboard"]) == 0
    for job_id, record in records.items():
        folder = out / "tensorboard" / job_id.replace("/", "_")
        (events_file,) = glob.glob(str(folder / "events.out.tfevents.*"))
        losses = [
            (e.step, v.simple_value)
            for e in _read_events(events_file)
            for v in e.summary.value
            if v.tag == "train/loss"
        ]
        curves = record["curves"]
        assert losses == [
            (s, pytest.approx(loss, rel=1e-6)) for s, loss in zip(curves["step"], curves["train_loss"], strict=True)
        ]

    # The fact the advice follows from, read from the records rather than from any verdict: in
    # every seed fp16-mixed's test accuracy is more than 5 pt from fp32's, far outside the parity band.
    accuracy = {(r["policy"], r["seed"]): r["metrics"]["test_accuracy"] for r in records.values()}
    assert all(abs(accuracy["fp16-mixed", seed] - accuracy["fp32", seed]) > 0.05 for seed in (0, 1))
    assert {r["config"]["parity"]["tolerance_pts"] for r in records.values()} == {1.5}
    capsys.readouterr()
    assert main(["advise", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## mlp/digits/cpu" in text
    assert "stay with fp32: no policy is both faster than fp32 beyond noise and at parity (PASS)" in text
    assert "use fp16-mixed" not in text
    (avoid,) = [line.strip() for line in text.splitlines() if line.strip().startswith("avoid ")]
    assert avoid.startswith("avoid fake fp16-mixed: parity FAIL")
