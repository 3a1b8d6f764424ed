"""A real run (the fake NumPy backend through the CLI) writes junit.xml and benchmark.json that
the standard readers accept, and export/advise work on it. Slow: one run of worker processes
took 25 s on the heavily loaded 2-core development machine; the unit tests beside this
file cover the same code on synthetic records in well under a second each."""

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


@pytest.mark.slow
def test_a_run_writes_ci_files_and_exports_its_curves(fake_backends, fake_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(fake_config, out) == 0
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

    capsys.readouterr()
    assert main(["advise", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## mlp/digits/cpu" in text and ("use fp16-mixed (fake)" in text or "stay with fp32" in text)
