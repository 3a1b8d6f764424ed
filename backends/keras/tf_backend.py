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
the host. The traced step and evaluation serve the worker's later CPU jobs of the same structure
(other seeds, noise-floor runs): ``COMPILED_STEPS`` in ``common.py``, the record's ``compiled_step``.

Loss scaling (fp16-mixed) follows ``job.loss_scale`` through ``LossScaleOptimizer`` (dynamic)
or ``loss_scale_factor`` (static, non-finite steps skipped here as GradScaler does); Keras grows
by 2 and backs off by 0.5, fixed, and other factors are rejected (``config_problem``). The
policy table, that mapping, checkpoints and the CPU memory accounting are shared with every Keras
runtime (``backends/keras/common.py``), and so are the options (``KerasOptions``: ``jit_compile``,
``deterministic``, ``optimizer_rules``); optimizers follow torch's update rules
(``backends/keras/optim.py``) unless ``optimizer_rules: keras`` asks for stock Keras optimizers
(what ``model.fit`` runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.backends.base import EvalResult, MemoryStats, Telemetry
from precision_suite.backends.keras.common import (
    EVAL_BATCH,
    KerasBackend,
    cross_entropy,
    import_keras,
    loss_scale_used,
    set_random_seed,
)

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job


def _import_tf() -> tuple[Any, Any]:
    """tensorflow and keras, with Keras on its TensorFlow backend."""
    keras = import_keras("tensorflow")
    import tensorflow as tf

    return tf, keras


def grads_all_finite(tf: Any, grads: list) -> Any:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])


class TfKerasBackend(KerasBackend):
    name = "tf-keras"
    runtime = "tensorflow"
    runtime_name = "TensorFlow"

    @classmethod
    def data_parallel_class(cls, job: Job) -> type[TfKerasBackend]:
        """``tf.distribute.MirroredStrategy`` (one process, every replica), or with
        ``distributed.tf_strategy: multi-worker`` one process per replica."""
        from precision_suite.backends.keras import distributed

        if job.distributed.tf_strategy == "multi-worker":
            return distributed.MultiWorkerTfKerasBackend
        return distributed.MirroredTfKerasBackend

    @classmethod
    def sees_cuda(cls) -> bool:
        tf, _ = _import_tf()
        return bool(tf.config.list_physical_devices("GPU"))

    # -------------------------------------------------- setup
    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        keras = self.start_setup(job)
        import tensorflow as tf
        from precision_suite.models import prepare_inputs

        self._device = "/GPU:0" if job.device == "cuda" else "/CPU:0"
        self._configure_runtime(tf)
        cached = self.find_compiled(data)
        # With cached steps, everything but TensorFlow's global seed, whose setter also clears
        # TensorFlow's kernel cache: the cached graphs would be instantiated again on their first
        # call (0.6 s for the default transformer on a 2-core CPU). That seed feeds only stateful
        # TF random ops; the model build draws its seeds from Python's ``random`` and the graphs'
        # dropout is stateless, seeded from a variable (tests/backends/keras/test_reuse.py).
        set_random_seed(keras, job.seed, tensorflow=cached is None)

        with self._placement(tf):
            if cached is not None:
                # The data the cached graph captured: this very dataset, prepared for this model.
                self.x_train, self.y_train, self.x_test, self.y_test = cached.runtime["data"]
            else:
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
            self.build_model_and_optimizer(keras, init_weights, data)
        # Each step returns its (loss, scale used, skipped) row as a device tensor; they are kept
        # unread and stacked in one read at the drain (cheaper than writing a device buffer).
        self._rows: list[Any] = []
        self._last_row: Any = None
        self._n_micro = job.train.grad_accumulation
        if self.adopt_compiled(cached):
            self._step_graph, self._eval_fn = cached.runtime["step"], cached.runtime["eval"]
            return
        if cached is not None:  # not adopted after all: trace as a job without a cache would
            tf.random.set_seed(job.seed)
        self._build_functions(tf)
        data_tensors = (self.x_train, self.y_train, self.x_test, self.y_test)
        captured = sum(int(np.prod(t.shape)) * t.dtype.size for t in data_tensors)
        self.keep_compiled({"step": self._step_graph, "eval": self._eval_fn, "data": data_tensors}, captured)

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
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()

    def _loss(self, tf: Any, logits: Any, labels: Any) -> Any:
        return cross_entropy(logits, labels, self.num_classes)

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
        # The traced graphs themselves: calling one skips tf.function's per-call argument binding
        # and dispatch (about 80 µs a step on a 2-core CPU), which the fixed signature makes moot.
        # Both are traced now, while this job's objects exist: a later job may reuse them.
        self._step_graph = self._step_fn.get_concrete_function()
        with tf.device(self._device):
            self._eval_fn = self._eval_function(tf).get_concrete_function()

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
            # An embedding's gradient comes as IndexedSlices; made dense, as torch's is (and as
            # the torch-rule optimizers' arithmetic needs).
            micro_grads = [
                tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in tape.gradient(scaled, tvars)
            ]
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
                count = int(np.prod(y.shape))  # labels: one per row, or one per position
                loss_sum += tf.cast(self._loss(tf, logits, y), tf.float64) * count
                hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
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
        n = int(np.prod(self.y_test.shape))
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

        if self.job.device == "cuda":
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            return self.memory_with_peak(int(peak), "tf.config.experimental.get_memory_info")
        return self.memory_with_peak(None, "")

    def activate(self) -> None:
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(self.policy.tf32)

    def matmul_tflops(self, dtype: str, seconds: float = 0.2) -> float | None:
        import time

        import tensorflow as tf

        n = 4096 if self.job.device == "cuda" else 1024
        with tf.device(self._device):
            a = tf.random.normal((n, n), dtype=dtype)
            b = tf.random.normal((n, n), dtype=dtype)
            tf.matmul(a, b).numpy()
            iters, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds or iters < 2:
                out = tf.matmul(a, b)
                iters += 1
                tf.reduce_sum(out).numpy()  # reading a result waits for the product
        return 2 * n**3 * iters / elapsed / 1e12

    def first_layer_output(self) -> Any:
        with self.runtime_context():
            return self.model.layers[1](self.x_test[:2])

    def runtime_context(self) -> Any:
        import tensorflow as tf

        return tf.device(self._device)

    def cuda_capability(self) -> tuple[int, int] | None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
        return tuple(capability) if capability else None

    def environment(self) -> dict[str, Any]:
        import keras
        import tensorflow as tf
        from precision_suite.measure.environment import cpu_info
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
            "loss_scaling": loss_scale_used(self.job),
            "optimizer_rules": self.options.optimizer_rules,
            "compiled_step": self.compiled_step,
            **self.fp8_environment(),
        }

    def teardown(self) -> None:
        import tensorflow as tf
        from tensorflow.python.framework import config as tf_config

        self.release("_step_graph", "_rows", "_last_row")
        saved = getattr(self, "_saved_globals", None)
        if saved is not None:
            tf.config.experimental.enable_tensor_float_32_execution(saved["tf32"])
            if saved["determinism"]:
                tf.config.experimental.enable_op_determinism()
            else:
                tf_config.disable_op_determinism()
            self._saved_globals = None
