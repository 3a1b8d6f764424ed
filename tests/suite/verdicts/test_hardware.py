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


def test_fp8_is_emulated_on_every_cpu_and_below_capability_8_9():
    every_flag = {"avx512_bf16": True, "amx_bf16": True, "avx512_fp16": True, "amx_fp16": True}
    assert "no CPU computes FP8 natively" in emulation("fp8-mixed", "cpu", {"cpu_flags": every_flag})
    assert "8.0 < 8.9" in emulation("fp8-mixed", "cuda", {"cuda_capability": [8, 0]})
    assert emulation("fp8-mixed", "cuda", {"cuda_capability": [9, 0]}) == ""
    # The backend's own word wins: torchao emulating, or Keras without XLA, on an H100.
    said = {"cuda_capability": [9, 0], "fp8": {"emulate_reason": "cuda without jit_compile"}}
    assert emulation("fp8-mixed", "cuda", said) == "cuda without jit_compile"
