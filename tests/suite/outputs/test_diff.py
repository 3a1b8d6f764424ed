from __future__ import annotations

import numpy as np
import pytest
from precision_suite.cli import main
from precision_suite.outputs.diff import diff_runs, render_html, render_markdown
from precision_suite.outputs.intervals import paired_change
from precision_suite.outputs.rundir import RunDirError, load_run
from precision_suite.results import Record
from precision_suite.verdicts.compare import jobs_speedup
from precision_suite.verdicts.stats import Interval

from tests.helpers.cli import read_run, run_cli
from tests.helpers.records import default_run, make_record


def _default_run_with(backend: str, policy: str, **changes) -> list[dict]:
    """default_run() with one row's records made again with ``changes`` (callables of the seed
    for per-seed values)."""
    out = []
    for r in default_run():
        if (r["backend"], r["policy"]) != (backend, policy):
            out.append(r)
            continue
        seed = r["seed"]
        kwargs = {"accuracy": r["metrics"]["test_accuracy"], "step_ms": r["metrics"]["step_time_ms_p50"]}
        kwargs.update({k: v(seed) if callable(v) else v for k, v in changes.items()})
        out.append(make_record(backend, policy, seed, **kwargs))
    return out


def _rows(result):
    return {row.subject: row for row in result.rows}


def test_two_identical_runs_show_no_change_and_exit_0(write_run, capsys):
    old = write_run("old", default_run())
    new = write_run("new", default_run())
    result = diff_runs(load_run(old), load_run(new))
    assert result.exit_code == 0 and not result.regressions
    assert not [c for row in result.rows for c in row.changes if c.beyond_noise]
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "No change beyond noise in any compared row." in out
    assert (new / "diff.md").exists() and (new / "diff.html").exists()


def test_broken_candidate_fails_parity_and_exits_1_naming_the_row(write_run, capsys):
    broken = _default_run_with(
        "torch-amp", "bf16-mixed", accuracy=lambda s: 0.90 + 0.002 * s, memory=800_000, loss_offset=0.3
    )
    old, new = write_run("old", default_run()), write_run("new", broken)
    result = diff_runs(load_run(old), load_run(new))
    assert result.exit_code == 1
    (regression,) = result.regressions
    assert regression.startswith("mlp/digits/cpu torch-amp bf16-mixed: parity PASS → FAIL: Δ -5.00 pt")
    assert "vs ±1 pt" in regression and "torch-amp fp32" in regression
    row = _rows(result)["mlp/digits/cpu torch-amp bf16-mixed"]
    accuracy = next(c for c in row.changes if c.quantity == "accuracy")
    assert accuracy.beyond_noise and accuracy.delta.estimate == pytest.approx(-4.8)
    loss = next(c for c in row.changes if c.quantity == "train loss")
    assert loss.beyond_noise and "differ from step 0" in loss.note
    # Every other row is unchanged.
    others = [c for r in result.rows if r is not row for c in r.changes if c.beyond_noise]
    assert others == []
    assert main(["diff", str(old), str(new), "--out", str(old.parent / "d")]) == 1
    assert "torch-amp bf16-mixed: parity PASS → FAIL" in capsys.readouterr().out
    assert "REGRESSED" in render_markdown(result) and "REGRESSED" in render_html(result)


def test_speedup_regression_beyond_its_interval_exits_1(write_run):
    slower = _default_run_with("torch-amp", "bf16-mixed", step_ms=lambda s: 9.0 + 0.1 * s, memory=800_000)
    result = diff_runs(load_run(write_run("old", default_run())), load_run(write_run("new", slower)))
    assert result.exit_code == 1
    (regression,) = result.regressions
    assert regression.startswith("mlp/digits/cpu torch-amp bf16-mixed: speedup regressed beyond its interval")


def test_an_emulated_speedup_is_never_a_regression(write_run):
    # fp16 on this CPU is emulated: its "speedup" moving is not a claim either way.
    slower = _default_run_with("torch-amp", "fp16-mixed", step_ms=lambda s: 200.0 + s, memory=800_000, skipped=3)
    result = diff_runs(load_run(write_run("old", default_run())), load_run(write_run("new", slower)))
    assert result.exit_code == 0
    speed = next(c for c in _rows(result)["mlp/digits/cpu torch-amp fp16-mixed"].changes if c.quantity == "speedup")
    assert not speed.beyond_noise and "emulated" in speed.note


def test_a_framework_upgrade_is_named_and_compared(write_run, capsys):
    upgraded = default_run()
    for record in upgraded:
        if record["framework"] == "torch":
            record["environ"]["framework_versions"] = {"torch": "10.0.0"}
    old, new = write_run("old", default_run()), write_run("new", upgraded)
    result = diff_runs(load_run(old), load_run(new))
    assert result.environment_differences == ["torch: 9.9.9 vs 10.0.0"]
    assert result.exit_code == 0
    assert main(["diff", str(old), str(new)]) == 0
    assert "Environment differs: torch: 9.9.9 vs 10.0.0" in capsys.readouterr().out


def test_runs_of_different_configs_are_refused_naming_the_keys(write_run, capsys):
    other = default_run()
    for record in other:
        record["config"]["train"]["batch_size"] = 128
    old, new = write_run("old", default_run()), write_run("new", other)
    with pytest.raises(RunDirError, match=r"not comparable: the job configs differ in train\.batch_size: 64 vs 128"):
        diff_runs(load_run(old), load_run(new))
    assert main(["diff", str(old), str(new)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "Traceback" not in err


def test_runs_with_no_job_in_common_are_refused(write_run):
    old = write_run("old", default_run(models=("mlp",)))
    new = write_run("new", default_run(models=("cnn",)))
    with pytest.raises(RunDirError, match="no job in common"):
        diff_runs(load_run(old), load_run(new))


def test_missing_run_dir_is_a_usage_error(tmp_path, capsys):
    assert main(["diff", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "results.jsonl: no such file" in capsys.readouterr().err


def test_paired_change_interval_covers_the_truth_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, covered, false_change = 2000, 0, 0
    for _ in range(trials):
        old = {s: v for s, v in enumerate(rng.normal(95, 1.0, 3))}
        new = {s: old[s] + 0.5 + rng.normal(0, 0.4) for s in old}  # true change +0.5
        same = {s: old[s] + rng.normal(0, 0.4) for s in old}  # no change
        covered += paired_change(old, new).low <= 0.5 <= paired_change(old, new).high
        false_change += paired_change(old, same).excludes(0.0)
    assert 0.93 <= covered / trials <= 0.97
    assert false_change / trials <= 0.07


def test_speedup_interval_coverage_and_false_regression_rate():
    """Seeds paired: each seed's baseline and policy share a seed-level load factor. The
    interval covers the true speedup ~95 % of the time; two runs of the same truth are called
    a regression (NEW interval entirely below OLD) far less than 5 % of the time."""
    rng = np.random.default_rng(1)
    true_speedup, trials = 1.6, 1000

    def run():
        load = rng.lognormal(0, 0.2, 3)
        base = [
            Record({"seed": s, "metrics": {"step_time_ms_p50": 10 * load[s] * rng.lognormal(0, 0.03)}})
            for s in range(3)
        ]
        cand = [
            Record({"seed": s, "metrics": {"step_time_ms_p50": 10 / true_speedup * load[s] * rng.lognormal(0, 0.03)}})
            for s in range(3)
        ]
        speed = jobs_speedup(base, cand)
        return Interval(speed.estimate, speed.ci_low, speed.ci_high)

    intervals = [run() for _ in range(trials)]
    coverage = np.mean([i.low <= true_speedup <= i.high for i in intervals])
    assert 0.93 <= coverage <= 0.97
    regressions = np.mean([intervals[i].below(intervals[i + 1]) for i in range(0, trials, 2)])
    assert regressions <= 0.01


def test_one_seed_gives_no_interval_rather_than_a_zero_width_one():
    assert paired_change({0: 95.0}, {0: 96.0}) == Interval(1.0)
    assert not Interval(1.0).excludes(0.0)


@pytest.mark.slow
def test_diff_of_real_runs_same_config_and_broken_candidate(fake_backends, fake_config, tmp_path, capsys):
    """Three runs of the fake backend (~15 s each on the loaded 2-core machine, hence slow):
    the same config twice, then with fp16-mixed's learning rate ×10."""
    a, b, broken = tmp_path / "a", tmp_path / "b", tmp_path / "broken"
    assert run_cli(fake_config, a) == 0
    assert run_cli(fake_config, b) == 0
    assert run_cli(fake_config, broken, "backends.options={fake: {lr_factor: 10, fault_policies: [fp16-mixed]}}") == 1
    assert read_run(broken)
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 0
    assert "No change beyond noise in any compared row." in capsys.readouterr().out
    assert main(["diff", str(a), str(broken)]) == 1
    out = capsys.readouterr().out
    assert "mlp/digits/cpu fake fp16-mixed: parity PASS → FAIL" in out
    assert "lr_factor" in out  # the option that differs is named
