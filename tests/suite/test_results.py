"""results.py: the one record builder, the one run-directory reader and the one row key."""

from __future__ import annotations

import json

import pytest
from precision_suite.config import SuiteConfig
from precision_suite.jobs import DP_REFERENCE
from precision_suite.measure.speed_phase import SpeedTask
from precision_suite.outputs.rundir import RunDirError, load_run, ok_records_by_row, row_key
from precision_suite.plan import expand_jobs
from precision_suite.results import (
    SPEED_KIND,
    RowKey,
    append_record,
    failed_record,
    new_record,
    read_run,
    set_placement,
)
from precision_suite.verdicts.compare import compare

from tests.helpers.records import make_record, speed_record

# The keys of a job's record and of a speed phase's, in the order every results.jsonl written so
# far has them (docs/architecture.md, DESIGN.md "Result record"): readers of old run directories
# depend on them.
JOB_KEYS = [
    "schema", "job_id", "backend", "framework", "family", "policy", "model", "dataset", "seed", "device",
    "status", "error", "config", "environ", "observed", "metrics", "curves",
]  # fmt: skip
SPEED_KEYS = [
    "schema", "kind", "job_id", "framework", "family", "model", "dataset", "device", "status", "error", "config",
    "environ", "speed",
]  # fmt: skip


def _jobs():
    config = SuiteConfig.model_validate(
        {
            "models": [{"kind": "mlp", "hidden": [8]}],
            "data": {"name": "digits"},
            "train": {"steps": 4, "batch_size": 16},
            "backends": {"names": ["torch-amp"], "policies": {"torch-amp": ["fp32", "bf16-mixed"]}},
            "seeds": [3],
            "device": "cpu",
        }
    )
    return expand_jobs(config, "cpu")


def test_a_job_record_starts_with_the_jobs_identity_and_no_outcome():
    job = _jobs()[0]
    record = new_record(job)
    assert list(record) == JOB_KEYS
    assert (record["job_id"], record["backend"], record["policy"], record["seed"]) == (
        job.job_id,
        "torch-amp",
        job.policy,
        3,
    )
    assert (record["model"], record["dataset"], record["device"]) == ("mlp", "digits", "cpu")
    assert record["status"] is None and record["error"] is None
    assert record["config"] == job.to_dict()


def test_a_speed_phase_record_is_built_by_the_same_builder_and_told_apart_by_kind():
    jobs = _jobs()
    task = SpeedTask("speed/mlp/digits/torch", "torch", jobs, 3, 10.0, False)
    record = new_record(task)
    assert list(record) == SPEED_KEYS
    assert record["kind"] == SPEED_KIND and record["framework"] == "torch"
    assert SpeedTask.from_dict(record["config"]).jobs == jobs  # the record holds what ran


def test_a_failed_record_says_why_and_keeps_the_dead_processs_tail_last():
    job = _jobs()[1]
    record = failed_record(job, "crashed", "rank 1 of 2 killed by SIGKILL", stderr_tail="", world_size=2)
    assert list(record) == [*JOB_KEYS, "world_size", "stderr_tail"]
    assert (record["status"], record["error"], record["world_size"], record["stderr_tail"]) == (
        "crashed",
        "rank 1 of 2 killed by SIGKILL",
        2,
        "",
    )
    assert "stderr_tail" not in failed_record(job, "timeout", "exceeded")
    placed = set_placement(failed_record(job, "unavailable", "no GPU"), {"executor": "local"})
    assert list(placed)[-1] == "placement" and placed["placement"] == {"executor": "local"}


def test_every_record_of_a_row_and_only_those_are_keyed_to_it():
    """A row's records as ``ok_records_by_row`` keys them are exactly the seeds the comparison
    aggregated into that row: no noise-floor run (fp32 nudged one ulp, stopped early), no
    data-parallel reference, and an N-replica record under its own row (``cpu×2``)."""
    records = [make_record("torch-amp", p, s, accuracy=0.90 + 0.01 * s) for p in ("fp32", "bf16-mixed") for s in (0, 1)]
    noise = make_record("torch-amp", "fp32", 0, accuracy=0.10)
    noise["job_id"] += "/noise"
    noise["config"]["perturb_ulp"] = 1
    reference = make_record("torch-amp", "fp32", 1, accuracy=0.20)
    reference["job_id"] += "/dp-reference"
    reference["config"]["role"] = DP_REFERENCE
    replicas = make_record("torch-amp", "fp32", 0, accuracy=0.30)
    replicas["job_id"] += "/ws2"
    replicas["world_size"] = 2
    all_records = [*records, noise, reference, replicas]

    by_row = ok_records_by_row(all_records)
    rows = compare(all_records).rows
    assert {row.device for row in rows} == {"cpu", "cpu×2"}
    for row in rows:
        keyed = by_row.get(row_key(row), [])
        assert sorted(r["seed"] for r in keyed) == sorted(row.seeds_ok), row_key(row)
        assert sorted(r["metrics"]["test_accuracy"] for r in keyed) == sorted(row.accuracy_values)
    assert RowKey.of_record(noise) is None and RowKey.of_record(reference) is None
    assert RowKey.of_record(replicas) == RowKey("mlp", "digits", "cpu×2", "torch-amp", "fp32")


def test_a_run_directory_is_read_once_newest_record_per_job_with_its_config(tmp_path):
    first = make_record("torch-amp", "fp32", 0, accuracy=0.5)
    newer = make_record("torch-amp", "fp32", 0, accuracy=0.9)  # a resumed run's record of the same job
    old_phase = speed_record({("torch-amp", "bf16-mixed"): 20.0})
    new_phase = speed_record({("torch-amp", "bf16-mixed"): 5.0})
    for record in (first, old_phase, newer, new_phase):
        append_record(tmp_path / "results.jsonl", record)
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"job_id": "cut off\n')
    (tmp_path / "config.yaml").write_text("# resolved\nseeds: [0]\n")

    read = read_run(tmp_path)
    assert read.found and [r["metrics"]["test_accuracy"] for r in read.records] == [0.9]
    assert [r["speed"]["candidates"][0]["speedup"] for r in read.speed] == [
        json.loads(json.dumps(new_phase))["speed"]["candidates"][0]["speedup"]
    ]
    assert read.warnings == [f"{tmp_path / 'results.jsonl'}: line 5: damaged record skipped"]
    assert read.config == {"seeds": [0]}

    run = load_run(tmp_path)
    assert (run.records, run.speed_records, run.config) == (read.records, read.speed, read.config)
    [row] = [r for r in run.comparison.rows if r.policy == "bf16-mixed"]
    assert row.speed is not None and row.speed.estimate == pytest.approx(2.0, rel=0.05)  # the newer phase's


def test_a_folder_that_is_no_run_is_a_one_line_error(tmp_path):
    assert not read_run(tmp_path).found and read_run(tmp_path).config is None
    with pytest.raises(RunDirError, match="no such file"):
        load_run(tmp_path)
    (tmp_path / "results.jsonl").write_text("not json\n")
    with pytest.raises(RunDirError, match="no valid records"):
        load_run(tmp_path)
