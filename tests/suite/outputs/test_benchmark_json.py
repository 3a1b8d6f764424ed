from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
from precision_suite.outputs.benchmark_json import benchmark_document, step_time_stats, write_benchmark_json
from precision_suite.verdicts.compare import compare

from tests.helpers.records import default_run

pb_stats = pytest.importorskip("pytest_benchmark.stats")
pb_file = pytest.importorskip("pytest_benchmark.storage.file")


def _with_windows(records: list[dict]) -> list[dict]:
    """Give each ok record timed windows around its p50 step time (seeded, so reproducible)."""
    rng = np.random.default_rng(7)
    for record in records:
        if record["status"] == "ok":
            ms = record["metrics"]["step_time_ms_p50"]
            times = list(ms * (1 + 0.05 * rng.standard_normal(5)))
            record["curves"].update(
                window_step_time_ms=times, window_steps=[4, 4, 4, 4, 2], window_end_step=[6, 10, 14, 18, 20]
            )
    return records


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 17, 40])
def test_stats_equal_pytest_benchmarks_own(n):
    data = list(np.random.default_rng(n).lognormal(-4, 0.5, n))
    data[n // 2] *= 5  # an outlier, so the outlier counts and fences are exercised
    reference = pb_stats.Stats()
    for value in data:
        reference.update(value)
    ours = step_time_stats(data, iterations=4)
    for key, value in reference.as_dict().items():
        assert ours[key] == pytest.approx(value, rel=1e-12) if isinstance(value, float) else ours[key] == value, key
    assert ours["data"] == data and ours["iterations"] == 4


def test_document_loads_with_pytest_benchmarks_reader(tmp_path):
    records = _with_windows(default_run(seeds=(0, 1)))
    path = write_benchmark_json(tmp_path, compare(records), records)
    storage = pb_file.FileStorage(tmp_path, logger=logging.getLogger("test"))
    benches = list(storage.load_benchmarks(str(path)))
    by_name = {b["name"]: b for b in benches}
    assert set(by_name) == {
        "torch-amp[fp32]",
        "torch-amp[bf16-mixed]",
        "torch-amp[fp16-mixed]",
        "torch-manual[bf16-mixed]",
        "torch-manual[bf16-pure]",
        "tf-keras[fp32]",
        "tf-keras[bf16-mixed]",
    }
    bf16 = by_name["torch-amp[bf16-mixed]"]
    assert bf16["group"] == "mlp/digits/cpu" and bf16["fullname"] == "mlp/digits/cpu::torch-amp[bf16-mixed]"
    assert bf16["rounds"] == 10 and bf16["iterations"] == 4  # 5 windows × 2 seeds
    windows = [
        v / 1e3
        for r in records
        if r["job_id"].startswith("mlp/digits/torch-amp/bf16-mixed/")
        for v in r["curves"]["window_step_time_ms"]
    ]
    assert bf16["data"] == windows and bf16["median"] == pytest.approx(float(np.median(windows)))
    info = bf16["extra_info"]
    # The comparison's speedup: the jobs carry no placement (one at a time), so they were timed
    # alone — the geometric mean of the per-seed ratios 10/6 and 10.1/6.1.
    assert info["speedup"] == pytest.approx(math.sqrt(10.0 / 6.0 * 10.1 / 6.1))
    assert info["speed_source"] == "timed jobs" and info["speedup_min"] < info["speedup"] < info["speedup_max"]
    assert info["accuracy_delta_pts"] == pytest.approx(-0.2) and info["verdicts"]["parity"] == "pass"
    assert info["memory_ratio"] == pytest.approx(0.8)
    document = json.loads(path.read_text())
    assert document["commit_info"]["id"] == "abc1234" and document["machine_info"]["cpu"]["brand_raw"] == "Test CPU"


def test_rows_without_timed_windows_are_left_out_not_invented():
    records = default_run(seeds=(0,))  # no window curves: records from before windows were kept
    assert benchmark_document(compare(records), records)["benchmarks"] == []


def test_pytest_benchmark_compare_reads_two_runs(tmp_path):
    records = _with_windows(default_run(seeds=(0, 1)))
    comparison = compare(records)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_benchmark_json(tmp_path / "a", comparison, records)
    b = write_benchmark_json(tmp_path / "b", comparison, records)
    out = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "compare", str(a), str(b), "--group-by=group"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "benchmark 'mlp/digits/cpu': 14 tests" in out.stdout
    assert out.stdout.count("torch-amp[bf16-mixed] (") == 2
