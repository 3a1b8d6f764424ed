"""The learning-rate schedule, framework-neutral.

``lr(t) = optimizer.lr * lr_factor(cfg, t, total_steps)`` where ``t`` counts *applied*
optimizer steps: a step skipped for a loss-scale overflow does not advance the schedule (the
optimizer did not step, so neither does its schedule). Backends implement the same formula
with their framework's ops; this NumPy version is the reference tests compare against.
"""

from __future__ import annotations

import math

from precision_suite.config import LrScheduleConfig


def lr_factor(cfg: LrScheduleConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based) of ``total_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** ((step - cfg.warmup_steps) // cfg.step_size)
    # cosine from 1 down to min_lr_ratio over the steps after warm-up
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_table(base_lr: float, cfg: LrScheduleConfig, total_steps: int) -> list[float]:
    """The lr of every applied step ``0 .. total_steps - 1`` (at least one), as Python floats:
    what every backend indexes, so the formula lives only here."""
    horizon = max(int(total_steps), 1)
    return [base_lr * lr_factor(cfg, t, horizon) for t in range(horizon)]
