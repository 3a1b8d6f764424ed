"""Placements: GPU names and UUIDs without a framework, and which step times may be compared."""

from __future__ import annotations

import pytest
from precision_suite.execution.placement import speed_comparable, visible_gpus
from precision_suite.verdicts.compare import compare

from tests.helpers.records import make_record

NVIDIA_SMI = """#!/bin/sh
# The two lines `nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader` prints on a
# machine with two different GPUs.
echo "0, GPU-11111111-aaaa-bbbb-cccc-000000000000, NVIDIA H100 80GB HBM3"
echo "1, GPU-22222222-aaaa-bbbb-cccc-000000000000, NVIDIA A100-SXM4-40GB"
"""


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(NVIDIA_SMI)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:/usr/bin:/bin")
    visible_gpus.cache_clear()
    yield
    visible_gpus.cache_clear()


def test_visible_gpus_follow_cuda_visible_devices(two_gpus):
    assert [g.name for g in visible_gpus(None)] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]
    (only,) = visible_gpus("1")
    assert (only.index, only.uuid, only.name) == (
        "1",
        "GPU-22222222-aaaa-bbbb-cccc-000000000000",
        "NVIDIA A100-SXM4-40GB",
    )
    assert [g.index for g in visible_gpus("GPU-2222,0")] == ["1", "0"]  # UUID prefixes, in that order
    assert visible_gpus("") == ()


def test_no_nvidia_smi_means_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    visible_gpus.cache_clear()
    try:
        assert visible_gpus(None) == ()
    finally:
        visible_gpus.cache_clear()


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
