"""Every script in benchmarks/ still runs: each Python script answers ``--help`` (which imports it
and everything it imports at module level) and, where it has one, runs its cheapest real mode;
each shell script parses. benchmarks/harness_overhead.py once exited 1 for months on names a
restructuring had removed; tests/test_imports.py checks the imports inside its functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from precision_suite.report.plots import DRAWN_FROM_FILE

from tests.helpers.marks import needs_tf, needs_torch
from tests.helpers.records import make_record, mfu_record

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
PYTHON_SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
SHELL_SCRIPTS = sorted(BENCHMARKS.glob("*.sh"))


def run_script(*argv: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``argv`` run from the repository root in a fresh interpreter (or shell), as documented."""
    return subprocess.run([*argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **env})


def test_the_scripts_are_found():
    names = {path.name for path in PYTHON_SCRIPTS + SHELL_SCRIPTS}
    assert {"harness_overhead.py", "report_cost.py", "throughput_table.py", "gpu_check.sh"} <= names


@pytest.mark.parametrize("script", PYTHON_SCRIPTS, ids=lambda path: path.name)
def test_python_script_answers_help(script):
    result = run_script(sys.executable, str(script), "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: " + script.name), result.stdout[:200]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shell_script_parses(script):
    result = run_script("bash", "-n", str(script), timeout=60)
    assert result.returncode == 0, result.stderr


def test_throughput_table_prints_a_run(tmp_path):
    """Its real mode, on a hand-made run directory: one row per record, the speedup vs fp32."""
    records = [make_record("torch-amp", policy, step_ms=ms) for policy, ms in (("fp32", 10.0), ("bf16-mixed", 5.0))]
    for record in records:  # the model and data a FLOP count needs (as mfu_record has them)
        flop_config = mfu_record(record["policy"], "Test CPU", None)["config"]
        record["config"].update(model=flop_config["model"], data=flop_config["data"])
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_script(sys.executable, str(BENCHMARKS / "throughput_table.py"), str(tmp_path), "--markdown")
    assert result.returncode == 0, result.stderr[-2000:]
    bf16 = next(line for line in result.stdout.splitlines() if "bf16-mixed" in line)
    assert "2.00x" in bf16


@pytest.mark.slow
def test_report_cost_quick_mode(tmp_path):
    """One row per size; the run directories it built hold the records and plots it says."""
    result = run_script(sys.executable, str(BENCHMARKS / "report_cost.py"), "--quick", "--keep", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert len(rows) == 2, result.stdout
    for (records, _, plots, report_s, _, again_s, check_s), size in zip(rows, ("x1", "x2"), strict=True):
        run_dir = tmp_path / size
        assert len((run_dir / "results.jsonl").read_text().splitlines()) == int(records)
        assert len(list((run_dir / "plots").glob("*.png"))) == int(plots) > 0
        assert (run_dir / "report.md").is_file() and float(report_s) > 0 and float(check_s) > 0
        # "again" reads back what the drawn-from file says each group's plots were drawn from.
        assert (run_dir / "plots" / DRAWN_FROM_FILE).is_file() and float(again_s) > 0
    assert int(rows[1][0]) == 2 * int(rows[0][0]) and int(rows[1][1]) == 2 * int(rows[0][1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "framework", [pytest.param("torch", marks=needs_torch), pytest.param("tensorflow", marks=needs_tf)]
)
def test_harness_overhead_quick_mode(framework):
    """Its cheapest real run: one model, one policy, one short round, per framework."""
    result = run_script(
        sys.executable,
        str(BENCHMARKS / "harness_overhead.py"),
        *("--quick", "--frameworks", framework, "--models", "mlp", "--policies", "fp32"),
        *("--rounds", "1", "--round-s", "0.01", "--max-steps", "20", "--no-fit", "--threads", "1"),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"mlp fp32 {framework}: ratio " in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_gpu_check_runs_on_a_cpu(tmp_path):
    """Its CPU mode (tiny models; nothing it prints is a GPU number), trimmed to one run."""
    result = run_script(
        "bash",
        str(BENCHMARKS / "gpu_check.sh"),
        str(tmp_path / "out"),
        PYTHON=sys.executable,
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_SKIP_TESTS="1",
        GPU_CHECK_NO_INSTALL="1",
        GPU_CHECK_COMPILE_POLICIES="",
        GPU_CHECK_KERAS_JAX_POLICIES="",
        GPU_CHECK_STEPS="20",
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "bf16-mixed" in (tmp_path / "out" / "table.md").read_text()
