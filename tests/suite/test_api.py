"""precision_suite.run: the CLI's run in this process. The same config gives the same records and
verdicts as ``precision-suite run``; keyword sections deep-merge; bad input raises a one-line
UserError before anything runs; ``assert_parity``'s message is ``check``'s table."""

from __future__ import annotations

from datetime import datetime

import precision_suite
import pytest
import yaml
from precision_suite.cli import main
from precision_suite.config import ConfigError, load_config
from precision_suite.errors import UserError
from precision_suite.outputs.rundir import load_run
from precision_suite.testing import assert_parity
from rich.console import Console

from tests.helpers.cli import read_run, run_cli

BROKEN_FP16 = {"fake": {"lr_factor": 10, "fault_policies": ["fp16-mixed"]}}  # a wrong learning rate: parity FAILs
QUIET = Console(quiet=True)


def _facts(records: list[dict]) -> dict[str, tuple]:
    """What a run computed, per job: not its timings."""
    return {
        r["job_id"]: (r["status"], r["metrics"].get("test_accuracy"), tuple(r["curves"].get("train_loss", ())))
        for r in records
        if "job_id" in r
    }


def _verdicts(comparison) -> list[tuple]:
    return [(v.name, v.subject, v.outcome, v.enforced) for v in comparison.verdicts]


def test_the_api_computes_what_the_cli_does_and_assert_parity_prints_checks_table(
    fake_backends, fake_config, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")  # `check` prints one line per verdict, as the assertion does
    assert run_cli(fake_config, tmp_path / "cli", f"backends.options={BROKEN_FP16}") == 1
    result = precision_suite.run(fake_config, out=tmp_path / "api", backends={"options": BROKEN_FP16})

    cli_run = load_run(tmp_path / "cli")
    assert _facts(result.records) == _facts(cli_run.records)
    assert _verdicts(result.comparison) == _verdicts(cli_run.comparison)
    # The result holds what the run wrote: the newest record of each job and the files reported.
    assert _facts(result.records) == _facts(read_run(tmp_path / "api"))
    assert {p.name for p in result.report_paths} >= {"report.md", "report.html", "junit.xml", "benchmark.json"}
    assert all(p.is_file() and p.is_relative_to(tmp_path / "api") for p in result.report_paths)

    # The broken fp16-mixed fails parity (its accuracy is far from fp32's in every seed), so the
    # run did not pass, and the assertion's message is the table `check` prints.
    accuracy = {(r["policy"], r["seed"]): r["metrics"]["test_accuracy"] for r in result.records if r["status"] == "ok"}
    assert all(abs(accuracy["fp16-mixed", seed] - accuracy["fp32", seed]) > 0.05 for seed in (0, 1))
    assert [(v.name, v.subject) for v in result.failed_verdicts()] == [("parity", "mlp/digits/cpu fake fp16-mixed")]
    assert not result.passed and result.failed_jobs == 0
    with pytest.raises(AssertionError) as failure:
        assert_parity(result)
    capsys.readouterr()
    assert main(["check", str(tmp_path / "api")]) == 1
    check_lines = capsys.readouterr().out.rstrip("\n").splitlines()
    header, *table = str(failure.value).splitlines()
    assert header == f"precision-suite run {tmp_path / 'api'}: 1 verdict(s) failed"
    assert table == [line.rstrip() for line in check_lines]
    assert any(line.startswith("FAIL") and "parity" in line and "fake fp16-mixed" in line for line in table)


def test_sections_deep_merge_set_applies_last_and_out_none_makes_a_new_run_dir(fake_backends, fake_config, tmp_path):
    runs = tmp_path / "runs"
    result = precision_suite.run(
        yaml.safe_load(fake_config.read_text()),  # a mapping, not a file
        console=QUIET,
        train={"steps": 6},
        seeds=[3],
        runner={"out_dir": str(runs)},
        set=["train.steps=5", "backends.policies={fake: [fp32, fp16-mixed]}"],
    )
    assert result.out_dir.parent == runs and (result.out_dir / "results.jsonl").is_file()
    ok = [r for r in result.records if r["status"] == "ok"]
    assert sorted((r["policy"], r["seed"]) for r in ok) == [("fp16-mixed", 3), ("fp32", 3)]
    for record in ok:
        train = record["config"]["train"]
        assert train["steps"] == 5  # set= after the sections
        assert train["batch_size"] == 32 and train["timing_window_steps"] == 4  # the rest of train kept
        assert record["config"]["runner"]["job_timeout_s"] == 60
        assert len(record["curves"]["train_loss"]) == 5
    assert result.passed == (not result.failed_verdicts() and not result.failed_jobs)


def test_merge_replaces_lists_and_merges_mappings(fake_config):
    config = load_config(fake_config, sections={"models": ["cnn"], "train": {"optimizer": {"lr": 0.5}}})
    assert [m.kind for m in config.models] == ["cnn"]
    assert config.train.optimizer.lr == 0.5 and config.train.optimizer.name == "adam"
    assert config.train.steps == 12 and config.seeds == [0, 1]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ({"train": {"steps": "ten"}}, ["(with overrides): train.steps", "integer", '"ten"']),
        ({"trian": {"steps": 3}}, ["trian"]),
        ({"backends": {"names": ["fake", "torch-ampp"]}}, ["backends.names.1", 'unknown backend "torch-ampp"']),
        ({"set": ["nonsense"]}, ["expected KEY=VALUE"]),
        ({"data": {"name": "npz", "path": "nope.npz"}}, ["data:", "nope.npz", "no such file"]),
        ({"resume": True, "out": None}, ["resume", "out="]),
    ],
    ids=["wrong-type", "unknown-section", "unknown-backend", "bad-set", "missing-data", "resume-without-out"],
)
def test_bad_input_raises_one_line_user_error_and_runs_nothing(fake_backends, fake_config, tmp_path, call, expected):
    call = {"out": tmp_path / "run", **call}
    with pytest.raises(UserError) as error:
        precision_suite.run(fake_config, console=QUIET, **call)
    message = str(error.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message
    assert not (tmp_path / "run").exists(), "nothing may run on bad input"


def test_a_config_error_is_a_user_error_and_a_value_error():
    """Callers that caught ValueError before keep working; new ones catch UserError."""
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert precision_suite.UserError is UserError and precision_suite.ConfigError is ConfigError


def test_default_out_dir_never_reuses_a_run_dir(fake_config, tmp_path):
    from precision_suite.api import default_out_dir

    config = load_config(fake_config, sections={"runner": {"out_dir": str(tmp_path)}})
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert default_out_dir(config, now) == tmp_path / "20260102-030405"
    (tmp_path / "20260102-030405").mkdir()
    assert default_out_dir(config, now) == tmp_path / "20260102-030405-2"
    (tmp_path / "20260102-030405-2").mkdir()
    assert default_out_dir(config, now) == tmp_path / "20260102-030405-3"


def test_assert_parity_counts_failed_jobs_and_with_strict_inconclusive_verdicts(fake_config, tmp_path):
    """A job that crashed fails the assertion even when no verdict does (the run exits 3); one
    seed cannot decide parity (INCONCLUSIVE), which fails only with ``strict``."""
    import json

    from precision_suite.api import RunResult
    from precision_suite.results import Outcome

    from tests.helpers.records import make_record

    records = [make_record("torch-amp", "fp32"), make_record("torch-amp", "bf16-mixed")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = load_run(tmp_path)
    assert [v.outcome for v in run.comparison.verdicts if v.name == "parity"] == [Outcome.INCONCLUSIVE]

    def result(failed_jobs: int) -> RunResult:
        return RunResult(tmp_path, load_config(fake_config), run.records, [], run.comparison, [], failed_jobs)

    assert_parity(result(0))
    assert result(0).passed and repr(result(0)).startswith(f"RunResult(out_dir='{tmp_path}', passed=True, records=2")
    with pytest.raises(AssertionError, match=r": 1 verdict\(s\) inconclusive \(strict\)\n") as strict:
        assert_parity(result(0), strict=True)
    assert "--strict: inconclusive fails" in str(strict.value)
    with pytest.raises(AssertionError, match=r": 1 job\(s\) failed\n"):
        assert_parity(result(1))
    assert not result(1).passed


def test_a_run_from_another_thread(fake_backends, fake_config, tmp_path):
    """A notebook kernel or a server may call the API off the main thread, where Python refuses
    signal handlers: the run still runs (SIGTERM keeps its disposition there)."""
    import threading

    outcome = {}

    def call() -> None:
        try:
            outcome["result"] = precision_suite.run(
                fake_config, out=tmp_path / "run", console=QUIET, seeds=[0], backends={"policies": {"fake": ["fp32"]}}
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert [r["status"] for r in outcome["result"].records] == ["ok"]
