"""Emulated or native: read from the recorded CPU ISA flags and CUDA compute capability."""

from __future__ import annotations

from precision_suite.verdicts.hardware import emulation


def test_emulation_follows_the_recorded_hardware():
    amx = {"avx512_bf16": False, "amx_bf16": True, "avx512_fp16": False, "amx_fp16": True}
    assert emulation("fp16-mixed", "cpu", {"cpu_flags": amx}) == ""
    assert emulation("bf16-pure", "cpu", {"cpu_flags": amx}) == ""
    assert "avx512_bf16" in emulation("bf16-mixed", "cpu", {"cpu_flags": {}})
    assert emulation("fp32", "cpu", {}) == ""
    assert emulation("bf16-mixed", "cuda", {}) == ""
    assert "7.5" in emulation("bf16-mixed", "cuda", {"cuda_capability": [7, 5]})
    assert emulation("fp16-mixed", "cuda", {"cuda_capability": [7, 5]}) == ""
