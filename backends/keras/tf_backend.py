"""``tf-keras``: Keras 3 on TensorFlow, its own mixed precision (``DTypePolicy``) and
``LossScaleOptimizer``.

The dtype policy is given to every layer of the job's model (``backends/keras/models.py``), never
set globally; the classifier head is float32 so logits and loss are float32. Variables are
float32 under every policy (Keras casts them to the compute dtype inside each layer), so they
are also what the optimizer updates: there is no separate master copy.

One optimizer step is a compiled ``tf.function`` (``jit_compile`` is an explicit option, never
Keras' "auto"): rows gathered on the device from the resident data, micro-batches
(``grad_accumulation``) each adding ``scale·loss/n`` gradients, then ``optimizer.apply``. Loss,
scale and skipped flag go into an on-device buffer drained in one read, so no step waits for
the host.

Loss scaling (fp16-mixed) from ``job.loss_scale``:

* dynamic: ``LossScaleOptimizer(initial_scale=init_scale, dynamic_growth_steps=growth_interval)``.
  Keras grows by 2 and backs off by 0.5, fixed; other factors are rejected (``config_problem``).
  Its skip/grow/backoff rule is GradScaler's: a non-finite gradient halves the scale and resets
  the counter without calling the inner optimizer (so ``iterations``, which indexes the lr
  schedule, counts applied steps only); a finite one counts, and the ``growth_interval``-th in a
  row doubles the scale.
* static: the inner optimizer's ``loss_scale_factor``. Keras would then apply a non-finite
  gradient; GradScaler (and ``backends/reference/loss_scale.py``) skips it, so the step skips too.
* disabled, or any other policy: no scaling, scale 1.0, nothing skipped.

Optimizers follow torch's update rules (``backends/keras/optim.py``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.backends.base import Availability, Backend, EvalResult, MemoryStats, Telemetry
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job

EVAL_BATCH = 1024
# Keras' LossScaleOptimizer hard-codes these.
KERAS_GROWTH_FACTOR = 2.0
KERAS_BACKOFF_FACTOR = 0.5


@dataclass(frozen=True)
class KerasPolicy:
    """What a policy means in Keras."""

    dtype_policy: str  # keras.DTypePolicy name
    tf32: bool  # TensorFloat-32 execution allowed
    loss_scaling: bool  # fp16: scaled per job.loss_scale


# The one table this backend reads.
KERAS_POLICIES: dict[str, KerasPolicy] = {
    "fp32": KerasPolicy("float32", tf32=False, loss_scaling=False),
    "tf32": KerasPolicy("float32", tf32=True, loss_scaling=False),
    "fp16-mixed": KerasPolicy("mixed_float16", tf32=False, loss_scaling=True),
    "bf16-mixed": KerasPolicy("mixed_bfloat16", tf32=False, loss_scaling=False),
}


class TfKerasOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # XLA for the train/eval steps. Explicit: Keras' own "auto" turns it on silently on GPU.
    jit_compile: bool = False
    # tf.config.experimental.enable_op_determinism; None follows runner.deterministic.
    deterministic: bool | None = None


def _import_tf() -> tuple[Any, Any]:
    """tensorflow and keras, with Keras on its TensorFlow backend."""
    import sys

    if "keras" not in sys.modules:
        # Keras reads its backend once, at import, from KERAS_BACKEND or ~/.keras/keras.json.
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"tf-keras needs Keras on its TensorFlow backend, but Keras was loaded with "
            f'"{keras.backend.backend()}" (KERAS_BACKEND); run it in a process where '
            "KERAS_BACKEND=tensorflow"
        )
    return tf, keras


def grads_all_finite(tf: Any, grads: list) -> Any:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])


def _loss_mode(job: Job) -> str:
    if not (KERAS_POLICIES[job.policy].loss_scaling and job.loss_scale.enabled):
        return "none"
    return "dynamic" if job.loss_scale.dynamic else "static"


class TfKerasBackend(Backend):
    name = "tf-keras"
    framework = "tensorflow"
    policies = tuple(KERAS_POLICIES)
    Options = TfKerasOptions

    @staticmethod
    def is_available() -> Availability:
        for module, pip_name in (("tensorflow", "tensorflow"), ("keras", "keras")):
            if importlib.util.find_spec(module) is None:
                return Availability(False, f"{pip_name} is not installed")
        version = importlib.metadata.version("keras")
        if int(version.split(".")[0]) < 3:
            return Availability(False, f"tf-keras needs Keras 3, found keras {version}")
        return Availability(True)

    @classmethod
    def resolve_device(cls, requested: str) -> str:
        from precision_suite.backends.base import DeviceUnavailable

        if requested == "cpu":
            return "cpu"
        tf, _ = _import_tf()
        if tf.config.list_physical_devices("GPU"):
            return "cuda"
        if requested == "cuda":
            raise DeviceUnavailable("device cuda: TensorFlow sees no GPU")
        return "cpu"

    @classmethod
    def config_problem(cls, job: Job) -> str | None:
        """Why this backend cannot run ``job`` as configured (one line), or None."""
        if job.policy not in KERAS_POLICIES:
            return f'backend tf-keras has no policy "{job.policy}"; it has: {", ".join(KERAS_POLICIES)}'
        ls = job.loss_scale
        if _loss_mode(job) == "dynamic":
            for key, value, fixed in (
                ("growth_factor", ls.growth_factor, KERAS_GROWTH_FACTOR),
                ("backoff_factor", ls.backoff_factor, KERAS_BACKOFF_FACTOR),
            ):
                if value != fixed:
                    return (
                        f"loss_scale.{key}={value:g} cannot run on tf-keras: Keras' "
                        f"LossScaleOptimizer always grows the scale by {KERAS_GROWTH_FACTOR:g} "
                        f"and backs off by {KERAS_BACKOFF_FACTOR:g}; use {key}: {fixed:g} or "
                        "dynamic: false"
                    )
        return None

    # -------------------------------------------------- setup
    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        problem = self.config_problem(job)
        if problem:
            raise ValueError(problem)
        tf, keras = _import_tf()
        from precision_suite.backends.keras.models import build_keras_model
        from precision_suite.backends.keras.optim import build_optimizer
        from precision_suite.models import prepare_inputs

        self.job = job
        self.options = TfKerasOptions.model_validate(job.options)
        self.policy = KERAS_POLICIES[job.policy]
        self.loss_mode = _loss_mode(job)
        self._device = "/GPU:0" if job.device == "cuda" else "/CPU:0"
        self._configure_runtime(tf)
        keras.utils.set_random_seed(job.seed)

        with self._placement(tf):
            x_train = tf.constant(prepare_inputs(job.model, data.x_train))
            x_test = tf.constant(prepare_inputs(job.model, data.x_test))
            if job.model.kind == "cnn":
                # Keras convs are channels-last; transposed once here, not per step.
                x_train = tf.transpose(x_train, (0, 2, 3, 1))
                x_test = tf.transpose(x_test, (0, 2, 3, 1))
            self.x_train, self.x_test = x_train, x_test
            self.y_train = tf.constant(data.y_train.astype(np.int32))
            self.y_test = tf.constant(data.y_test.astype(np.int32))
            self.num_classes = data.num_classes
            self.model = build_keras_model(
                job.model,
                data.input_shape,
                data.num_classes,
                init_weights,
                keras.DTypePolicy(self.policy.dtype_policy),
            )
            train = job.train
            total_steps = train.steps or (len(data.y_train) // train.batch_size) * int(train.epochs or 0)
            inner = build_optimizer(train.optimizer, train.lr_schedule, max(total_steps, 1), train.grad_clip_norm)
            ls = job.loss_scale
            if self.loss_mode == "dynamic":
                self.optimizer = keras.optimizers.LossScaleOptimizer(
                    inner, initial_scale=ls.init_scale, dynamic_growth_steps=ls.growth_interval
                )
            else:
                if self.loss_mode == "static":
                    inner.loss_scale_factor = ls.init_scale
                self.optimizer = inner
            self.inner_optimizer = inner
            self.optimizer.build(self.model.trainable_variables)
        # Each step returns its (loss, scale used, skipped) row as a device tensor; they are kept
        # unread and stacked in one read at the drain (cheaper than writing a device buffer).
        self._rows: list[Any] = []
        self._last_row: Any = None
        self._n_micro = job.train.grad_accumulation
        self._build_functions(tf)

    def _placement(self, tf: Any) -> Any:
        """Where data, model and optimizer are created (a distribution strategy's scope in
        ``backends/keras/distributed.py``)."""
        return tf.device(self._device)

    def _configure_runtime(self, tf: Any) -> None:
        """Process-wide TF settings this job needs; the previous values are restored in
        ``teardown``. Threads and memory growth can only be set before TF initialises its
        runtime; where that already happened the actual values are recorded instead."""
        from tensorflow.python.framework import config as tf_config

        self._runtime_notes: list[str] = []
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                # Before anything allocates: otherwise TF reserves nearly all GPU memory and the
                # allocator peak means nothing.
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                self._runtime_notes.append("memory growth: GPU already initialised")
        threads = self.job.runner.threads
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:
                self._runtime_notes.append("threads: TF runtime already initialised")
        self._saved_globals = {
            "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
            "determinism": tf_config.is_op_determinism_enabled(),
        }
        # Set both ways explicitly: the fp32 baseline must never silently run TF32.
        tf.config.experimental.enable_tensor_float_32_execution(self.policy.tf32)
        deterministic = self.options.deterministic
        self.deterministic = self.job.runner.deterministic if deterministic is None else deterministic
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()

    def _loss(self, tf: Any, logits: Any, labels: Any) -> Any:
        # log-softmax · one-hot rather than the sparse op: its GPU gradient has no deterministic
        # kernel, and this is torch's cross_entropy (mean NLL of log_softmax) term for term.
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        return -tf.reduce_mean(tf.reduce_sum(tf.one_hot(labels, self.num_classes) * logp, axis=1))

    def _build_functions(self, tf: Any) -> None:
        model, optimizer = self.model, self.optimizer
        tvars = model.trainable_variables
        n_micro = self._n_micro
        mode = self.loss_mode
        batch = self.job.train.batch_size
        static_scale = float(self.job.loss_scale.init_scale)

        def all_finite(grads: list) -> Any:
            return grads_all_finite(tf, grads)

        def step(rows: Any) -> Any:
            if mode == "dynamic":
                scale = tf.identity(optimizer.dynamic_scale.value)
            else:
                scale = tf.constant(static_scale if mode == "static" else 1.0, tf.float32)
            grads, loss_sum = self._scaled_gradients(tf, rows, batch)
            if mode == "none":
                skipped = tf.constant(False)
                optimizer.apply(grads, tvars)
            else:
                skipped = tf.logical_not(all_finite(grads))
                if mode == "dynamic":
                    optimizer.apply(grads, tvars)  # skips and moves the scale itself
                else:

                    def apply() -> Any:
                        optimizer.apply(grads, tvars)
                        return tf.constant(True)

                    tf.cond(skipped, lambda: tf.constant(False), apply)
            return tf.stack([loss_sum / n_micro, scale, tf.cast(skipped, tf.float32)])

        def placed_step(rows: Any) -> Any:
            # Placed at trace time, so calls need no per-step device scope.
            with tf.device(self._device):
                return step(rows)

        jit = self.options.jit_compile
        self._step_fn = tf.function(placed_step, jit_compile=jit, input_signature=[tf.TensorSpec([batch], tf.int32)])
        self._eval_fn = self._eval_function(tf)
        # The traced graph itself: calling it skips tf.function's per-call argument binding and
        # dispatch (about 80 µs a step on a 2-core CPU), which the fixed signature makes moot.
        self._step_graph = self._step_fn.get_concrete_function()

    def _scaled_gradients(self, tf: Any, rows: Any, batch: int, replicas: int = 1) -> tuple[list, Any]:
        """Gradients of the scaled loss of the training ``rows`` (``batch`` of them), summed over
        ``grad_accumulation`` micro-batches, and the sum of the micro-batches' unscaled losses.
        Each loss is divided by the micro-batches × ``replicas`` (Keras sums replicas' gradients)."""
        model, optimizer = self.model, self.optimizer
        tvars = model.trainable_variables
        n_micro = self._n_micro
        divisor = n_micro * replicas
        micro = batch // n_micro
        x = tf.gather(self.x_train, rows)
        y = tf.gather(self.y_train, rows)
        grads = None
        loss_sum = tf.constant(0.0, tf.float32)
        for k in range(n_micro):
            with tf.GradientTape() as tape:
                logits = model(x[k * micro : (k + 1) * micro], training=True)
                loss = self._loss(tf, logits, y[k * micro : (k + 1) * micro])
                scaled = optimizer.scale_loss(loss / divisor if divisor > 1 else loss)
            micro_grads = tape.gradient(scaled, tvars)
            grads = micro_grads if grads is None else [a + b for a, b in zip(grads, micro_grads, strict=True)]
            loss_sum += loss
        return grads, loss_sum

    def _eval_function(self, tf: Any) -> Any:
        model = self.model

        def evaluate() -> tuple[Any, Any]:
            loss_sum = tf.constant(0.0, tf.float64)
            correct = tf.constant(0, tf.int64)
            n = int(self.x_test.shape[0])
            for start in range(0, n, EVAL_BATCH):
                logits = model(self.x_test[start : start + EVAL_BATCH], training=False)
                y = self.y_test[start : start + EVAL_BATCH]
                count = int(y.shape[0])
                loss_sum += tf.cast(self._loss(tf, logits, y), tf.float64) * count
                hits = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
                correct += tf.reduce_sum(tf.cast(hits, tf.int64))
            return loss_sum, correct

        return tf.function(evaluate, jit_compile=self.options.jit_compile)

    # -------------------------------------------------- training
    def prepare_batches(self, rows: np.ndarray) -> Sequence[Any]:
        import tensorflow as tf

        with tf.device(self._device):
            return tf.unstack(tf.constant(np.asarray(rows, np.int32)))

    def train_step(self, batch_indices: Any) -> None:
        if isinstance(batch_indices, np.ndarray):
            batch_indices = self.prepare_batches(batch_indices[None])[0]
        self._last_row = self._step_graph(batch_indices)
        self._rows.append(self._last_row)

    def drain_telemetry(self) -> Telemetry:
        import tensorflow as tf

        if not self._rows:
            return Telemetry()
        rows = tf.stack(self._rows).numpy().astype(np.float64)
        self._rows = []
        return Telemetry(loss=rows[:, 0], loss_scale=rows[:, 1], skipped=rows[:, 2] > 0)

    def evaluate(self) -> EvalResult:
        import tensorflow as tf

        with tf.device(self._device):
            loss_sum, correct = self._eval_fn()
        n = int(self.x_test.shape[0])
        return EvalResult(test_loss=float(loss_sum) / n, test_accuracy=int(correct) / n)

    def synchronize(self) -> None:
        # A host read of the last step's output waits for all work queued before it.
        if self._last_row is not None:
            self._last_row.numpy()

    # -------------------------------------------------- measurement
    def reset_memory_stats(self) -> None:
        import tensorflow as tf

        if self.job.device == "cuda":
            tf.config.experimental.reset_memory_stats("GPU:0")

    def memory_stats(self) -> MemoryStats:
        import tensorflow as tf

        def nbytes(variables: Any) -> int:
            return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))

        trainable = self.model.trainable_variables
        breakdown = {
            "weights": nbytes(self.model.variables),
            "gradients": nbytes(trainable),
            "optimizer_state": nbytes(self.optimizer.variables),
            # Keras' mixed policies keep float32 variables and cast per use: no master copy.
            "master_weights": 0,
        }
        if self.job.device == "cuda":
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            return MemoryStats(int(peak), "tf.config.experimental.get_memory_info", breakdown)
        return MemoryStats(sum(breakdown.values()), "accounting (cpu)", breakdown)

    def observed_precision(self) -> dict[str, Any]:
        import tensorflow as tf

        first = self.model.layers[1]  # the first layer after the input: a dense or conv
        with tf.device(self._device):
            activation = first(self.x_test[:2])
        variable = first.kernel
        return {
            "compute_dtype": activation.dtype.name,
            "param_dtype": str(variable.dtype),
            "master_dtype": str(variable.dtype),
            "loss_scaling": self.loss_mode,
            "layer_compute_dtype": first.compute_dtype,
            "layer_variable_dtype": first.variable_dtype,
            "head_compute_dtype": self.model.get_layer("head").compute_dtype,
            "loss_scale_config": self._loss_scale_used(),
        }

    def _loss_scale_used(self) -> dict[str, Any]:
        ls = self.job.loss_scale
        if self.loss_mode == "dynamic":
            return {
                "mode": "dynamic",
                "via": "keras.optimizers.LossScaleOptimizer",
                "initial_scale": float(ls.init_scale),
                "dynamic_growth_steps": int(ls.growth_interval),
                "growth_factor": KERAS_GROWTH_FACTOR,
                "backoff_factor": KERAS_BACKOFF_FACTOR,
            }
        if self.loss_mode == "static":
            return {
                "mode": "static",
                "via": "optimizer.loss_scale_factor",
                "loss_scale_factor": float(ls.init_scale),
                "skip_nonfinite": True,
            }
        return {"mode": "none"}

    def environment(self) -> dict[str, Any]:
        import keras
        import tensorflow as tf
        from precision_suite.measure import cpu_info
        from tensorflow.python.framework import config as tf_config

        device_name = cpu_info()["cpu_model"]
        if self.job.device == "cuda":
            gpu = tf.config.list_physical_devices("GPU")[0]
            device_name = tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
        build = tf.sysconfig.get_build_info()
        return {
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "device_name": device_name,
            "cuda_version": build.get("cuda_version"),
            "cudnn_version": build.get("cudnn_version"),
            "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
            "jit_compile": self.options.jit_compile,
            "op_determinism": tf_config.is_op_determinism_enabled(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "runtime_notes": list(self._runtime_notes),
            "loss_scaling": self._loss_scale_used(),
        }

    # -------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        from precision_suite.backends.keras.models import keras_model_weights, keras_variable_map

        canonical = {id(v) for v in keras_variable_map(self.model).values()}
        state: dict[str, Any] = {
            "weights": keras_model_weights(self.model),
            # Anything else the model holds (dropout seed-generator states).
            "model_extra": [np.asarray(v.numpy()) for v in self.model.variables if id(v) not in canonical],
            "optimizer": [np.asarray(v.numpy()) for v in self.optimizer.variables],
            "iterations": int(self.optimizer.iterations.numpy()),
            "loss_scale": None,
        }
        if self.loss_mode == "dynamic":
            state["loss_scale"] = {
                "scale": float(self.optimizer.dynamic_scale.numpy()),
                "growth_tracker": int(self.optimizer.step_counter.numpy()),
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from precision_suite.backends.keras.models import keras_variable_map, load_keras_weights

        load_keras_weights(self.model, state["weights"])
        canonical = {id(v) for v in keras_variable_map(self.model).values()}
        extra = [v for v in self.model.variables if id(v) not in canonical]
        for target, values, what in (
            (extra, state["model_extra"], "model"),
            (list(self.optimizer.variables), state["optimizer"], "optimizer"),
        ):
            if len(target) != len(values):
                raise ValueError(
                    f"checkpoint has {len(values)} {what} variables, this job has {len(target)}: "
                    "it was saved from a different job configuration"
                )
            for var, value in zip(target, values, strict=True):
                var.assign(value)
        # The readable copy of the loss-scale state wins over the raw optimizer variables.
        if self.loss_mode == "dynamic" and state.get("loss_scale"):
            self.optimizer.dynamic_scale.assign(state["loss_scale"]["scale"])
            self.optimizer.step_counter.assign(state["loss_scale"]["growth_tracker"])

    def teardown(self) -> None:
        import keras
        import tensorflow as tf
        from tensorflow.python.framework import config as tf_config

        for attr in (
            "_step_fn",
            "_step_graph",
            "_eval_fn",
            "model",
            "optimizer",
            "inner_optimizer",
            "x_train",
            "y_train",
            "x_test",
            "y_test",
            "_rows",
            "_last_row",
        ):
            if hasattr(self, attr):
                delattr(self, attr)
        saved = getattr(self, "_saved_globals", None)
        if saved is not None:
            tf.config.experimental.enable_tensor_float_32_execution(saved["tf32"])
            if saved["determinism"]:
                tf.config.experimental.enable_op_determinism()
            else:
                tf_config.disable_op_determinism()
            self._saved_globals = None
        keras.backend.clear_session()
