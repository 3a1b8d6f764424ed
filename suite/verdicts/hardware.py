"""Whether the hardware a record ran on computes a policy natively: a policy it can only emulate is
labelled ``emulated``, shown, and never claimed as a speedup. Read from the record's environment
(CPU ISA flags, CUDA compute capability) alone."""

from __future__ import annotations

from typing import Any

from precision_suite.backends.base import POLICY_SPECS

# CPU ISA flags any one of which lets the hardware compute in the policy's half type natively.
_CPU_ACCELERATION_FLAGS: dict[str, tuple[str, ...]] = {
    "float16": ("avx512_fp16", "amx_fp16"),
    "bfloat16": ("avx512_bf16", "amx_bf16"),
    "float8": (),  # no CPU the frameworks target has FP8 matmul units
}
# Minimum CUDA compute capability with native support (bf16 and TF32 arrived with Ampere, FP8
# tensor cores with Ada / Hopper).
_CUDA_MIN_CAPABILITY: dict[str, float] = {"float16": 5.3, "bfloat16": 8.0, "tf32": 8.0, "float8": 8.9}


def _half_type(policy: str) -> str | None:
    spec = POLICY_SPECS.get(policy)
    return spec.accelerated_by if spec else None


def _cuda_capability(environ: dict[str, Any]) -> float | None:
    for key in ("cuda_capability", "compute_capability", "device_capability"):
        value = environ.get(key)
        if isinstance(value, list | tuple) and len(value) == 2:
            return float(value[0]) + float(value[1]) / 10
        if isinstance(value, int | float | str):
            try:
                return float(value)
            except ValueError:
                continue
    return None


def emulation(policy: str, device: str, environ: dict[str, Any]) -> str:
    """Why the hardware cannot accelerate ``policy`` (a reason to label it "emulated" and keep
    it out of speed claims), or "" if it can. Missing ISA flags count as absent: a speed claim
    needs evidence."""
    kind = _half_type(policy)
    if kind is None:
        return ""
    # An FP8 backend says itself whether it emulated (torchao's emulate flag, Keras without XLA).
    fp8_reason = (environ.get("fp8") or {}).get("emulate_reason")
    if kind == "float8" and fp8_reason:
        return str(fp8_reason)
    if device == "cpu":
        if kind == "tf32":
            return ""
        flags = environ.get("cpu_flags") or {}
        wanted = _CPU_ACCELERATION_FLAGS[kind]
        if not wanted:
            return f"no CPU computes {kind} matmuls natively"
        if any(flags.get(flag) for flag in wanted):
            return ""
        if not flags:
            return f"CPU ISA flags not recorded; {' / '.join(wanted)} not shown"
        return f"CPU has no {' / '.join(wanted)}"
    capability = _cuda_capability(environ)
    if capability is not None and capability < _CUDA_MIN_CAPABILITY[kind]:
        return f"compute capability {capability:.1f} < {_CUDA_MIN_CAPABILITY[kind]:.1f}"
    return ""
