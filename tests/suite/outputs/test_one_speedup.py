"""One speedup per row, read by every output (``compare.row_speed``): the paired speed phase where
it ran; training jobs' step times only where they were timed alone; otherwise "not measured" —
never a figure from training jobs that ran side by side."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
from precision_suite.cli import main
from precision_suite.outputs.advise import advise
from precision_suite.outputs.benchmark_json import BENCHMARK_FILE, benchmark_document
from precision_suite.outputs.diff import diff_runs
from precision_suite.outputs.rundir import load_run

from tests.helpers.records import make_record, side_by_side, speed_record, timed_alone, with_windows

BF16 = ("torch-amp", "bf16-mixed")
# The speed phase timed bf16 at 12.5 ms a step against fp32's 10 ms: 0.8×, slower.
PHASE_SPEEDUP = 10.0 / 12.5


def _jobs(bf16_ms, placed, fp32_ms=10.0):
    """fp32 and bf16-mixed of torch-amp, three seeds at the same accuracy (parity PASS), each job with
    timed windows at its step time, placed as ``placed`` says."""
    out = []
    for seed in (0, 1, 2):
        for policy, ms in (("fp32", fp32_ms), ("bf16-mixed", bf16_ms(seed) if callable(bf16_ms) else bf16_ms)):
            record = make_record("torch-amp", policy, seed, accuracy=0.95 + 0.002 * seed, step_ms=ms)
            out.append(placed(with_windows(record)))
    return out


def _phase():
    return speed_record({BF16: 12.5}, baseline_ms=10.0)


def _bf16_row(run):
    (row,) = [r for r in run.comparison.rows if (r.backend, r.policy) == BF16]
    return row


def _speedups_in(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"(\d+\.\d+)×", text)]


def _md_speedup_cell(report_md: str) -> str:
    """The speedup cell of the bf16-mixed row of report.md's table."""
    lines = report_md.splitlines()
    header = next(line for line in lines if line.startswith("| backend"))
    column = [c.strip() for c in header.split("|")].index("speedup")
    row = next(line for line in lines if "| bf16-mixed |" in line)
    return row.split("|")[column].strip()


def _phase_windows_s(record, label):
    return [w["wall_s"] / w["steps"] for w in record["speed"]["windows"][label]["samples"]]


def test_every_output_quotes_the_speed_phase_never_the_untimed_jobs(write_run, capsys):
    phase = _phase()
    # The training jobs ran side by side (untimed) and say bf16 is 10 / 2 = 5× faster.
    path = write_run("run", [*_jobs(2.0, side_by_side), phase])

    row = _bf16_row(load_run(path))
    assert row.speed_source == "paired" and row.speedup == pytest.approx(PHASE_SPEEDUP, rel=0.03)
    assert row.speedup_max < 1.0  # its interval says slower

    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    headline = next(line for line in out.splitlines() if "torch-amp bf16-mixed:" in line)
    assert "1.2× slower" in headline  # 1 / 0.8
    cell = _md_speedup_cell((path / "report.md").read_text())
    assert _speedups_in(cell)[0] == pytest.approx(PHASE_SPEEDUP, rel=0.03) and "CI" in cell
    with open(path / "summary.csv", newline="") as fh:
        (csv_row,) = [r for r in csv.DictReader(fh) if (r["backend"], r["policy"]) == BF16]
    assert float(csv_row["speedup"]) == row.speedup

    benches = {b["name"]: b for b in json.loads((path / BENCHMARK_FILE).read_text())["benchmarks"]}
    bf16, fp32 = benches["torch-amp[bf16-mixed]"], benches["torch-amp[fp32]"]
    assert bf16["extra_info"]["speedup"] == row.speedup
    assert (bf16["extra_info"]["speedup_min"], bf16["extra_info"]["speedup_max"]) == (row.speedup_min, row.speedup_max)
    assert bf16["extra_info"]["speed_source"] == "paired"
    # Its rounds are the phase's windows the speedup came from, not the jobs' 2 ms windows.
    assert bf16["stats"]["data"] == pytest.approx(_phase_windows_s(phase, "torch-amp bf16-mixed"))
    assert fp32["stats"]["data"] == pytest.approx(_phase_windows_s(phase, "torch-amp fp32"))
    assert bf16["stats"]["iterations"] == 5

    assert main(["advise", str(path)]) == 0
    text = capsys.readouterr().out
    assert "stay with fp32" in text
    (avoid,) = [line for line in text.splitlines() if "avoid torch-amp bf16-mixed" in line]
    assert f"slower: {row.speedup:.2f}× (95% CI {row.speedup_min:.2f}–{row.speedup_max:.2f})" in avoid
    assert all(v < 1.0 for v in _speedups_in(text))  # nothing from the jobs' 5×


def test_diff_ignores_a_change_in_untimed_jobs_times(write_run, capsys):
    phase = _phase()
    old = write_run("old", [*_jobs(2.0, side_by_side), phase])
    # The same run, but the side-by-side jobs now say bf16 is 10 / 20 = 0.5×: not a speed change.
    new = write_run("new", [*_jobs(20.0, side_by_side), phase])
    result = diff_runs(load_run(old), load_run(new))
    assert result.exit_code == 0 and not result.regressions
    (row,) = [r for r in result.rows if r.label == "torch-amp bf16-mixed"]
    speed = next(c for c in row.changes if c.quantity == "speedup")
    assert speed.old == speed.new == pytest.approx(PHASE_SPEEDUP, rel=0.03)
    assert not speed.beyond_noise and "paired" in speed.note
    assert main(["diff", str(old), str(new)]) == 0
    assert "No change beyond noise in any compared row." in capsys.readouterr().out

    # A phase that timed bf16 at twice its speed is a change, and not a regression.
    faster = write_run("faster", [*_jobs(20.0, side_by_side), speed_record({BF16: 6.25}, baseline_ms=10.0)])
    result = diff_runs(load_run(old), load_run(faster))
    speed = next(
        c for r in result.rows if r.label == "torch-amp bf16-mixed" for c in r.changes if c.quantity == "speedup"
    )
    assert speed.beyond_noise and speed.new == pytest.approx(10.0 / 6.25, rel=0.03) and result.exit_code == 0


def test_jobs_timed_alone_give_the_speedup_when_no_phase_ran(write_run):
    """``speed.enabled: false`` and ``runner.parallel_jobs: 1``: each job had the machine to itself."""
    bf16_ms = [5.0, 5.1, 5.2]
    path = write_run("run", _jobs(lambda seed: bf16_ms[seed], timed_alone))
    run = load_run(path)
    row = _bf16_row(run)
    geometric_mean = math.exp(sum(math.log(10.0 / ms) for ms in bf16_ms) / 3)
    assert row.speed_source == "timed jobs" and row.speedup == pytest.approx(geometric_mean)
    assert row.speedup_min > 1.0

    (item,) = advise(run)
    assert (item.choice.row.backend, item.choice.row.policy) == BF16
    assert item.choice.speedup.estimate == pytest.approx(geometric_mean)
    benches = {b["name"]: b for b in benchmark_document(run.comparison, run.records)["benchmarks"]}
    assert benches["torch-amp[bf16-mixed]"]["stats"]["data"] == pytest.approx(
        [ms / 1e3 for ms in bf16_ms for _ in range(5)]
    )
    assert benches["torch-amp[bf16-mixed]"]["extra_info"]["speedup"] == pytest.approx(geometric_mean)


def test_untimed_jobs_without_a_phase_say_not_measured_everywhere(write_run, capsys):
    path = write_run("run", _jobs(2.0, side_by_side))
    run = load_run(path)
    row = _bf16_row(run)
    assert row.speedup is None and "side by side" in row.speed_unmeasured

    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "torch-amp bf16-mixed: speed not measured" in out
    assert _md_speedup_cell((path / "report.md").read_text()) == "not measured"
    assert json.loads((path / BENCHMARK_FILE).read_text())["benchmarks"] == []

    (item,) = advise(run)
    assert item.choice is None
    (avoid,) = item.avoid
    assert any(reason.startswith("speed not measured: the training jobs ran side by side") for reason in avoid.reasons)

    changed = write_run("changed", _jobs(20.0, side_by_side))
    result = diff_runs(run, load_run(changed))
    speed = next(
        c for r in result.rows if r.label == "torch-amp bf16-mixed" for c in r.changes if c.quantity == "speedup"
    )
    assert speed.old is None and speed.new is None and not speed.beyond_noise and result.exit_code == 0
