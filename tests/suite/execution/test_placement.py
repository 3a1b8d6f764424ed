"""Placements: GPU names and UUIDs without a framework."""

from __future__ import annotations

import pytest
from precision_suite.execution.placement import visible_gpus

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
