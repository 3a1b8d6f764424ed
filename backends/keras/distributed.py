"""Data-parallel tf-keras: ``tf.distribute.MirroredStrategy`` over N devices in one process
(N logical CPU devices on a CPU, N GPUs on a GPU node), running the backend's own compiled step
under ``strategy.run`` (not ``model.fit``). ``precision_suite.execution.data_parallel`` launches the process.

The job this class receives has the *global* batch; replica r trains on its slice of every
step's rows (``precision_suite.execution.data_parallel.replica_slice``), with its loss divided by N because
Keras *sums* the replicas' gradients when it applies them.

Replica-consistent loss scaling. Keras' ``LossScaleOptimizer`` decides "skip this step" from
replica 0's *local* gradients, before they are all-reduced: an overflow on another replica is
missed, the all-reduced inf is applied, and every weight becomes NaN (``tests/backends/keras/
test_distributed.py`` reproduces it). Here every replica all-reduces an "any replica non-finite"
flag and, when it is set, poisons its own gradients with NaN before ``apply``: every replica's
local check then sees the overflow, and all skip together.

Each replica reports, per step, whether its copy of the optimizer's step counter advanced (what
it really applied), and at the end its copy of the loss scale and a digest of its copies of the
trainable variables: the ``replica-consistency`` verdict compares them.

BatchNorm: each replica normalises its slice with that slice's statistics, and the running
statistics are Keras variables without aggregation, which each replica writes with its own
slice's statistics (the copies differ: not part of the digest); evaluation reads replica 0's
copy. The same per-replica statistics as the torch backends' (``distributed.batchnorm``).

Not supported data-parallel (a config error, not a silent difference): a static loss scale (its
skip is a ``tf.cond`` around ``apply``, and ``apply`` cannot run inside a replica-context cond)
and ``grad_clip_norm`` (Keras clips each replica's local gradients before the all-reduce).
``MultiWorkerTfKerasBackend`` (``distributed.tf_strategy: multi-worker``) runs the same step
under ``MultiWorkerMirroredStrategy``, one process per replica.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.backends.base import Telemetry
from precision_suite.backends.keras.tf_backend import TfKerasBackend, grads_all_finite

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job


def batchnorm_statistics(model: Any) -> str:
    """What the replicas' BatchNorm layers normalise with (``distributed.batchnorm``): each
    replica its own slice's statistics, unless every BatchNorm layer is Keras' synchronized one."""
    import keras
    from precision_suite.backends.keras.models import TorchStyleBatchNorm
    from precision_suite.results import BATCHNORM_NONE, BATCHNORM_PER_REPLICA

    norms = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, TorchStyleBatchNorm | keras.layers.BatchNormalization)
    ]
    if not norms:
        return BATCHNORM_NONE
    if all(getattr(layer, "synchronized", False) for layer in norms):
        return "synchronized (Keras BatchNormalization, synchronized=True)"
    return BATCHNORM_PER_REPLICA


class MirroredTfKerasBackend(TfKerasBackend):
    # Its step holds this job's strategy and injected faults; each such job has its own process.
    reuses_compiled_steps = False
    process_per_replica = False  # one process holds every replica

    @classmethod
    def init_process(cls, job: Job) -> None:
        """Split the CPU into N logical devices, before TensorFlow initialises its runtime."""
        if cls.resolve_device(job.device) == "cuda":
            return
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * job.world_size)

    @classmethod
    def shutdown_process(cls) -> None:
        """Nothing to tear down: one process holds every replica."""

    @classmethod
    def config_problem(cls, job: Job) -> str | None:
        problem = super().config_problem(job)
        if problem:
            return problem
        if job.train.grad_clip_norm is not None:
            return "train.grad_clip_norm cannot run data-parallel on tf-keras: Keras clips each replica's gradients"
        if job.loss_scaling_mode == "static":
            return "loss_scale.dynamic: false cannot run data-parallel on tf-keras; use a dynamic loss scale"
        return None

    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        import tensorflow as tf
        from precision_suite.execution.data_parallel import ProcessFaults, fault_steps

        self.world_size = job.world_size
        self.per_replica = job.train.batch_size // job.world_size
        self.strategy = self._make_strategy(tf, job)
        self.inf_replica_steps = {r: fault_steps(job, r, "inf_grad") for r in range(job.world_size)}
        # One process holds every replica: a crash or hang of any replica is the process's.
        self.process_faults = ProcessFaults.for_replicas(job, range(job.world_size))
        self.step_index = 0
        self.replica_rows: list[Any] = []
        super().setup(job, init_weights, data)

    # Index of this process's first replica; whether the step all-reduces the loss (when the
    # process holds only some replicas, its local rows cannot give the global mean).
    first_replica = 0
    all_reduce_loss = False
    strategy_name = "MirroredStrategy"

    def _make_strategy(self, tf: Any, job: Job) -> Any:
        kind = "GPU" if job.device == "cuda" else "CPU"
        devices = [d.name for d in tf.config.list_logical_devices(kind)][: job.world_size]
        if len(devices) < job.world_size:
            raise RuntimeError(
                f"{job.world_size} replicas need {job.world_size} {kind} devices; TensorFlow sees {len(devices)}"
            )
        return tf.distribute.MirroredStrategy(devices)

    def _placement(self, tf: Any) -> Any:
        return self.strategy.scope()

    def _build_functions(self, tf: Any) -> None:
        model, optimizer, inner = self.model, self.optimizer, self.inner_optimizer
        strategy = self.strategy
        tvars = model.trainable_variables
        n_micro, mode = self._n_micro, self.loss_mode
        replicas, per_replica = self.world_size, self.per_replica
        injected = sorted({r for r, steps in self.inf_replica_steps.items() if steps})
        all_reduce_loss = self.all_reduce_loss

        def replica_step(rows: Any, inject: Any) -> Any:
            ctx = tf.distribute.get_replica_context()
            replica = ctx.replica_id_in_sync_group
            mine = rows[replica * per_replica : (replica + 1) * per_replica]
            scale = tf.identity(optimizer.dynamic_scale.value) if mode == "dynamic" else tf.constant(1.0)
            grads, loss_sum = self._scaled_gradients(tf, mine, per_replica, replicas)
            if injected:
                hit = tf.logical_and(inject, tf.reduce_any(tf.equal(replica, injected)))
                factor = tf.where(hit, float("inf"), 1.0)
                grads = [grads[0] * tf.cast(factor, grads[0].dtype), *grads[1:]]
            if mode == "dynamic":
                local_bad = tf.cast(tf.logical_not(grads_all_finite(tf, grads)), tf.float32)
                any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad)
                poison = tf.where(any_bad > 0, float("nan"), 0.0)
                grads = [g + tf.cast(poison, g.dtype) for g in grads]
            before = tf.identity(inner.iterations)
            with tf.control_dependencies([before]):
                optimizer.apply(grads, tvars)
            skipped = tf.equal(tf.identity(inner.iterations), before)
            loss = loss_sum / n_micro
            if all_reduce_loss:
                loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss) / replicas
            return tf.stack([loss, scale, tf.cast(skipped, tf.float32)])

        def step(rows: Any, inject: Any) -> Any:
            per_replica_rows = strategy.run(replica_step, args=(rows, inject))
            return tf.stack(strategy.experimental_local_results(per_replica_rows))

        batch = replicas * per_replica
        self._step_fn = tf.function(
            step,
            jit_compile=self.options.jit_compile,
            input_signature=[tf.TensorSpec([batch], tf.int32), tf.TensorSpec([], tf.bool)],
        )
        self._step_graph = self._step_fn.get_concrete_function()
        self._eval_fn = self._eval_function(tf)
        self._inject = {flag: tf.constant(flag) for flag in (False, True)}

    def train_step(self, batch_indices: Any) -> None:
        self.process_faults.before_step(self.step_index)
        if isinstance(batch_indices, np.ndarray):
            batch_indices = self.prepare_batches(batch_indices[None])[0]
        inject = any(self.step_index in steps for steps in self.inf_replica_steps.values())
        self._last_row = self._step_graph(batch_indices, self._inject[inject])
        self._rows.append(self._last_row)
        self.step_index += 1

    def drain_telemetry(self) -> Telemetry:
        import tensorflow as tf

        if not self._rows:
            return Telemetry()
        rows = tf.stack(self._rows).numpy().astype(np.float64)  # (steps, replicas, 3)
        self._rows = []
        self.replica_rows.append(rows)
        # Every replica's slice has the same size: the mean of their means is the global mean.
        return Telemetry(loss=rows[:, :, 0].mean(axis=1), loss_scale=rows[:, 0, 1], skipped=rows[:, 0, 2] > 0)

    def replica_report(self) -> dict[str, Any]:
        strategy = self.strategy
        history = np.concatenate(self.replica_rows) if self.replica_rows else np.zeros((0, self.world_size, 3))
        # A MultiWorkerMirroredStrategy process reports its own replica; the launcher joins them.
        local = len(strategy.extended.worker_devices)
        digests = [hashlib.sha256() for _ in range(local)]
        # A Keras variable's ``.value`` is the tf.distribute variable holding one copy per replica.
        # The parameters only: each replica keeps its own BatchNorm running statistics.
        for variable in self.model.trainable_weights:
            for replica, value in enumerate(strategy.experimental_local_results(variable.value)):
                digests[replica].update(np.ascontiguousarray(value.numpy()).tobytes())
        if self.loss_mode == "dynamic":
            scales = [float(v.numpy()) for v in strategy.experimental_local_results(self.optimizer.dynamic_scale.value)]
        else:
            scales = [1.0] * local
        return {
            "launcher": "one process" if local == self.world_size else "one process per worker (TF_CONFIG)",
            "strategy": f"tf.distribute.{self.strategy_name} over {', '.join(strategy.extended.worker_devices)}",
            "batchnorm": batchnorm_statistics(self.model),
            "replicas": [
                {
                    "rank": self.first_replica + replica,
                    "skipped_steps": [int(i) for i in np.flatnonzero(history[:, replica, 2] > 0)],
                    "loss_scale_final": scales[replica],
                    "params_sha256": digests[replica].hexdigest(),
                }
                for replica in range(local)
            ],
        }

    def teardown(self) -> None:
        for attr in ("strategy", "_inject"):
            if hasattr(self, attr):
                delattr(self, attr)
        super().teardown()


class MultiWorkerTfKerasBackend(MirroredTfKerasBackend):
    """``tf.distribute.MultiWorkerMirroredStrategy``: one process per replica, the cluster in
    ``TF_CONFIG`` (127.0.0.1 ports chosen by the launcher), ring all-reduce over gRPC. The same
    replica step as ``MirroredTfKerasBackend``: without the all-reduced overflow flag, one worker
    would skip while another applies and waits on it (the stock Keras hang)."""

    all_reduce_loss = True
    strategy_name = "MultiWorkerMirroredStrategy"
    process_per_replica = True

    @classmethod
    def init_process(cls, job: Job) -> None:
        """Nothing before setup: the cluster comes from TF_CONFIG, one device per worker."""

    def _make_strategy(self, tf: Any, job: Job) -> Any:
        ring = tf.distribute.experimental.CommunicationImplementation.RING
        options = tf.distribute.experimental.CommunicationOptions(implementation=ring)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        if strategy.num_replicas_in_sync != job.world_size:
            raise RuntimeError(
                f"TF_CONFIG gives {strategy.num_replicas_in_sync} replicas, the job asks for {job.world_size}"
            )
        self.first_replica = int(strategy.cluster_resolver.task_id)
        return strategy
