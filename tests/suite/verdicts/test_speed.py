"""Which step times may be set against each other: those of one device model, each timed with the
node to itself (the records' placements)."""

from __future__ import annotations

import pytest
from precision_suite.verdicts.compare import compare
from precision_suite.verdicts.speed import speed_comparable

from tests.helpers.records import make_record


def _on(record, device_name, timed=True, jobs_on_node=1):
    record["environ"]["device_name"] = device_name
    record["placement"] = {"timed": timed, "concurrent_jobs_on_node": jobs_on_node}
    return record


def _speedup(records):
    (row,) = [r for r in compare(records).rows if r.policy == "bf16-mixed"]
    return row.speedup


def test_speedups_only_between_records_of_one_device_model_timed_alone():
    def run(base_device, policy_device, timed=True, jobs_on_node=1):
        return [_on(make_record("torch-amp", "fp32", seed, step_ms=10.0), base_device) for seed in (0, 1)] + [
            _on(make_record("torch-amp", "bf16-mixed", seed, step_ms=5.0), policy_device, timed, jobs_on_node)
            for seed in (0, 1)
        ]

    assert _speedup(run("NVIDIA H100", "NVIDIA H100")) == pytest.approx(2.0)
    assert _speedup(run("NVIDIA H100", "NVIDIA A100")) is None
    # Step times of jobs packed beside others (accuracy-only) are never quoted.
    assert _speedup(run("NVIDIA H100", "NVIDIA H100", timed=False)) is None
    assert _speedup(run("NVIDIA H100", "NVIDIA H100", jobs_on_node=2)) is None


def test_records_without_a_placement_are_comparable_as_before():
    records = [make_record("torch-amp", "fp32", 0), make_record("torch-amp", "bf16-mixed", 0)]
    assert speed_comparable(records)
    assert _speedup(records) == pytest.approx(10.0 / 10.0)
