"""The loss-scaling state machine, framework-free: the reference every scaling backend is
checked against.

It follows ``torch.amp.GradScaler`` exactly, down to the arithmetic of its update kernel
(``_amp_update_scale_``): the scale is a float32 number, each update multiplies it by a
Python float (double) and rounds the product back to float32, and a growth that would
reach inf is dropped (the tracker still resets). One optimizer step::

    scaler = LossScaler.from_config(job.loss_scale)       # or LossScaler(init_scale=...)
    for batch in batches:
        loss = forward(batch)
        grads = backward(loss * scaler.scale)              # scaled gradients
        found_inf = not all_finite(grads)
        grads = grads / scaler.scale                       # unscale (1/scale done in float64)
        skipped = scaler.update(found_inf)                 # decide, then move the scale
        if not skipped:
            clip(grads); optimizer.step(grads)             # a skipped step changes nothing

``update(found_inf)``:

* overflow (inf/NaN anywhere in the gradients): the step is skipped, ``scale *= backoff_factor``
  and ``growth_tracker = 0``;
* otherwise ``growth_tracker += 1``; when it reaches ``growth_interval`` the scale is multiplied
  by ``growth_factor`` (only if the result is finite) and the tracker goes back to 0.

``dynamic=False`` keeps the scale at ``init_scale`` (a static scale) but still skips overflowing
steps; ``enabled=False`` is no scaling at all: the scale reads 1.0 and nothing is ever skipped
(as ``GradScaler(enabled=False)``, whose ``step`` always calls the optimizer).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _f32(value: float) -> float:
    return float(np.float32(value))


class LossScaler:
    """Scale, growth tracker and skip decisions of one training run."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        dynamic: bool = True,
        enabled: bool = True,
    ) -> None:
        if enabled:
            if not growth_factor > 1.0:
                raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
            if not 0.0 < backoff_factor < 1.0:
                raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
            if growth_interval < 1:
                raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
        self.enabled = enabled
        self.dynamic = dynamic
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._scale = _f32(init_scale) if enabled else 1.0
        self.growth_tracker = 0
        self.skipped_steps = 0
        self.steps = 0

    @classmethod
    def from_config(cls, cfg: Any, enabled: bool = True) -> LossScaler:
        """From a ``precision_suite.config.LossScaleConfig``; ``enabled=False`` for a policy that does not
        scale (anything but fp16), whatever the config says."""
        return cls(
            init_scale=cfg.init_scale,
            growth_factor=cfg.growth_factor,
            backoff_factor=cfg.backoff_factor,
            growth_interval=cfg.growth_interval,
            dynamic=cfg.dynamic,
            enabled=enabled and cfg.enabled,
        )

    @property
    def scale(self) -> float:
        """The scale to multiply the loss by for the next step (1.0 when disabled)."""
        return self._scale

    @property
    def inv_scale(self) -> float:
        """1/scale as GradScaler computes it: in float64, rounded to float32."""
        return _f32(1.0 / self._scale)

    @property
    def mode(self) -> str:
        """``"dynamic"``, ``"static"`` or ``"none"`` (the ``loss_scaling`` observation)."""
        if not self.enabled:
            return "none"
        return "dynamic" if self.dynamic else "static"

    def update(self, found_inf: bool) -> bool:
        """Consume one optimizer step's overflow flag; returns whether that step is skipped."""
        self.steps += 1
        if not self.enabled:
            return False
        skipped = bool(found_inf)
        self.skipped_steps += int(skipped)
        if not self.dynamic:
            return skipped
        if skipped:
            self._scale = _f32(self._scale * self.backoff_factor)
            self.growth_tracker = 0
        else:
            successful = self.growth_tracker + 1
            if successful == self.growth_interval:
                grown = _f32(self._scale * self.growth_factor)
                if np.isfinite(grown):
                    self._scale = grown
                self.growth_tracker = 0
            else:
                self.growth_tracker = successful
        return skipped

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self._scale,
            "growth_tracker": self.growth_tracker,
            "skipped_steps": self.skipped_steps,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.skipped_steps = int(state["skipped_steps"])
        self.steps = int(state["steps"])


def simulate(found_inf: list[bool] | np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, LossScaler]:
    """Run the state machine over a sequence of overflow flags: (scale used at each step,
    skipped flag of each step, the final scaler). ``kwargs`` go to ``LossScaler``."""
    scaler = LossScaler(**kwargs)
    scales = np.empty(len(found_inf), np.float64)
    skipped = np.empty(len(found_inf), bool)
    for i, flag in enumerate(found_inf):
        scales[i] = scaler.scale
        skipped[i] = scaler.update(bool(flag))
    return scales, skipped, scaler
