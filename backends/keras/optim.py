"""Keras 3 optimizers and lr schedule with PyTorch's update rules, for the Keras backends.

Imports keras at module level, so only the Keras backends import it, inside their methods.

They are Keras optimizers (subclasses of ``keras.optimizers.SGD`` / ``Adam``: same slots, same
``apply`` path, wrappable by ``LossScaleOptimizer``) whose ``update_step`` follows torch's
formulas, because Keras' own differ in ways that move fp32 trajectories apart:

* SGD momentum: Keras keeps ``m = μ·m - lr·g``, torch ``buf = μ·buf + g; p -= lr·buf`` (equal
  only while lr is constant).
* Adam: Keras adds ε to ``sqrt(v)`` before bias correction, torch to ``sqrt(v)/sqrt(1-β2^t)``.
* weight decay: torch's ``SGD``/``Adam`` ``weight_decay`` is an L2 term added to the gradient
  (after clipping, inside ``step``), ``AdamW``'s is decoupled ``p *= 1 - lr·wd`` (Keras' AdamW
  agrees; Keras' SGD/Adam ``weight_decay`` is decoupled, so it is not used).
* global-norm clipping: torch scales by ``max_norm / (norm + 1e-6)`` when that is below 1.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops
from precision_suite.backends.reference.lr_schedule import lr_table
from precision_suite.config import LrScheduleConfig, OptimizerConfig


class TorchStyleLrSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The reference schedule (``backends/reference/lr_schedule.py``, the one formula) as a table
    of per-step lrs computed in double precision, indexed by the optimizer's ``iterations``:
    applied steps only (a loss-scale-skipped step does not advance it, since
    ``LossScaleOptimizer`` does not call the inner ``apply`` then)."""

    def __init__(self, base_lr: float, cfg: LrScheduleConfig, total_steps: int) -> None:
        self.base_lr = float(base_lr)
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.table = lr_table(self.base_lr, cfg, self.total_steps)

    def __call__(self, step):
        last = len(self.table) - 1
        return ops.take(ops.convert_to_tensor(self.table, "float32"), ops.minimum(ops.cast(step, "int32"), last))

    def get_config(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "cfg": self.cfg.model_dump(),
            "total_steps": self.total_steps,
        }


def _torch_clip(grads: list, max_norm: float) -> list:
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads if g is not None))
    coef = ops.minimum(max_norm / (norm + 1e-6), 1.0)
    return [g if g is None else g * coef for g in grads]


class TorchStyleClipping:
    """Global-norm clipping as torch's ``clip_grad_norm_`` (``clip_norm`` None: off)."""

    clip_norm: float | None

    def _clip_gradients(self, grads):
        return grads if self.clip_norm is None else _torch_clip(grads, self.clip_norm)


class TorchStyleSGD(TorchStyleClipping, keras.optimizers.SGD):
    """``torch.optim.SGD`` (dampening 0, no Nesterov) with coupled L2 ``weight_decay``."""

    def __init__(self, l2: float = 0.0, clip_norm: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.l2 = float(l2)
        self.clip_norm = clip_norm

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = g + self.l2 * variable
        if self.momentum != 0:
            buf = self.momentums[self._get_variable_index(variable)]
            # torch starts the buffer at the first gradient: μ·0 + g is the same thing.
            self.assign(buf, buf * self.momentum + g)
            g = buf
        self.assign_sub(variable, lr * g)


class TorchStyleAdam(TorchStyleClipping, keras.optimizers.Adam):
    """``torch.optim.Adam`` (coupled L2 ``weight_decay``) or, with ``decoupled=True``,
    ``torch.optim.AdamW``."""

    def __init__(
        self,
        l2: float = 0.0,
        decoupled: bool = False,
        clip_norm: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.l2 = float(l2)
        self.decoupled = decoupled
        self.clip_norm = clip_norm

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2 and self.decoupled:
            self.assign(variable, variable * (1.0 - lr * self.l2))
        elif self.l2:
            g = g + self.l2 * variable
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(m, m * self.beta_1 + g * (1.0 - self.beta_1))
        self.assign(v, v * self.beta_2 + ops.square(g) * (1.0 - self.beta_2))
        step_size, sqrt_bias2 = self._bias_terms(learning_rate, variable.dtype)
        denom = ops.sqrt(v) / sqrt_bias2 + self.epsilon
        self.assign_sub(variable, step_size * m / denom)

    def _bias_terms(self, lr, dtype):
        """(lr / (1 - β1^t), sqrt(1 - β2^t)) for this step, built once per traced step and dtype
        rather than once per variable (each op is a kernel launch on every step)."""
        key = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Only inside a traced function: there the graph and the lr tensor identify one step.
            # (Under jax.jit, XLA merges the repeated terms itself.)
            key = (tf.compat.v1.get_default_graph(), dtype, id(lr)) if tf.inside_function() else None
        cache = getattr(self, "_bias_cache", None)
        if key is not None and cache is not None and cache[0] == key:
            return cache[1]
        lr = ops.cast(lr, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        # 1 - β^t as -expm1(t·ln β) with ln β taken in double: float32(0.999) alone is off by
        # 1.3e-5 relative in 1 - β2, where torch (Python floats) is exact.
        bias1 = -ops.expm1(t * math.log(self.beta_1))
        bias2 = -ops.expm1(t * math.log(self.beta_2))
        terms = (lr / bias1, ops.sqrt(bias2))
        self._bias_cache = (key, terms)
        return terms


def _learning_rate(cfg: OptimizerConfig, schedule: LrScheduleConfig, total_steps: int) -> Any:
    # A constant lr is a plain float: a schedule object would add ops to every step.
    constant = schedule.name == "constant" and not schedule.warmup_steps
    return float(cfg.lr) if constant else TorchStyleLrSchedule(cfg.lr, schedule, total_steps)


def build_optimizer(
    cfg: OptimizerConfig,
    schedule: LrScheduleConfig,
    total_steps: int,
    clip_norm: float | None,
) -> keras.optimizers.Optimizer:
    """The Keras optimizer for ``train.optimizer`` with torch's semantics (see module doc)."""
    lr = _learning_rate(cfg, schedule, total_steps)
    if cfg.name == "sgd":
        return TorchStyleSGD(l2=cfg.weight_decay, clip_norm=clip_norm, learning_rate=lr, momentum=cfg.momentum)
    if cfg.name in ("adam", "adamw"):
        return TorchStyleAdam(
            l2=cfg.weight_decay,
            decoupled=cfg.name == "adamw",
            clip_norm=clip_norm,
            learning_rate=lr,
            beta_1=cfg.betas[0],
            beta_2=cfg.betas[1],
            epsilon=cfg.eps,
        )
    raise ValueError(f"train.optimizer.name: unknown optimizer {cfg.name!r}; known: sgd, adam, adamw")


def build_stock_optimizer(
    cfg: OptimizerConfig,
    schedule: LrScheduleConfig,
    total_steps: int,
    clip_norm: float | None,
) -> keras.optimizers.Optimizer:
    """Keras' own ``SGD`` / ``Adam`` / ``AdamW`` with the config's hyperparameters: what a Keras
    user's ``model.fit`` runs (``optimizer_rules: keras``). Keras' formulas throughout: momentum
    as a velocity, ε added to sqrt(v) before bias correction, decoupled ``weight_decay`` for all
    three, ``global_clipnorm`` clipping. The lr schedule is still the suite's (it is not an
    optimizer rule)."""
    common: dict[str, Any] = {
        "learning_rate": _learning_rate(cfg, schedule, total_steps),
        "global_clipnorm": clip_norm,
        "weight_decay": cfg.weight_decay or None,
    }
    if cfg.name == "sgd":
        return keras.optimizers.SGD(momentum=cfg.momentum, **common)
    adam_args = {"beta_1": cfg.betas[0], "beta_2": cfg.betas[1], "epsilon": cfg.eps}
    if cfg.name == "adam":
        return keras.optimizers.Adam(**adam_args, **common)
    if cfg.name == "adamw":
        return keras.optimizers.AdamW(**adam_args, **{**common, "weight_decay": cfg.weight_decay})
    raise ValueError(f"train.optimizer.name: unknown optimizer {cfg.name!r}; known: sgd, adam, adamw")


# The Keras backends' ``optimizer_rules`` option (``OptimizerRules`` in common.py) → builder.
OPTIMIZER_RULES = {"torch": build_optimizer, "keras": build_stock_optimizer}
