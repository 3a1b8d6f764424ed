"""Why-no-speedup lines: each from a measurement or the spec, and only when it applies."""

from __future__ import annotations

from precision_suite.config import CnnConfig, MlpConfig
from precision_suite.verdicts.diagnose import gemm_dims, why_not_faster

QUIET_CPU = {"cpu_flags": {"avx512_bf16": True, "amx_bf16": True}, "compile": False}


def _lines(**kwargs):
    args = {
        "policy": "bf16-mixed",
        "device": "cpu",
        "emulated_reason": "",
        "model": MlpConfig(hidden=[128, 64]),
        "input_shape": (1, 8, 8),
        "num_classes": 16,
        "batch_size": 64,
        "baseline_environ": QUIET_CPU,
    }
    return why_not_faster(**(args | kwargs))


def test_overhead_bound_from_flops_and_from_batch_scaling():
    # mlp 64-128-64-16 at batch 64: 3 × 2 × 64 × (64·128 + 128·64 + 64·16) ≈ 6.7 MFLOP per step.
    slow = _lines(baseline_step_ms=1.0, matmul_tflops_fp32=0.1)  # 6.7 GFLOP/s of 100: 6.7 %
    assert any(line.startswith("overhead-bound: the fp32 step reaches 6.7 GFLOP/s") for line in slow)
    assert any("torch.compile off" in line for line in slow)
    busy = _lines(baseline_step_ms=0.1, matmul_tflops_fp32=0.1)  # 67 GFLOP/s: compute-bound
    assert not any("overhead" in line for line in busy) and not any("compile" in line for line in busy)
    flat = _lines(batch_step_time_ratio=1.1)
    assert any("twice the batch costs only ×1.10" in line for line in flat)
    assert not any("overhead" in line for line in _lines(batch_step_time_ratio=1.9))


def test_spec_dims_tf32_isa_and_emulation():
    assert gemm_dims(CnnConfig(channels=[16, 30]), (3, 8, 8), 10, 64)["conv1 channels"] == 30
    lines = _lines(num_classes=10, batch_size=60)
    assert any(line == "GEMM dims not multiples of 8: batch 60, classes 10" for line in lines)
    assert not any("GEMM" in line for line in _lines())
    # FP8's scaled matmuls (torch._scaled_mm, which torchao's float8 training calls) take
    # dimensions in multiples of 16: 8 is not enough there, 16 and 64 are.
    fp8 = _lines(policy="fp8-mixed", model=MlpConfig(hidden=[24, 64]), batch_size=64)
    assert "GEMM dims not multiples of 16: hidden0 24" in fp8
    assert not any("GEMM" in line for line in _lines(model=MlpConfig(hidden=[24, 64])))
    tf32 = _lines(device="cuda", baseline_environ={"tf32_matmul": True})
    assert any("TF32 already on" in line for line in tf32)
    no_amx = _lines(baseline_environ={"cpu_flags": {"avx512_bf16": True, "amx_bf16": False}})
    assert any("no AMX" in line for line in no_amx)
    assert _lines(emulated_reason="CPU has no avx512_bf16 / amx_bf16")[0].startswith("emulated:")
    # Only half-precision policies get a "why".
    assert _lines(policy="fp32", baseline_step_ms=1.0, matmul_tflops_fp32=0.1) == []
