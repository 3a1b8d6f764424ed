"""Seeds on demand: the config form, which rows get more seeds at a look, and a run end to end
with the fake backend (a deliberately broken candidate FAILs; nothing undecided, no more seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from precision_suite.cli import main
from precision_suite.config import ConfigError, SeedRange, load_config, validate
from precision_suite.execution.seeds_on_demand import next_look_jobs
from scipy import stats

from tests.helpers.cli import read_run, run_cli
from tests.helpers.records import make_record


def test_seeds_accept_a_list_or_min_max():
    assert validate({"seeds": [4, 5]}, "x.yaml").seed_looks() == (2,)
    config = validate({"seeds": {"min": 3, "max": 10}}, "x.yaml")
    assert isinstance(config.seeds, SeedRange)
    assert config.seed_looks() == (3, 6, 10)
    assert config.seeds_at_look(0) == [0, 1, 2] and config.seeds_at_look(2) == list(range(10))
    with pytest.raises(ConfigError, match=r"seeds.max \(2\) must be >= seeds.min \(3\)"):
        validate({"seeds": {"min": 3, "max": 2}}, "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: seeds: min: expected a number >= 2, got 1"):
        validate({"seeds": {"min": 1, "max": 5}}, "x.yaml")
    with pytest.raises(ConfigError, match='x.yaml: seeds: maxx: unknown key "maxx"'):
        validate({"seeds": {"min": 3, "maxx": 5}}, "x.yaml")
    assert load_config(None, ["seeds={min: 2, max: 4}"]).seed_looks() == (2, 4)


def test_only_undecided_rows_and_their_baselines_get_the_next_looks_seeds():
    config = validate(
        {
            "models": [{"kind": "mlp"}],
            "backends": {
                "names": ["torch-amp", "torch-manual"],
                "policies": {"torch-amp": ["fp32", "bf16-mixed", "fp16-mixed"], "torch-manual": ["bf16-mixed"]},
            },
            "seeds": {"min": 3, "max": 10},
        },
        "x.yaml",
    )
    records = []
    for seed, (spread, far) in enumerate([(0.95, 0.90), (0.93, 0.90), (0.97, 0.90)]):
        records.append(make_record("torch-amp", "fp32", seed, accuracy=0.95))
        records.append(make_record("torch-amp", "bf16-mixed", seed, accuracy=0.95))  # PASS
        records.append(make_record("torch-amp", "fp16-mixed", seed, accuracy=spread))  # INCONCLUSIVE
        records.append(make_record("torch-manual", "bf16-mixed", seed, accuracy=far))  # FAIL
    jobs = next_look_jobs(config, "cpu", 1, records)
    assert sorted(j.job_id for j in jobs) == sorted(
        f"mlp/digits/torch-amp/{policy}/seed{seed}" for policy in ("fp32", "fp16-mixed") for seed in (3, 4, 5)
    )
    assert all(j.seed_looks == (3, 6, 10) and not j.perturb_ulp for j in jobs)
    decided = [r for r in records if r["policy"] != "fp16-mixed"]
    assert next_look_jobs(config, "cpu", 1, decided) == []


def test_a_broken_candidate_fails_with_seeds_on_demand(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(
        fake_config,
        out,
        "seeds={min: 3, max: 10}",
        "backends.policies.fake=[fp32, fp16-mixed]",
        "debug.lr_scale={fake/fp16-mixed: 10}",
    )
    records = read_run(out)
    assert code == 1
    broken = [r for r in records if r["policy"] == "fp16-mixed"]
    assert all(r["config"]["train"]["optimizer"]["lr"] == pytest.approx(1e-2) for r in broken)
    # Seeds were added look by look (3, 6, 10) only while the verdict was undecided, and the
    # same seeds for the candidate and its baseline. Recomputed here with SciPy: the paired
    # TOST at each look, at α = 0.05 / 3 looks, against the default ±1.5 pt. The fake with a
    # tenfold learning rate is ~25 pt *better* in 12 steps, but 3 seeds spread too far to show
    # it (CI ≈ [-5, 55]); 6 show it (CI ≈ [18, 38]): FAIL at the second look, no third.
    seeds = sorted({r["seed"] for r in broken})
    assert sorted({r["seed"] for r in records if r["policy"] == "fp32"}) == seeds == list(range(len(seeds)))
    accuracy = {(r["policy"], r["seed"]): r["metrics"]["test_accuracy"] for r in records}

    def tost_at(n: int) -> str:
        diffs = [100 * (accuracy["fp16-mixed", s] - accuracy["fp32", s]) for s in range(n)]
        half = stats.t.ppf(1 - 0.05 / 3, n - 1) * np.std(diffs, ddof=1) / math.sqrt(n)
        low, high = np.mean(diffs) - half, np.mean(diffs) + half
        return "fail" if low > 1.5 or high < -1.5 else "pass" if low >= -1.5 and high <= 1.5 else "inconclusive"

    assert [tost_at(n) for n in (3, 6)] == ["inconclusive", "fail"]
    assert len(seeds) == 6
    assert main(["check", str(out)]) == 1
    assert main(["check", str(out), "--tolerance", "100"]) == 0


def test_debug_lr_scale_names_a_row_of_the_run(fake_backends, fake_config, tmp_path):
    code = main(["run", str(fake_config), "--out", str(tmp_path / "r"), "--set", "debug.lr_scale={fake/bf16-pure: 10}"])
    assert code == 2


def test_resume_with_more_seeds_runs_only_the_new_ones(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    assert run_cli(fake_config, out, "backends.policies.fake=[fp32, fp16-mixed]") == 0
    first = {r["job_id"] for r in read_run(out)}
    assert main(["run", "--resume", str(out), "--set", "seeds=[0, 1, 2]"]) == 0
    records = read_run(out)
    # Every finished job kept and not run again; only seed 2 is new.
    assert len(records) == len({r["job_id"] for r in records}) == len(first) + 2
    assert {r["job_id"] for r in records} - first == {"mlp/digits/fake/fp32/seed2", "mlp/digits/fake/fp16-mixed/seed2"}


def test_a_runs_config_yaml_says_where_its_config_came_from(fake_backends, fake_config, tmp_path):
    """config.yaml's header names the file (absolute) and every --set; a resume keeps them and
    adds itself and its own overrides. The YAML below the header is the resolved config still."""
    out = tmp_path / "run"
    assert run_cli(fake_config, out, "backends.policies.fake=[fp32]") == 0
    assert main(["run", "--resume", str(out), "--set", "seeds=[0, 1, 2]"]) == 0
    lines = (out / "config.yaml").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")][1:]
    assert header == [
        f"# config: {fake_config.resolve()}",
        "# --set backends.policies.fake=[fp32]",
        f"# --resume {out}",
        "# --set seeds=[0, 1, 2]",
    ]
    import yaml

    assert yaml.safe_load("\n".join(lines))["seeds"] == [0, 1, 2]
