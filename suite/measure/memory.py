"""One memory accounting for every framework, from the framework-neutral model spec.

On a CPU there is no allocator peak to read that means the same thing in every framework, so
every backend reports *this* accounting (``MemoryStats.breakdown``); on a GPU it is shown beside
the allocator peak. The backend only says how it stores things (``PrecisionLayout``: the dtypes
it really holds, read from its own tensors); the counts come from the spec, so the same model
under the same layout gets the same bytes in every framework.

What counts (per training step, steady state, batch ``B``):

* ``weights``: every trainable parameter in ``layout.param_dtype`` (the weights the forward
  reads) plus the BatchNorm running statistics (fp32).
* ``gradients``: one gradient per trainable parameter for each dtype in ``layout.grad_dtypes``
  (a hand-written master-weight scheme holds both the half and the fp32 gradient).
* ``optimizer_state``: ``optimizer_slots`` tensors per trainable parameter (Adam/AdamW 2, SGD
  with momentum 1, plain SGD 0) in ``layout.optimizer_dtype``. Step counters are not counted.
* ``master_weights``: a separate copy of every trainable parameter in ``layout.master_dtype``
  when the optimizer updates a copy rather than the weights themselves (none for autocast and
  Keras mixed policies, which keep fp32 variables).
* ``activations``: the tensors autograd saves for the backward pass, following PyTorch's
  autograd (the reference) layer by layer, in the compute dtype of the policy except the
  log-softmax of the loss (fp32 in every backend) and the max-pool indices (int64):

  - dense/conv: its input; its weight cast to the compute dtype when the parameters are held in
    another dtype (a per-use cast copy, saved for the input gradient), except for the first
    layer, whose input needs no gradient;
  - ReLU, tanh, sigmoid: the output; GELU: the input; BatchNorm: the input (plus per-channel
    statistics); LayerNorm: the input (plus per-token mean and rstd, fp32); max-pool: the
    indices (int64; its input is the ReLU output, already counted); softmax: its output;
    attention products: both operands (q, k and v);
  - a tensor saved by two ops (a ReLU output that is the next dense's input) counts once.

  Known residuals against what a framework really holds (documented, not hidden): torch
  autocast keeps the transformer's residual stream in fp32 (``x + pos`` promotes), so its real
  LayerNorm inputs are fp32 where this counts the compute dtype; autocast casts the LayerNorm
  output once per q/k/v projection (three copies) where this counts one; the integer targets
  of the loss are left out. Measured against torch's saved tensors in fp32 these leave the
  default models within a few per cent (tests/suite/measure/test_memory.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from precision_suite.backends.policy import dtype_bytes

COMPONENTS = ("weights", "gradients", "optimizer_state", "master_weights", "activations")


@dataclass(frozen=True)
class PrecisionLayout:
    """How a backend stores a model under a policy: dtype names as numpy spells them."""

    param_dtype: str  # the weights the forward pass reads
    compute_dtype: str  # matmul/conv outputs and saved activations
    grad_dtypes: tuple[str, ...]  # one gradient copy per entry
    master_dtype: str | None  # separate copy the optimizer updates, or None
    optimizer_dtype: str  # dtype of the optimizer's per-parameter slots


@dataclass(frozen=True)
class MemoryAccount:
    """Bytes per component (module docstring says exactly which tensors count)."""

    weights: int
    gradients: int
    optimizer_state: int
    master_weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.master_weights + self.activations

    def breakdown(self) -> dict[str, int]:
        return asdict(self)


def optimizer_slots(optimizer: Any) -> int:
    """Per-parameter state tensors of an ``OptimizerConfig`` (or its dict from a record)."""
    name = optimizer["name"] if isinstance(optimizer, dict) else optimizer.name
    momentum = optimizer.get("momentum", 0) if isinstance(optimizer, dict) else optimizer.momentum
    if name in ("adam", "adamw"):
        return 2
    return 1 if momentum else 0


def parameter_counts(model: Any, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    """(trainable, BatchNorm running statistics) element counts of the spec."""
    from precision_suite.models import init_weights

    weights = init_weights(model, tuple(input_shape), num_classes, seed=0)
    buffers = sum(v.size for k, v in weights.items() if k.endswith((".moving_mean", ".moving_var")))
    return sum(v.size for v in weights.values()) - buffers, buffers


def activation_bytes(
    model: Any, input_shape: tuple[int, ...], num_classes: int, batch_size: int, layout: PrecisionLayout
) -> int:
    """Bytes of the tensors saved for backward by one training step of ``batch_size`` rows."""
    from precision_suite.models import MAX_POOL, num_tokens

    c = dtype_bytes(layout.compute_dtype)
    cast = layout.param_dtype != layout.compute_dtype
    b = batch_size
    total = 0

    def weight_cast(n: int, first: bool) -> int:
        return n * c if cast and not first else 0

    if model.kind == "mlp":
        n_in = math.prod(input_shape)
        total += b * n_in * c  # first dense input (the cast or gathered batch)
        for i, n_out in enumerate(model.hidden):
            total += weight_cast(n_in * n_out, first=i == 0)
            # GELU keeps its input and the next dense keeps its output; the others save one.
            total += b * n_out * c * (2 if model.activation == "gelu" else 1)
            n_in = n_out
        total += weight_cast(n_in * num_classes, first=not model.hidden)
    elif model.kind == "cnn":
        c_in, h, w = input_shape
        k = model.kernel_size
        total += b * c_in * h * w * c  # first conv input
        for i, c_out in enumerate(model.channels):
            total += weight_cast(k * k * c_in * c_out, first=i == 0)
            total += 2 * b * c_out * h * w * c  # BatchNorm input (conv output), ReLU output
            total += 2 * c_out * 4  # BatchNorm batch mean and inverse std
            h, w = h // MAX_POOL, w // MAX_POOL
            total += b * c_out * h * w * dtype_bytes("int64")  # max-pool indices
            if i + 1 < len(model.channels):
                total += b * c_out * h * w * c  # pooled output = next conv's input
            c_in = c_out
        total += b * c_in * c + weight_cast(c_in * model.dense, first=False)  # dense input (mean)
        total += b * model.dense * c + weight_cast(model.dense * num_classes, first=False)  # ReLU out
    elif model.kind == "transformer":
        t, p = num_tokens(model, tuple(input_shape))
        d, hidden = model.d_model, model.d_model * model.mlp_ratio
        heads = model.num_heads
        total += b * t * p * c  # embed input
        stats = 2 * b * t * 4  # LayerNorm mean and rstd
        for _ in range(model.depth):
            total += b * t * d * c + stats  # ln1 input (residual stream)
            total += b * t * d * c  # ln1 output: q, k, v input
            total += weight_cast(4 * d * d + 2 * d * hidden, first=False)
            total += 3 * b * t * d * c  # scaled q, k, v for the two products
            total += b * heads * t * t * c  # softmax output
            total += b * t * d * c  # heads concatenated: out-projection input
            total += b * t * d * c + stats  # ln2 input
            total += b * t * d * c  # ln2 output: mlp1 input
            total += 2 * b * t * hidden * c  # GELU input, GELU output (mlp2 input)
        total += b * t * d * c + stats  # ln_f input
        total += b * d * c + weight_cast(d * num_classes, first=False)  # head input (token mean)
    else:  # pragma: no cover - the config union admits nothing else
        raise ValueError(f"unknown model kind {model.kind!r}")
    return total + b * num_classes * 4  # log-softmax of the loss, fp32


def account(
    model: Any,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    optimizer: Any,
    layout: PrecisionLayout,
) -> MemoryAccount:
    """The accounting of one training job (module docstring)."""
    trainable, buffers = parameter_counts(model, input_shape, num_classes)
    master = dtype_bytes(layout.master_dtype) if layout.master_dtype else 0
    return MemoryAccount(
        weights=trainable * dtype_bytes(layout.param_dtype) + buffers * 4,
        gradients=trainable * sum(dtype_bytes(d) for d in layout.grad_dtypes),
        optimizer_state=trainable * optimizer_slots(optimizer) * dtype_bytes(layout.optimizer_dtype),
        master_weights=trainable * master,
        activations=activation_bytes(model, input_shape, num_classes, batch_size, layout),
    )


def account_job(job: Any, input_shape: tuple[int, ...], num_classes: int, layout: PrecisionLayout) -> MemoryAccount:
    """``account`` for a ``Job``: the micro-batch is what one forward/backward holds."""
    micro = job.train.batch_size // job.train.grad_accumulation
    return account(job.model, input_shape, num_classes, micro, job.train.optimizer, layout)


def breakdown_shares(breakdown: dict[str, Any]) -> dict[str, float]:
    """Each component's share of the total (for "activations are 22 % of peak here")."""
    values = {k: float(breakdown.get(k) or 0) for k in COMPONENTS}
    total = sum(values.values())
    return {k: (v / total if total else 0.0) for k, v in values.items()}
