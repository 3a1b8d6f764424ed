"""``keras-jax``: Keras 3 on JAX, the same Keras models as tf-keras under a third runtime (XLA
through JAX), with Keras' own mixed precision (``DTypePolicy``) and ``LossScaleOptimizer``.

Registered only through the ``precision_suite.backends`` entry-point group (the project's own
``pyproject.toml``), exactly as a third-party backend would be: the worked example of adding one.

The model, optimizer, loss scaling, policy table, checkpoints, CPU memory accounting and options
(``KerasOptions``: ``jit_compile``, ``deterministic``, ``optimizer_rules``) are the Keras ones
shared with tf-keras (``backends/keras/common.py``). What is JAX's own:

* One optimizer step is one ``jax.jit`` function of the whole training state (trainable and
  non-trainable model variables, optimizer variables, telemetry buffer), built from
  ``model.stateless_call`` and ``optimizer.stateless_apply``: the state is threaded through and
  donated, so each step updates it in place on the device and nothing waits for the host.
  (Keras' variables hold the state of ``setup`` and are written back only for checkpoints.)
* XLA by default (``jit_compile: true``, Keras' own default on JAX: it is how JAX runs);
  ``jit_compile: false`` runs the same step op by op, as Keras on JAX does. A worker compiles the
  step once per job structure on CPU: its later jobs of that structure (other seeds, noise-floor
  runs) reuse it (``COMPILED_STEPS`` in ``common.py``; the record's ``compiled_step``).
* ``deterministic`` (default: ``runner.deterministic``) compiles the steps with XLA's
  ``xla_gpu_deterministic_ops`` on a GPU (scatter-adds, e.g. an embedding's gradient, otherwise
  accumulate in a racy order); it is a GPU compiler option, not passed on a CPU.
* Loss, scale used and skipped flag of each step are written into an on-device buffer inside
  the step; ``drain_telemetry`` reads the buffers in one transfer.
* fp32 matmuls and convolutions run at ``highest`` precision (JAX's GPU default would be TF32);
  ``tf32`` runs at ``tensorfloat32``, set at trace time with ``jax.default_matmul_precision``.
* On GPU the memory peak is the JAX allocator's (``device.memory_stats()``), which cannot be
  reset: it is the worker process's peak, the job's own with ``runner.isolation: per-job``.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.backends.base import EvalResult, MemoryStats, Telemetry
from precision_suite.backends.keras.common import (
    EVAL_BATCH,
    KerasBackend,
    KerasOptions,
    cross_entropy,
    loss_scale_used,
    set_random_seed,
)

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job

# Steps a telemetry buffer holds; a full one is set aside (unread) and a new one started.
TELEMETRY_CAPACITY = 1024


def _jax_device(jax: Any, device: str) -> Any:
    return jax.devices("gpu" if device == "cuda" else "cpu")[0]


class KerasJaxOptions(KerasOptions):
    """The Keras options with JAX's own default for ``jit_compile``: on (Keras' "auto" on JAX)."""

    jit_compile: bool = True


class KerasJaxBackend(KerasBackend):
    name = "keras-jax"
    runtime = "jax"
    runtime_name = "JAX"
    Options = KerasJaxOptions

    @classmethod
    def config_problem(cls, job: Job) -> str | None:
        problem = super().config_problem(job)
        if problem or job.device != "cuda":  # "auto" is checked again in the worker, resolved
            return problem
        options = cls.Options.model_validate(job.options)
        if options.deterministic_for(job) and not options.jit_compile:
            return (
                f"{cls.name}: jit_compile: false runs JAX op by op on the GPU, where XLA's deterministic "
                f"kernels cannot be asked for; set backends.options.{cls.name}.deterministic: false "
                "(it follows runner.deterministic) or jit_compile: true"
            )
        return None

    @classmethod
    def sees_cuda(cls) -> bool:
        import jax

        try:
            return bool(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib, or no device
            return False

    # -------------------------------------------------- setup
    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        keras = self.start_setup(job)
        import jax
        from precision_suite.models import prepare_inputs

        self.matmul_precision = "tensorfloat32" if self.policy.tf32 else "highest"
        self.device = _jax_device(jax, job.device)
        self.num_classes = data.num_classes
        set_random_seed(keras, job.seed)

        def on_device(array: np.ndarray) -> Any:
            return jax.device_put(array, self.device)

        x_train = prepare_inputs(job.model, data.x_train)
        x_test = prepare_inputs(job.model, data.x_test)
        if job.model.kind == "cnn":
            # Keras convs are channels-last; transposed once here, not per step.
            x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
        self.x_train, self.x_test = on_device(np.ascontiguousarray(x_train)), on_device(np.ascontiguousarray(x_test))
        self.y_train = on_device(data.y_train.astype(np.int32))
        self.y_test = on_device(data.y_test.astype(np.int32))
        cached = self.find_compiled(data)
        with jax.default_device(self.device):
            self.build_model_and_optimizer(keras, init_weights, data)
        # The jitted functions read the model and optimizer they were traced with for structure
        # only (stateless_call / stateless_apply): every value comes in through the state.
        if self.adopt_compiled(cached):
            self._step_fn, self._eval_fn = cached.runtime["step"], cached.runtime["eval"]
        else:
            self._step_fn, self._eval_fn = self._build_functions(jax)
            self.keep_compiled({"step": self._step_fn, "eval": self._eval_fn})
        self._state_from_variables()
        self._pending = 0  # steps written into the current telemetry buffer
        self._full_buffers: list[Any] = []

    def _state_from_variables(self) -> None:
        """The training state, copied from the Keras variables (the step donates its buffers,
        which the variables must not share)."""
        import jax
        import jax.numpy as jnp

        def copies(variables: Any) -> list[Any]:
            return [jax.device_put(jnp.array(v.value, copy=True), self.device) for v in variables]

        self._state = {
            "trainable": copies(self.model.trainable_variables),
            "non_trainable": copies(self.model.non_trainable_variables),
            "optimizer": copies(self.optimizer.variables),
            "telemetry": jax.device_put(jnp.zeros((TELEMETRY_CAPACITY, 3), jnp.float32), self.device),
        }

    def _variables_from_state(self) -> None:
        """Write the training state back into the Keras variables (as copies)."""
        import jax.numpy as jnp

        for variables, values in (
            (self.model.trainable_variables, self._state["trainable"]),
            (self.model.non_trainable_variables, self._state["non_trainable"]),
            (self.optimizer.variables, self._state["optimizer"]),
        ):
            for var, value in zip(variables, values, strict=True):
                var.assign(jnp.array(value, copy=True))

    def _build_functions(self, jax: Any) -> tuple[Any, Any]:
        import jax.numpy as jnp

        model, optimizer = self.model, self.optimizer
        mode = self.loss_mode
        n_micro = self.job.train.grad_accumulation
        micro = self.job.train.batch_size // n_micro
        num_classes = self.num_classes
        precision = self.matmul_precision
        static_scale = float(self.job.loss_scale.init_scale) if mode == "static" else 1.0
        scale_index = None
        if mode == "dynamic":
            scale_index = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.dynamic_scale)

        def scaled_loss(trainable: list, non_trainable: list, x: Any, y: Any, scale: Any) -> Any:
            logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            loss = cross_entropy(logits, y, num_classes)
            return (loss / n_micro if n_micro > 1 else loss) * scale, (loss, non_trainable)

        grad_fn = jax.value_and_grad(scaled_loss, has_aux=True)

        def step(state: dict[str, Any], x_train: Any, y_train: Any, rows: Any, slot: Any) -> dict[str, Any]:
            with jax.default_matmul_precision(precision):
                trainable, non_trainable = state["trainable"], state["non_trainable"]
                opt_vars = state["optimizer"]
                x, y = jnp.take(x_train, rows, axis=0), jnp.take(y_train, rows, axis=0)
                scale = opt_vars[scale_index] if mode == "dynamic" else jnp.float32(static_scale)
                grads, loss_sum = None, jnp.float32(0.0)
                for k in range(n_micro):
                    part = slice(k * micro, (k + 1) * micro)
                    (_, (loss, non_trainable)), micro_grads = grad_fn(trainable, non_trainable, x[part], y[part], scale)
                    grads = micro_grads if grads is None else [a + b for a, b in zip(grads, micro_grads, strict=True)]
                    loss_sum = loss_sum + loss
                finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in grads]))
                # dynamic: LossScaleOptimizer skips a non-finite step and moves the scale itself.
                new_trainable, new_opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
                skipped = jnp.logical_not(finite) if mode != "none" else jnp.bool_(False)
                if mode == "static":
                    # Keras would apply it; GradScaler skips it (see build_keras_optimizer).
                    keep = jax.tree_util.tree_map(
                        lambda new, old: jnp.where(finite, new, old),
                        (new_trainable, new_opt_vars),
                        (trainable, opt_vars),
                    )
                    new_trainable, new_opt_vars = keep
                row = jnp.stack([loss_sum / n_micro, scale.astype(jnp.float32), skipped.astype(jnp.float32)])
                telemetry = jax.lax.dynamic_update_slice(state["telemetry"], row[None], (slot, 0))
            return {
                "trainable": list(new_trainable),
                "non_trainable": list(non_trainable),
                "optimizer": list(new_opt_vars),
                "telemetry": telemetry,
            }

        def evaluate(state: dict[str, Any], x_test: Any, y_test: Any) -> tuple[Any, Any]:
            with jax.default_matmul_precision(precision):
                losses, hits = [], []
                for start in range(0, int(x_test.shape[0]), EVAL_BATCH):
                    logits, _ = model.stateless_call(
                        state["trainable"], state["non_trainable"], x_test[start : start + EVAL_BATCH]
                    )
                    y = y_test[start : start + EVAL_BATCH]
                    losses.append(cross_entropy(logits, y, num_classes) * y.size)  # labels per row or position
                    hits.append(jnp.sum(jnp.argmax(logits, axis=-1) == y))
                return jnp.stack(losses), jnp.stack(hits)

        if not self.options.jit_compile:
            return step, evaluate
        compiler_options = self.compiler_options()
        return (
            jax.jit(step, donate_argnums=0, compiler_options=compiler_options),
            jax.jit(evaluate, compiler_options=compiler_options),
        )

    def compiler_options(self) -> dict[str, Any] | None:
        """XLA options of the jitted steps: deterministic kernels where asked, on a GPU (the
        option is XLA's GPU compiler's; on a CPU nothing is passed, so the compiled program and its
        cache key stay those of a run without it)."""
        if self.deterministic and self.job.device == "cuda":
            return {"xla_gpu_deterministic_ops": True}
        return None

    # -------------------------------------------------- training
    def prepare_batches(self, rows: np.ndarray) -> Sequence[Any]:
        import jax

        staged = jax.device_put(np.asarray(rows, np.int32), self.device)
        return list(staged)

    def train_step(self, batch_indices: Any) -> None:
        import jax
        import jax.numpy as jnp

        if isinstance(batch_indices, np.ndarray):
            batch_indices = jax.device_put(batch_indices.astype(np.int32), self.device)
        if self._pending == TELEMETRY_CAPACITY:
            self._full_buffers.append(self._state["telemetry"])
            self._state["telemetry"] = jax.device_put(jnp.zeros((TELEMETRY_CAPACITY, 3), jnp.float32), self.device)
            self._pending = 0
        # The slot is a traced int32 argument: one compiled step serves every slot.
        self._state = self._step_fn(self._state, self.x_train, self.y_train, batch_indices, np.int32(self._pending))
        self._pending += 1

    def drain_telemetry(self) -> Telemetry:
        import jax

        if not self._pending and not self._full_buffers:
            return Telemetry()
        full, current = jax.device_get((self._full_buffers, self._state["telemetry"]))
        rows = np.concatenate([*full, current[: self._pending]]).astype(np.float64)
        self._full_buffers, self._pending = [], 0
        return Telemetry(loss=rows[:, 0], loss_scale=rows[:, 1], skipped=rows[:, 2] > 0)

    def evaluate(self) -> EvalResult:
        losses, hits = self._eval_fn(self._state, self.x_test, self.y_test)
        n = int(self.y_test.size)
        loss_sum = float(np.sum(np.asarray(losses, np.float64)))
        return EvalResult(test_loss=loss_sum / n, test_accuracy=int(np.sum(np.asarray(hits))) / n)

    def synchronize(self) -> None:
        import jax

        jax.block_until_ready(self._state)

    # -------------------------------------------------- measurement
    def memory_stats(self) -> MemoryStats:
        if self.job.device == "cuda":
            stats = self.device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                source = "jax device.memory_stats() peak_bytes_in_use (worker process)"
                return self.memory_with_peak(int(stats["peak_bytes_in_use"]), source)
        return self.memory_with_peak(None, "")

    def first_layer_output(self) -> Any:
        with self.runtime_context():
            return self.model.layers[1](self.x_test[:2])

    def runtime_context(self) -> Any:
        import jax

        return jax.default_matmul_precision(self.matmul_precision)

    def observed_precision(self) -> dict[str, Any]:
        self._variables_from_state()  # the FP8 evidence (amax histories) lives in the threaded state
        return {**super().observed_precision(), "matmul_precision": self.matmul_precision}

    def cuda_capability(self) -> tuple[int, int] | None:
        capability = getattr(self.device, "compute_capability", None)  # "9.0" on a CUDA device
        return tuple(int(part) for part in str(capability).split(".")[:2]) if capability else None

    def environment(self) -> dict[str, Any]:
        import jax
        import keras
        from precision_suite.measure.environment import cpu_info

        device_name = cpu_info()["cpu_model"] if self.job.device != "cuda" else self.device.device_kind
        return {
            "jax_version": jax.__version__,
            "jaxlib_version": importlib.metadata.version("jaxlib"),
            "keras_version": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "device_name": device_name,
            "jax_platform": self.device.platform,
            "platform_version": getattr(self.device.client, "platform_version", None),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            # XLA's persistent compilation cache (the runner shares one per run across its workers:
            # the same program compiled once, loaded by the others; the executable is identical).
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
            "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
            "jit_compile": self.options.jit_compile,
            "xla_compiler_options": self.compiler_options() if self.options.jit_compile else None,
            "optimizer_rules": self.options.optimizer_rules,
            "compiled_step": self.compiled_step,
            "matmul_precision": self.matmul_precision,
            "tf32": self.policy.tf32,
            "jax_enable_x64": bool(jax.config.jax_enable_x64),
            # XLA's CPU thread pool is its own: not limited by runner.threads.
            "cpu_threads": "xla default (all cores)" if self.job.device != "cuda" else None,
            "loss_scaling": loss_scale_used(self.job),
            **self.fp8_environment(),
        }

    # -------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        self._variables_from_state()
        return super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        pending, full = self._pending, self._full_buffers
        telemetry = self._state["telemetry"]
        self._state_from_variables()
        # Telemetry not yet drained stays: a checkpoint restores training state, not the log.
        self._state["telemetry"], self._pending, self._full_buffers = telemetry, pending, full

    def teardown(self) -> None:
        self.release("_state", "_full_buffers")
