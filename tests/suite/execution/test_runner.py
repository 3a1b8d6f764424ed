"""The runner end to end with the fake backend: records, isolation, crash capture, resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from precision_suite.cli import main

from tests.helpers.cli import REPO_ROOT, read_run, run_cli


def test_run_writes_one_ok_record_per_job(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(fake_config, out, "backends.policies.fake=[fp32]")
    records = read_run(out)
    assert code == 0
    assert sorted(r["job_id"] for r in records) == [
        "mlp/digits/fake/fp32/seed0",
        "mlp/digits/fake/fp32/seed1",
    ]
    for record in records:
        assert record["status"] == "ok", record["error"]
        metrics = record["metrics"]
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert metrics["timed_steps"] == 12 - 2
        assert metrics["step_time_ms_p50"] > 0 and metrics["samples_per_s"] > 0
        assert len(record["curves"]["train_loss"]) == 12
        assert record["config"]["train"]["steps"] == 12
        assert record["environ"]["cpu_model"]
    assert (out / "config.yaml").exists()


def test_killed_worker_is_recorded_crashed_and_run_continues(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(
        fake_config,
        out,
        "backends.policies.fake=[fp32]",
        "backends.options.fake={crash_at_step: 3, fault_seeds: [0]}",
    )
    by_id = {r["job_id"]: r for r in read_run(out)}
    crashed = by_id["mlp/digits/fake/fp32/seed0"]
    assert code == 3
    assert crashed["status"] == "crashed"
    assert "SIGKILL" in crashed["error"] and "step" in crashed["error"]
    assert "job mlp/digits/fake/fp32/seed0" in crashed["stderr_tail"]
    assert by_id["mlp/digits/fake/fp32/seed1"]["status"] == "ok"

    # Resume without the fault: only the crashed job runs again.
    code = main(["run", "--resume", str(out), "--set", "backends.options.fake={}"])
    runs = Counter(r["job_id"] for r in read_run(out))
    assert code == 0
    assert runs == {"mlp/digits/fake/fp32/seed0": 2, "mlp/digits/fake/fp32/seed1": 1}
    assert read_run(out)[-1]["status"] == "ok"


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        ({"segfault_at_step": 1}, "crashed", "SIGSEGV"),
        ({"oom_at_step": 2}, "oom", "out of memory"),
        ({"nan_from_step": 4}, "diverged", "from step 4"),
        ({"raise_at_step": 0}, "error", "RuntimeError: injected failure"),
    ],
)
def test_faults_become_statuses(fake_backends, fake_config, tmp_path, options, status, message):
    out = tmp_path / "run"
    options = {**options, "fault_seeds": [0]}
    code = run_cli(
        str(fake_config),
        out,
        "backends.policies.fake=[fp32]",
        "train.divergence_patience=3",
        f"backends.options.fake={json.dumps(options)}",
    )
    by_id = {r["job_id"]: r for r in read_run(out)}
    assert code == 3
    assert by_id["mlp/digits/fake/fp32/seed0"]["status"] == status
    assert message in by_id["mlp/digits/fake/fp32/seed0"]["error"]
    assert by_id["mlp/digits/fake/fp32/seed1"]["status"] == "ok"


def test_hung_job_times_out_and_run_continues(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(
        str(fake_config),
        out,
        "backends.policies.fake=[fp32]",
        # Room for seed 1's whole job (data, model, steps) on a loaded CI machine: at 3 s it
        # sometimes timed out as well.
        "runner.job_timeout_s=6",
        "backends.options.fake={hang_at_step: 5, fault_seeds: [0]}",
    )
    by_id = {r["job_id"]: r for r in read_run(out)}
    assert code == 3
    assert by_id["mlp/digits/fake/fp32/seed0"]["status"] == "timeout"
    assert "runner.job_timeout_s=6s" in by_id["mlp/digits/fake/fp32/seed0"]["error"]
    assert by_id["mlp/digits/fake/fp32/seed1"]["status"] == "ok"


def test_missing_framework_is_unavailable_not_failure(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(
        str(fake_config),
        out,
        "backends.names=[fake, fake-missing]",
        "backends.policies={fake: [fp32], fake-missing: [fp32]}",
    )
    statuses = {r["job_id"]: (r["status"], r["error"]) for r in read_run(out)}
    assert code == 0
    assert statuses["mlp/digits/fake-missing/fp32/seed0"] == (
        "unavailable",
        "nonexistent-framework is not installed",
    )
    assert statuses["mlp/digits/fake/fp32/seed0"][0] == "ok"


def test_a_missing_framework_is_one_line_per_backend_not_one_per_job(fake_backends, fake_config, tmp_path, capsys):
    """A sweep of a backend whose framework is missing: every job recorded unavailable, one line
    saying how many and why — not a line per job, neither while running nor in the report."""
    out = tmp_path / "run"
    seeds = list(range(12))
    code = run_cli(
        str(fake_config),
        out,
        "backends.names=[fake, fake-missing]",
        "backends.policies={fake: [fp32], fake-missing: [fp32, fp16-mixed]}",
        f"seeds={seeds}",
    )
    printed = capsys.readouterr().out
    assert code == 0
    missing = [r for r in read_run(out) if r["backend"] == "fake-missing"]
    # fp32 and fp16-mixed, and fp32's one-ulp noise-floor runs (two frameworks run fp32), per seed
    assert len(missing) == 3 * len(seeds) and {r["status"] for r in missing} == {"unavailable"}
    lines = [line for line in printed.splitlines() if "fake-missing" in line]
    # Up front every job the run cannot start; in the report the results that are missing (a
    # noise-floor run is no result of its own).
    assert lines == [
        "unavailable fake-missing: 36 job(s) — nonexistent-framework is not installed",
        "  fake-missing — unavailable: nonexistent-framework is not installed (24 jobs)",
    ]
    assert "Unavailable jobs (not failures) (24)" in printed


def test_a_job_a_worker_finds_unavailable_is_said_once_per_reason(fake_backends, fake_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(str(fake_config), out, "backends.policies.fake=[tf32]", "seeds=[0, 1, 2]") == 0
    printed = capsys.readouterr().out
    assert len(read_run(out)) == 3
    reason = "tf32 needs a CUDA device (device is cpu)"
    assert [line for line in printed.splitlines() if line.startswith("unavailable")] == [
        f"unavailable mlp/digits/fake/tf32/seed0: {reason}"
    ]
    assert f"  fake — unavailable: {reason} (3 jobs)" in printed.splitlines()


def test_the_install_command_names_the_extra_of_each_builtin_framework():
    """Every built-in backend's framework is an extra of pyproject.toml, so a missing one is
    reported with the command that installs it."""
    tomllib = pytest.importorskip("tomllib")
    from precision_suite.backends import BUILTIN_BACKENDS, get_backend_class
    from precision_suite.execution.runner import install_command

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    for name in [*BUILTIN_BACKENDS, "keras-jax"]:
        framework = get_backend_class(name).framework
        assert framework in extras, name
        assert install_command(framework) == f'pip install "precision-suite[{framework}]"'
    assert install_command("nonexistent") is None


def test_per_job_isolation_uses_a_fresh_process_per_job(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(str(fake_config), out, "backends.policies.fake=[fp32]", "runner.isolation=per-job")
    log = (out / "logs" / "worker-numpy.log").read_text()
    pids = {line.split()[1] for line in log.splitlines() if line.startswith("[worker ")}
    assert code == 0
    assert len(pids) == 2


# The second order is slow: with each framework in its own worker process the order cannot
# matter (the point of the test), so one order in the default tier shows it; both in the slow one.
@pytest.mark.parametrize(
    "order",
    [["tf-keras", "torch-amp"], pytest.param(["torch-amp", "tf-keras"], marks=pytest.mark.slow)],
    ids=["tf-keras-first", "torch-amp-first"],
)
def test_torch_and_keras_jobs_in_one_run_in_either_order(tmp_path, order):
    """Each framework runs in its own worker process, so their import-order conflicts cannot
    arise; the fp32 runs of both agree (cross-framework verdict)."""
    from tests.helpers.marks import HAS_TF, HAS_TORCH

    if not (HAS_TF and HAS_TORCH):
        pytest.skip("needs both torch and tensorflow")
    out = tmp_path / "run"
    code = run_cli(
        "configs/smoke.yaml",
        out,
        f"backends.names=[{', '.join(order)}]",
        "backends.policies={torch-amp: [fp32], tf-keras: [fp32]}",
    )
    from precision_suite.results import is_noise_floor_run

    everything = read_run(out)
    records = [r for r in everything if not is_noise_floor_run(r)]
    assert code == 0
    assert [r["backend"] for r in records] == order
    # Then each framework's fp32 again with the initial weights one ulp up (the noise floor).
    assert [r["job_id"].rsplit("/", 1)[-1] for r in everything if is_noise_floor_run(r)] == ["ulp+1"] * 2
    assert all(r["status"] == "ok" for r in everything)
    torch_loss, tf_loss = (
        next(r for r in records if r["backend"] == b)["curves"]["train_loss"] for b in ("torch-amp", "tf-keras")
    )
    assert torch_loss == pytest.approx(tf_loss, rel=1e-4)
