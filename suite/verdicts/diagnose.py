""" "Why no speedup": one line per cause, for a half-precision row that is not claimed faster.

Every line is computed from a measurement (the speed phase's step times, its half-batch probe
and its measured matmul rate) or from the model spec and the recorded environment — never from
a rule of thumb alone:

* ``overhead-bound`` (measured): the fp32 step reaches less than ``OVERHEAD_FLOPS_FRACTION`` of
  the FLOP/s this framework measured on one large matrix product on the same device (model
  FLOPs counted as in ``precision_suite.measure.flops``), or halving the batch leaves the step time
  above ``1 / OVERHEAD_BATCH_RATIO`` of itself (twice the work for less than that much more
  time: a fixed per-step cost dominates, which half precision does not shrink);
* ``emulated``: the hardware has no native path for the half type (``hardware.emulation``);
* ``dims``: GEMM dimensions of the spec that are not multiples of the policy's ``gemm_multiple``
  (fp16/bf16 tensor cores and AMX tiles work on multiples of 8, FP8's scaled matmuls on 16; other
  sizes are padded, take a slower path or, for FP8, stay in bf16);
* ``tf32``: the fp32 baseline already ran with TF32 on (recorded environment);
* ``compile``: no graph compilation (``torch.compile`` / XLA ``jit_compile`` off, recorded)
  while the step is overhead-bound: per-op dispatch is paid every step in every precision;
* ``isa``: a CPU with AVX512_BF16 (AVX512_FP16) but no AMX for the half type.
"""

from __future__ import annotations

import math
from typing import Any

from precision_suite.backends.policy import NativeOn, find_policy

OVERHEAD_FLOPS_FRACTION = 0.10
OVERHEAD_BATCH_RATIO = 1.3
# The causes that are the device's, the same for every row of a half type on it (emulation, no
# AMX), rather than the row's: a report says them once per run (``is_hardware_cause``).
HARDWARE_CAUSES = ("emulated: ", "CPU has ")


def is_hardware_cause(line: str) -> bool:
    """Whether a ``why_not_faster`` line is about the device rather than the row."""
    return line.startswith(HARDWARE_CAUSES)


def gemm_dims(model: Any, input_shape: tuple[int, ...], num_classes: int, batch_size: int) -> dict[str, int]:
    """The matrix-product dimensions of one training step of the spec, by name."""
    from precision_suite.models import num_tokens

    dims: dict[str, int] = {"batch": batch_size, "classes": num_classes}
    if model.kind == "mlp":
        dims["input features"] = math.prod(input_shape)
        for i, width in enumerate(model.hidden):
            dims[f"hidden{i}"] = width
    elif model.kind == "cnn":
        c_in = input_shape[0]
        for i, c_out in enumerate(model.channels):
            dims[f"conv{i} in×k×k"] = c_in * model.kernel_size**2
            dims[f"conv{i} channels"] = c_out
            c_in = c_out
        dims["dense"] = model.dense
    elif model.kind == "transformer":
        tokens, patch = num_tokens(model, tuple(input_shape))
        dims.update(
            {
                "tokens": tokens,
                "patch values": patch,
                "d_model": model.d_model,
                "head dim": model.d_model // model.num_heads,
                "mlp hidden": model.d_model * model.mlp_ratio,
            }
        )
    return dims


def why_not_faster(
    policy: str,
    device: str,
    emulated_reason: str,
    model: Any,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    batch_size: int | None,
    baseline_environ: dict[str, Any],
    baseline_step_ms: float | None = None,
    matmul_tflops_fp32: float | None = None,
    batch_step_time_ratio: float | None = None,
) -> list[str]:
    """The causes that apply (module docstring), one line each."""
    from precision_suite.measure.flops import train_flops_per_sample

    found = find_policy(policy)
    if found is None or not found.reduced_precision:
        return []
    lines = []
    overhead = False
    # A custom model has no spec to count its FLOPs from.
    specced = getattr(model, "kind", None) != "custom"
    if specced and input_shape and num_classes and batch_size and baseline_step_ms and matmul_tflops_fp32:
        flops = train_flops_per_sample(model, input_shape, num_classes) * batch_size
        achieved = flops / (baseline_step_ms / 1e3) / 1e12
        if achieved < OVERHEAD_FLOPS_FRACTION * matmul_tflops_fp32:
            overhead = True
            lines.append(
                f"overhead-bound: the fp32 step reaches {achieved * 1e3:.1f} GFLOP/s, "
                f"{achieved / matmul_tflops_fp32:.1%} of the {matmul_tflops_fp32 * 1e3:.0f} GFLOP/s "
                "this framework measured on a large fp32 matmul here"
            )
    if batch_step_time_ratio is not None and batch_step_time_ratio < OVERHEAD_BATCH_RATIO:
        overhead = True
        lines.append(
            f"overhead-bound: twice the batch costs only ×{batch_step_time_ratio:.2f} the fp32 step time "
            "(a fixed per-step cost dominates)"
        )
    if emulated_reason:
        lines.append(f"emulated: {emulated_reason}")
    if input_shape and num_classes and batch_size:
        multiple = found.gemm_multiple
        odd = {k: v for k, v in gemm_dims(model, input_shape, num_classes, batch_size).items() if v % multiple}
        if odd:
            listed = ", ".join(f"{k} {v}" for k, v in odd.items())
            lines.append(f"GEMM dims not multiples of {multiple}: {listed}")
    if baseline_environ.get("tf32_matmul") or baseline_environ.get("tf32"):
        lines.append("TF32 already on in the fp32 baseline: it is tensor-core accelerated too")
    for key, what in (("compile", "torch.compile"), ("jit_compile", "XLA (jit_compile)")):
        if overhead and baseline_environ.get(key) is False:
            lines.append(f"{what} off: every op is dispatched separately each step, in every precision")
    native = found.native
    if device == "cpu" and not emulated_reason and isinstance(native, NativeOn) and native.cpu_vector_flag:
        flags = baseline_environ.get("cpu_flags") or {}
        if flags.get(native.cpu_vector_flag) and not flags.get(native.cpu_matrix_flag or ""):
            lines.append(
                f"CPU has {native.cpu_vector_flag.upper()} but no AMX for {found.compute_dtype}: "
                "half matmuls gain at most the vector width"
            )
    return lines


def diagnose_group(group: Any, phases: dict[tuple[str, str], Any], records: list[dict[str, Any]]) -> None:
    """Fill ``row.why_not_faster`` for every half-precision row of ``group`` not claimed faster;
    ``phases``: the group's ``precision_suite.verdicts.speed.SpeedPhase`` by (family, runtime)."""
    from precision_suite.measure.flops import as_model_config, dataset_shape

    by_row: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        by_row.setdefault((str(record.get("backend")), str(record.get("policy"))), record)
    for row in group.rows:
        claimed = row.speedup is not None and row.speedup > 1 and not row.emulated and not row.noisy_reason
        if row.is_baseline or claimed:
            continue
        phase = phases.get(row.implementation)
        record = by_row.get((row.backend, row.policy)) or {}
        config = record.get("config") or {}
        model = (phase.model_config if phase else None) or config.get("model")
        try:
            model = as_model_config(model) if model else None
        except ValueError:  # a record without a full model spec: nothing to diagnose from
            model = None
        if model is None:
            continue
        shape = (phase.input_shape, phase.num_classes) if phase and phase.input_shape else None
        shape = shape or dataset_shape(config.get("data") or {}) or (None, None)
        baseline_env = phase.environ if phase else (record.get("environ") or {})
        row.why_not_faster = why_not_faster(
            row.policy,
            row.device,
            row.emulated_reason,
            model,
            shape[0],
            shape[1],
            phase.batch_size if phase else (config.get("train") or {}).get("batch_size"),
            baseline_env,
            phase.baseline_step_ms if phase else None,
            phase.matmul_tflops.get("float32") if phase else None,
            phase.batch_scaling if phase else None,
        )
