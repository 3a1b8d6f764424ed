"""The paired speed phase end to end: through the runner with the fake backend, and speed-only
runs."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import run_cli


def _speed_run(config, out, *overrides: str) -> int:
    """The fake backend's fp32 and fp16-mixed, one seed, with the speed phase on."""
    phase = ["speed.enabled=true", "speed.window_ms=5", "seeds=[0]"]
    return run_cli(config, out, "backends.policies.fake=[fp32, fp16-mixed]", *phase, *overrides)


def test_speed_phase_end_to_end_with_the_fake_backend(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    assert _speed_run(fake_config, out, "speed.rounds=4") == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    speed = [r for r in lines if r.get("kind") == "speed"]
    assert len(speed) == 1 and speed[0]["status"] == "ok", speed
    phase = speed[0]["speed"]
    [candidate] = phase["candidates"]
    assert candidate["policy"] == "fp16-mixed" and len(candidate["round_speedups"]) == 4
    assert candidate["ci_low"] <= candidate["speedup"] <= candidate["ci_high"]
    # Every window is recorded: 4 rounds × (2 baseline + 1 candidate).
    assert len(phase["windows"]["fake fp32"]["samples"]) == 8
    assert len(phase["windows"]["fake fp16-mixed"]["samples"]) == 4

    from precision_suite.results import read_records
    from precision_suite.verdicts.compare import compare

    read = read_records(out / "results.jsonl")
    assert all(r.get("kind") != "speed" for r in read.records) and len(read.speed) == 1
    [row] = [r for r in compare(read.records, speed_records=read.speed).rows if r.policy == "fp16-mixed"]
    assert row.speed_source == "paired" and row.speedup == pytest.approx(candidate["speedup"])
    assert bool(row.noisy_reason) == bool(candidate["noisy_reason"])

    # advise and benchmark.json (written by the run) quote the same phase: its speedup, its windows.
    from precision_suite.outputs.advise import advise
    from precision_suite.outputs.rundir import load_run

    (item,) = advise(load_run(out))
    (fp16,) = [c for c in [item.choice, *item.avoid, *item.alternatives] if c and c.row.policy == "fp16-mixed"]
    assert fp16.speedup.estimate == candidate["speedup"]
    assert (fp16.speedup.low, fp16.speedup.high) == (candidate["ci_low"], candidate["ci_high"])
    benches = {b["name"]: b for b in json.loads((out / "benchmark.json").read_text())["benchmarks"]}
    windows = phase["windows"]["fake fp16-mixed"]
    assert benches["fake[fp16-mixed]"]["stats"]["data"] == [w["wall_s"] / w["steps"] for w in windows["samples"]]
    assert benches["fake[fp16-mixed]"]["stats"]["iterations"] == windows["steps_per_window"]
    assert benches["fake[fp16-mixed]"]["extra_info"]["speedup"] == candidate["speedup"]

    # --resume does not run an ok phase again.
    from precision_suite.cli import main

    main(["run", "--resume", str(out)])
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len([r for r in again if r.get("kind") == "speed"]) == 1


def test_speed_only_makes_rows_without_training_jobs(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    assert _speed_run(fake_config, out, "speed.speed_only=true", "speed.rounds=3") == 0
    from precision_suite.results import read_records
    from precision_suite.verdicts.compare import compare

    read = read_records(out / "results.jsonl")
    assert read.records == [] and len(read.speed) == 1
    rows = compare(read.records, speed_records=read.speed).rows
    assert [(r.policy, r.is_baseline, r.speed_source) for r in rows] == [
        ("fp32", True, ""),
        ("fp16-mixed", False, "paired"),
    ]
