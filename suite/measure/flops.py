"""Model FLOPs utilisation (MFU): the model's FLOPs per second as a fraction of the device's peak.

Counting convention (the usual one for MFU: Kaplan et al. 2020, PaLM 2022 appendix B):

* only matrix products and convolutions count, 2 FLOPs per multiply-accumulate; elementwise
  work (biases, activations, norms, softmax, pooling, the optimizer update) is left out;
* one training step costs 3× the forward pass (backward = 2× forward: the gradient with respect
  to the inputs and the one with respect to the weights);
* attention counts q·kᵀ and weights·v (2·T²·d each per block), with no mask (the models have
  none), so nothing is halved for causality.

Peaks are the vendor's *dense* datasheet figures for the policy's tensor dtype (fp32 → plain
FP32 units, because the ``fp32`` policy turns TF32 off; ``tf32`` → TF32 tensor cores; fp16/bf16
→ their tensor cores). NVIDIA datasheets quote tensor-core peaks "with sparsity" (2:4 structured
sparsity, marked *): the dense figure, used here, is half of that. A measured large-matmul
ceiling (``measure_matmul_tflops``) is the honest second denominator: what the card actually
sustains on one big product.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from precision_suite.backends.policy import get_policy

# ---------------------------------------------------------------- device peaks


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one device per dtype key (``fp32``, ``tf32``, ``fp16``, ``bf16``)
    and the document the numbers come from."""

    name: str
    tflops: dict[str, float]
    source: str


def _peak(name: str, fp32: float, tf32: float | None, fp16: float, bf16: float | None, source: str):
    tflops = {"fp32": fp32, "fp16": fp16}
    if tf32 is not None:
        tflops["tf32"] = tf32
    if bf16 is not None:
        tflops["bf16"] = bf16
    return DevicePeak(name, tflops, source)


_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (dense = half the 'with sparsity' figure)"
_H100_PCIE_DS = "NVIDIA H100 PCIe product brief / datasheet 2022 (dense = half the sparse figure)"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet (dense = half the 'with sparsity' figure)"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet (dense figures)"

# Regex on the device name (as torch.cuda.get_device_name / TF report it) → peak; first match
# wins, so the more specific names come first ("H100 NVL" before "H100", "L40S" before "L4").
DEVICE_PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    (r"H200\s*NVL", _peak("NVIDIA H200 NVL", 60.0, 417.5, 835.5, 835.5, _H200_DS)),
    (r"H200|GH200", _peak("NVIDIA H200 SXM", 67.0, 494.5, 989.5, 989.5, _H200_DS)),
    (r"H100\s*NVL", _peak("NVIDIA H100 NVL", 60.0, 417.5, 835.5, 835.5, _H100_DS)),
    (r"H100\s*PCIe", _peak("NVIDIA H100 PCIe", 51.0, 378.0, 756.5, 756.5, _H100_PCIE_DS)),
    # "NVIDIA H100 80GB HBM3" is the SXM5 part's name.
    (r"H100", _peak("NVIDIA H100 SXM", 67.0, 494.5, 989.5, 989.5, _H100_DS)),
    (r"A100", _peak("NVIDIA A100", 19.5, 156.0, 312.0, 312.0, _A100_DS)),
    (r"L40S", _peak("NVIDIA L40S", 91.6, 183.0, 362.05, 362.05, "NVIDIA L40S datasheet")),
    (r"\bL4\b", _peak("NVIDIA L4", 30.3, 60.0, 121.0, 121.0, "NVIDIA L4 datasheet")),
    (r"\bA10\b", _peak("NVIDIA A10", 31.2, 62.5, 125.0, 125.0, "NVIDIA A10 datasheet")),
    (r"V100.*SXM", _peak("NVIDIA V100 SXM2", 15.7, None, 125.0, None, "NVIDIA V100 datasheet")),
    (r"V100", _peak("NVIDIA V100 PCIe", 14.0, None, 112.0, None, "NVIDIA V100 datasheet")),
    (r"\bT4\b", _peak("NVIDIA T4", 8.1, None, 65.0, None, "NVIDIA T4 datasheet")),
)


def peak_dtype(policy: str) -> str:
    """The peak a policy is measured against (``Policy.peak``: its compute dtype's, or TF32's
    where TF32 tensor cores accelerate it); ``UnknownPolicy`` (a ValueError) for an unknown name."""
    return get_policy(policy).peak


def device_peak(device_name: str | None) -> DevicePeak | None:
    """The datasheet peaks of the device called ``device_name``, or None when it is not in the
    table (CPUs, unknown cards)."""
    if not device_name:
        return None
    for pattern, peak in DEVICE_PEAKS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


# ---------------------------------------------------------------- model FLOPs


def as_model_config(model: Any) -> Any:
    if isinstance(model, dict):
        from precision_suite.jobs import MODEL_ADAPTER

        return MODEL_ADAPTER.validate_python(model)
    return model


def forward_flops_per_sample(model: Any, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Matmul/conv FLOPs (2 per multiply-accumulate) of one sample's forward pass. ``model`` is
    a model config (or its dict from a record), ``input_shape`` the canonical (C, H, W) or (F,)
    shape without the batch dimension."""
    from precision_suite.models import MAX_POOL, num_tokens

    cfg = as_model_config(model)
    shape = tuple(int(v) for v in input_shape)
    if cfg.kind == "mlp":
        n_in, flops = math.prod(shape), 0
        for n_out in cfg.hidden:
            flops += 2 * n_in * n_out
            n_in = n_out
        return flops + 2 * n_in * num_classes
    if cfg.kind == "cnn":
        if len(shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got shape {shape}")
        c_in, h, w = shape
        k, flops = cfg.kernel_size, 0
        for c_out in cfg.channels:
            flops += 2 * h * w * k * k * c_in * c_out  # 'same' padding, stride 1
            c_in, h, w = c_out, h // MAX_POOL, w // MAX_POOL
        return flops + 2 * c_in * cfg.dense + 2 * cfg.dense * num_classes
    if cfg.kind == "transformer":
        t, p = num_tokens(cfg, shape)
        d, hidden = cfg.d_model, cfg.d_model * cfg.mlp_ratio
        per_block = (
            4 * 2 * t * d * d  # q, k, v, out projections
            + 2 * 2 * t * t * d  # q·kᵀ and weights·v, summed over heads
            + 2 * 2 * t * d * hidden  # mlp1, mlp2
        )
        return 2 * t * p * d + cfg.depth * per_block + 2 * d * num_classes
    raise ValueError(f"unknown model kind {cfg.kind!r}")


def train_flops_per_sample(model: Any, input_shape: tuple[int, ...], num_classes: int) -> int:
    """One training sample's model FLOPs: forward + backward = 3× forward (module docstring)."""
    return 3 * forward_flops_per_sample(model, input_shape, num_classes)


def mfu(flops_per_sample: float, samples_per_s: float, peak_tflops: float) -> float:
    """Achieved model FLOP/s over the peak (both in FLOP/s terms)."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
    return flops_per_sample * samples_per_s / (peak_tflops * 1e12)


# Datasets whose shape is fixed by name (canonical (C, H, W), classes).
_KNOWN_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}


def dataset_shape(data: dict[str, Any]) -> tuple[tuple[int, ...], int] | None:
    """(canonical input shape, number of classes) of a record's ``config.data``, or None when
    the config alone does not say (an ``npz`` file)."""
    name = data.get("name")
    if name == "synthetic":
        syn = data.get("synthetic") or {}
        shape = tuple(int(v) for v in syn.get("shape", (1, 8, 8)))
        if len(shape) == 2:  # as precision_suite.data.load_synthetic_dataset: [H, W] is one channel
            shape = (1, *shape)
        return shape, int(syn.get("num_classes", 10))
    return _KNOWN_SHAPES.get(name)


def record_mfu(
    record: dict[str, Any],
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    measured_peak_tflops: float | None = None,
) -> dict[str, Any] | None:
    """MFU figures for one result record, or None when it has no throughput or its input shape
    is unknown: taken from the arguments, else ``metrics.input_shape``/``metrics.num_classes``
    if the record has them, else from ``config.data`` (not possible for ``npz``).

    Returns ``model_tflop_per_sample`` (training), ``achieved_tflops``, ``peak_dtype``, and when
    the device is in the table ``peak_tflops``, ``peak_device``, ``peak_source``, ``mfu``; with
    ``measured_peak_tflops`` also ``mfu_measured`` (against that ceiling)."""
    metrics = record.get("metrics") or {}
    samples_per_s = metrics.get("samples_per_s")
    config = record.get("config") or {}
    if not samples_per_s or "model" not in config or (config["model"] or {}).get("kind") == "custom":
        return None  # a custom model has no spec to count its FLOPs from
    if (input_shape is None or num_classes is None) and metrics.get("input_shape"):
        # Recorded by the loop when it knows the dataset (any source, npz included).
        input_shape = input_shape or tuple(metrics["input_shape"])
        num_classes = num_classes or metrics.get("num_classes")
    if input_shape is None or num_classes is None:
        known = dataset_shape(config.get("data") or {})
        if known is None:
            return None
        input_shape = input_shape or known[0]
        num_classes = num_classes or known[1]
    flops = train_flops_per_sample(config["model"], input_shape, num_classes)
    achieved = flops * samples_per_s / 1e12
    dtype = peak_dtype(record.get("policy") or config.get("policy"))
    out: dict[str, Any] = {
        "model_tflop_per_sample": flops / 1e12,
        "achieved_tflops": achieved,
        "peak_dtype": dtype,
    }
    peak = device_peak((record.get("environ") or {}).get("device_name"))
    if peak is not None and dtype in peak.tflops:
        out.update(
            peak_tflops=peak.tflops[dtype],
            peak_device=peak.name,
            peak_source=peak.source,
            mfu=mfu(flops, samples_per_s, peak.tflops[dtype]),
        )
    if measured_peak_tflops:
        out["mfu_measured"] = mfu(flops, samples_per_s, measured_peak_tflops)
    return out


# ---------------------------------------------------------------- measured ceiling


def measure_matmul_tflops(dtype: str = "bfloat16", n: int = 8192, iters: int = 20, tf32: bool = False) -> float:
    """TFLOP/s of an n×n×n matrix product on the current CUDA device (mean of ``iters`` after
    warm-up, CUDA events): the ceiling a real card sustains, next to the datasheet's. Random
    normal data (zeros run faster on some cards and would flatter the ceiling)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("measure_matmul_tflops needs a CUDA device")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device="cuda", dtype=torch_dtype)
        b = torch.randn(n, n, device="cuda", dtype=torch_dtype)
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3 or (time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 * iters / seconds / 1e12
