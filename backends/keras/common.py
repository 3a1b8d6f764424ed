"""What every Keras 3 runtime backend shares (tf-keras, keras-jax): the options schema, the policy
table, the loss-scale mapping and its checks, the optimizer (with its ``LossScaleOptimizer``), the loss,
the observed precision, CPU memory accounting, checkpoints, and the compiled steps a worker's
later jobs reuse (``COMPILED_STEPS``).

Importing this module imports no framework: ``is_available`` and ``config_problem`` use it in
the parent process. Keras itself is imported through ``import_keras``, which picks the Keras
backend (the runtime) before the first ``import keras``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import warnings
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from precision_suite.backends.base import EVAL_BATCH, Availability, Backend, MemoryStats
from precision_suite.backends.fp8 import fp8_settings
from precision_suite.backends.policy import get_policy
from precision_suite.measure.memory import PrecisionLayout, account_job
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job

__all__ = ["EVAL_BATCH"]  # re-exported for the Keras runtimes

# Keras' LossScaleOptimizer hard-codes these.
KERAS_GROWTH_FACTOR = 2.0
KERAS_BACKOFF_FACTOR = 0.5
# Modules of this package that import keras at module level: rebound when the Keras runtime is
# switched in-process (see ``import_keras``).
_KERAS_MODULES = (
    "precision_suite.backends.keras.models",
    "precision_suite.backends.keras.optim",
    "precision_suite.backends.keras.keep_fp32",
)


# Whose optimizer update rules a Keras backend runs (``OPTIMIZER_RULES`` in optim.py builds each):
# torch's, so fp32 curves match PyTorch step for step, or stock Keras', what ``model.fit`` runs.
OptimizerRules = Literal["torch", "keras"]


class KerasOptions(BaseModel):
    """``backends.options.<Keras backend>``: the options of every Keras runtime (tf-keras,
    keras-jax), declared once, so both take the same keys with the same meaning. A runtime's
    subclass may change a default, never add or drop a key (``KerasJaxOptions``)."""

    model_config = ConfigDict(extra="forbid")

    # XLA for the train and eval steps, Keras' ``compile(jit_compile=...)``. Explicit, never Keras'
    # "auto", which on TensorFlow turns it on silently on a GPU. Off, TensorFlow runs the steps as
    # graphs and JAX op by op (as Keras on JAX does with jit_compile=False).
    jit_compile: bool = False
    # Deterministic kernels: TensorFlow's enable_op_determinism; on JAX, XLA's
    # xla_gpu_deterministic_ops (a GPU compiler option, applied on a GPU only). None follows
    # runner.deterministic.
    deterministic: bool | None = None
    # Whose optimizer update rules: torch's (fp32 curves match PyTorch; backends/keras/optim.py)
    # or stock Keras' (what model.fit runs; the cross-framework verdict is then n/a).
    optimizer_rules: OptimizerRules = "torch"

    def deterministic_for(self, job: Job) -> bool:
        """Whether ``job`` runs deterministic kernels: ``deterministic``, else ``runner.deterministic``."""
        return job.runner.deterministic if self.deterministic is None else self.deterministic


# The policies the Keras backends implement; each one's DTypePolicy name is ``Policy.keras_name``
# (fp8-mixed: mixed_bfloat16, plus float8 on the eligible Dense layers, backends/keras/fp8.py).
KERAS_POLICIES: tuple[str, ...] = ("fp32", "tf32", "fp16-mixed", "bf16-mixed", "fp8-mixed")


def keras_dtype_policy(policy: str) -> str:
    """The Keras ``DTypePolicy`` name of ``policy``."""
    name = get_policy(policy).keras_name
    if name is None:
        raise ValueError(f'policy "{policy}" has no Keras DTypePolicy')
    return name


def keras_availability(backend_name: str, runtime: str) -> Availability:
    """The ``runtime`` (a module name that is also its pip name) and Keras 3, found
    without importing either."""
    for module in (runtime, "keras"):
        if importlib.util.find_spec(module) is None:
            return Availability(False, f"{module} is not installed")
    version = importlib.metadata.version("keras")
    if int(version.split(".")[0]) < 3:
        return Availability(False, f"{backend_name} needs Keras 3, found keras {version}")
    return Availability(True)


class _NoTensorFlow:
    available = False


def set_random_seed(keras: Any, seed: int, tensorflow: bool | None = None) -> None:
    """``keras.utils.set_random_seed(seed)``: Python's, NumPy's and Keras' own seeds, and
    TensorFlow's global seed when ``tensorflow`` (default: when TensorFlow is Keras' backend).
    Keras seeds TensorFlow wherever it is installed: on JAX that imports it (4-5 s in every worker
    that starts, plus its thread pools) for random ops the process never runs; on TensorFlow its
    setter also clears the kernel cache that reused compiled steps need."""
    if tensorflow is None:
        tensorflow = keras.backend.backend() == "tensorflow"
    if tensorflow:
        keras.utils.set_random_seed(seed)
        return
    from unittest import mock

    try:
        from keras.src.utils import rng_utils

        patch = mock.patch.object(rng_utils, "tf", _NoTensorFlow())
        patch.start()
    except (ImportError, AttributeError):  # another Keras layout: its own function, as it is
        keras.utils.set_random_seed(seed)
        return
    try:
        keras.utils.set_random_seed(seed)
    finally:
        patch.stop()


def import_keras(runtime: str) -> Any:
    """``keras`` on the Keras backend ``runtime`` ("tensorflow", "jax").

    Keras reads its backend once, at import, from KERAS_BACKEND (or ~/.keras/keras.json), so it
    is set here before the first import: a worker process runs one framework's jobs only. A
    process that already loaded Keras on another runtime (a test session running every
    backend) is switched with ``keras.config.set_backend``, which re-imports Keras; this
    package's modules that hold ``keras`` are then re-imported too. Keras objects made before the
    switch are unusable afterwards (each job builds its own in ``setup``)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = runtime
    import keras

    if keras.backend.backend() == runtime:
        return keras
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*set_backend.*", category=UserWarning)
        keras.config.set_backend(runtime)
    import keras

    for name in _KERAS_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    COMPILED_STEPS.clear()  # built with the Keras that was just replaced
    if keras.backend.backend() != runtime:
        raise RuntimeError(f'Keras could not be switched to its "{runtime}" backend (KERAS_BACKEND)')
    return keras


# ------------------------------------------------------------------ compiled steps across jobs
# A worker runs many jobs that differ only in what their compiled functions read as values: the
# seed (initial weights, batch order, dropout state), the one-ulp nudge of a noise-floor run, where
# it stops. Tracing and compiling the train step and the evaluation is most of a small CPU job's
# time, so the next job of the same structure in the worker reuses them (docs/architecture.md,
# "Compiled steps reused across jobs (Keras runtimes)"). PRECISION_SUITE_KERAS_REUSE=0 turns it off.
REUSE_ENV = "PRECISION_SUITE_KERAS_REUSE"
# What the cache may hold, the least recently returned entry dropped first. An entry holds its
# model, optimizer and compiled functions (tf-keras: also the data tensors its graph captured):
# for the default models and digits 1-4 MiB of RSS each (all 9 tf-keras structures of the default
# run: +29 MiB), so a worker keeps every structure until its noise-floor runs, which come last.
# The byte budget (variables and captured data) keeps a large data set from being held per entry.
REUSE_MAX_ENTRIES = 16
REUSE_MAX_BYTES = 512 * 2**20
# Job fields that only choose values or bookkeeping, never the structure of a compiled step. Every
# other field is part of the key, whether or not it shapes the step today.
STEP_NEUTRAL_JOB_FIELDS = ("job_id", "seed", "perturb_ulp", "stop_after_steps", "config_hash", "seed_looks", "timed")
# What the environment's "compiled_step" says.
COMPILED_STEP_TRACED = "traced"
COMPILED_STEP_REUSED = "reused from an earlier job in this worker"


@dataclass
class CompiledFunctions:
    """What one job's setup compiled, for a later job of the same structure: the model and
    optimizer the functions were traced with, and the runtime's own functions (and tensors)."""

    model: Any
    optimizer: Any
    inner_optimizer: Any
    runtime: dict[str, Any]
    nbytes: int = 0  # what its variables and captured tensors hold


class CompiledStepCache:
    """Compiled functions by job structure, for the worker process's later jobs. A job takes its
    entry out while it runs and puts it back at teardown, so no two live jobs (the speed phase
    sets several up at once) ever share a model. An entry serves only jobs on the very
    ``Dataset`` object it was built with (the worker's ``cached_dataset``): a graph may hold the
    data itself."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Dataset, CompiledFunctions]] = OrderedDict()

    def take(self, key: str | None, data: Dataset) -> CompiledFunctions | None:
        if key is None or key not in self._entries or self._entries[key][0] is not data:
            return None
        return self._entries.pop(key)[1]

    def put(self, key: str, data: Dataset, functions: CompiledFunctions) -> None:
        self._entries[key] = (data, functions)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)  # the least recently returned (last: this one)

    @property
    def nbytes(self) -> int:
        return sum(functions.nbytes for _, functions in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


COMPILED_STEPS = CompiledStepCache(REUSE_MAX_ENTRIES, REUSE_MAX_BYTES)


def reuse_enabled() -> bool:
    return os.environ.get(REUSE_ENV, "1").strip() != "0"


def compiled_step_key(job: Job, data: Dataset) -> str:
    """Everything a job's compiled functions may depend on: the job but its
    ``STEP_NEUTRAL_JOB_FIELDS``, and the data's shapes and dtypes."""
    described = {k: v for k, v in job.to_dict().items() if k not in STEP_NEUTRAL_JOB_FIELDS}
    arrays = (data.x_train, data.y_train, data.x_test, data.y_test)
    shapes = [[list(a.shape), str(a.dtype)] for a in arrays]
    return json.dumps([described, shapes, data.name, data.num_classes], sort_keys=True, default=str)


def same_variable_layout(variables: Any, others: Any) -> bool:
    """Whether two lists of Keras variables pair up one to one in order, shape and dtype."""
    variables, others = list(variables), list(others)
    return len(variables) == len(others) and all(
        tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype for a, b in zip(variables, others, strict=True)
    )


def keras_config_problem(backend_name: str, job: Job) -> str | None:
    """Why a Keras backend cannot run ``job`` as configured (one line), or None."""
    if job.policy not in KERAS_POLICIES:
        return f'backend {backend_name} has no policy "{job.policy}"; it has: {", ".join(KERAS_POLICIES)}'
    if fp8_settings(get_policy(job.policy)) is not None and job.train.grad_accumulation > 1:
        from precision_suite.backends.keras.fp8 import GRAD_ACCUMULATION_PROBLEM

        return GRAD_ACCUMULATION_PROBLEM.format(backend=backend_name)
    ls = job.loss_scale
    if job.loss_scaling_mode == "dynamic":
        for key, value, fixed in (
            ("growth_factor", ls.growth_factor, KERAS_GROWTH_FACTOR),
            ("backoff_factor", ls.backoff_factor, KERAS_BACKOFF_FACTOR),
        ):
            if value != fixed:
                return (
                    f"loss_scale.{key}={value:g} cannot run on {backend_name}: Keras' "
                    f"LossScaleOptimizer always grows the scale by {KERAS_GROWTH_FACTOR:g} "
                    f"and backs off by {KERAS_BACKOFF_FACTOR:g}; use {key}: {fixed:g} or "
                    "dynamic: false"
                )
    return None


def loss_scale_used(job: Job) -> dict[str, Any]:
    """The loss scaling a Keras backend applies for ``job``, as recorded."""
    ls = job.loss_scale
    mode = job.loss_scaling_mode
    if mode == "dynamic":
        return {
            "mode": "dynamic",
            "via": "keras.optimizers.LossScaleOptimizer",
            "initial_scale": float(ls.init_scale),
            "dynamic_growth_steps": int(ls.growth_interval),
            "growth_factor": KERAS_GROWTH_FACTOR,
            "backoff_factor": KERAS_BACKOFF_FACTOR,
        }
    if mode == "static":
        return {
            "mode": "static",
            "via": "optimizer.loss_scale_factor",
            "loss_scale_factor": float(ls.init_scale),
            "skip_nonfinite": True,
        }
    return {"mode": "none"}


def build_keras_optimizer(keras: Any, job: Job, data: Dataset, rules: OptimizerRules = "torch") -> tuple[Any, Any]:
    """(the optimizer a step applies, the inner optimizer that updates the weights) for ``job``:

    * dynamic: ``LossScaleOptimizer(initial_scale=init_scale, dynamic_growth_steps=growth_interval)``.
      Its skip/grow/backoff rule is GradScaler's: a non-finite gradient halves the scale and
      resets the counter without calling the inner optimizer (so ``iterations``, which indexes
      the lr schedule, counts applied steps only); the ``growth_interval``-th finite one in a row
      doubles it.
    * static: the inner optimizer's ``loss_scale_factor``. Keras would then apply a non-finite
      gradient; GradScaler skips it, so the backend's step must skip it too.
    * none: the inner optimizer alone.

    ``rules``: whose update rules the inner optimizer follows, torch's or stock Keras'
    (``backends/keras/optim.py``, ``OPTIMIZER_RULES``).
    """
    from precision_suite.backends.keras.optim import OPTIMIZER_RULES
    from precision_suite.data import plan_steps

    train = job.train
    total_steps = plan_steps(len(data.y_train), train.batch_size, train.epochs, train.steps)
    inner = OPTIMIZER_RULES[rules](train.optimizer, train.lr_schedule, total_steps, train.grad_clip_norm)
    mode = job.loss_scaling_mode
    ls = job.loss_scale
    if mode == "dynamic":
        return keras.optimizers.LossScaleOptimizer(
            inner, initial_scale=ls.init_scale, dynamic_growth_steps=ls.growth_interval
        ), inner
    if mode == "static":
        inner.loss_scale_factor = ls.init_scale
    return inner, inner


def cross_entropy(logits: Any, labels: Any, num_classes: int) -> Any:
    """torch's ``cross_entropy`` (mean NLL of log_softmax) term for term, in float32, as
    log-softmax · one-hot rather than the sparse op (whose GPU gradient has no deterministic
    kernel on TensorFlow)."""
    from keras import ops

    logp = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    # Over the last axis: labels (N,) or one per position (N, T), the mean over every label.
    return -ops.mean(ops.sum(ops.one_hot(labels, num_classes) * logp, axis=-1))


def keras_observed_precision(model: Any, activation: Any, job: Job) -> dict[str, Any]:
    """The observed-precision record from the first layer's output ``activation`` on real rows."""
    from keras import backend

    first = model.layers[1]  # the first layer after the input: a dense or conv
    variable = first.kernel
    return {
        "compute_dtype": backend.standardize_dtype(activation.dtype),
        "param_dtype": str(variable.dtype),
        "master_dtype": str(variable.dtype),
        "loss_scaling": job.loss_scaling_mode,
        "layer_compute_dtype": first.compute_dtype,
        "layer_variable_dtype": first.variable_dtype,
        "head_compute_dtype": model.get_layer("head").compute_dtype,
        "loss_scale_config": loss_scale_used(job),
    }


# A custom model's CPU figure: its variables by size; no activations (no saved-tensor hook in Keras).
KERAS_MEASURED_CPU = (
    "measured (cpu): the model's variables, gradients (one per trainable variable) and optimizer "
    "state; activations not counted (Keras has no saved-tensor hook)"
)


class KerasBackend(Backend):
    """What every Keras runtime backend shares. A subclass sets ``name`` and ``runtime`` (the
    Keras backend it runs on: "tensorflow", "jax"), answers ``sees_cuda`` and does the
    runtime's own work; ``setup`` starts with ``start_setup`` and leaves the job's Keras model
    and optimizer in ``self.model`` / ``self.optimizer`` (their variables hold the training
    state whenever ``state_dict`` reads them)."""

    family = "keras"
    policies = KERAS_POLICIES
    Options: ClassVar[type[KerasOptions]] = KerasOptions
    runtime_name: ClassVar[str]  # for messages: "TensorFlow", "JAX"
    # Whether a later job may reuse this class's compiled functions (``COMPILED_STEPS``); not a
    # class whose step holds per-job state (the data-parallel step: its strategy, its faults).
    reuses_compiled_steps: ClassVar[bool] = True
    fp8: Any = None  # fp8-mixed: what quantize_float8 did (backends/keras/fp8.py)

    @classmethod
    def is_available(cls) -> Availability:  # type: ignore[override]
        return keras_availability(cls.name, cls.runtime)

    @classmethod
    def config_problem(cls, job: Job) -> str | None:
        return keras_config_problem(cls.name, job)

    def start_setup(self, job: Job) -> Any:
        """Reject what cannot run, load Keras on this runtime, note the job's policy and options
        (``deterministic`` resolved against ``runner.deterministic``); returns keras."""
        problem = self.config_problem(job)
        if problem:
            raise ValueError(problem)
        self.options = self.Options.model_validate(job.options)
        self.deterministic = self.options.deterministic_for(job)
        keras = import_keras(self.runtime)
        self.job = job
        self.policy = get_policy(job.policy)
        self.loss_mode = job.loss_scaling_mode
        return keras

    def find_compiled(self, data: Dataset) -> CompiledFunctions | None:
        """Take the functions an earlier job of this job's structure compiled in this worker out
        of ``COMPILED_STEPS``, or None; sets ``compiled_step`` to what happens otherwise. Shared
        only on a CPU: on a GPU a cached model would hold device memory and inflate a later job's
        allocator peak."""
        self.compiled_key: str | None = None
        self.compiled_data = data
        self.compiled: CompiledFunctions | None = None
        if not self.reuses_compiled_steps:
            self.compiled_step = f"{COMPILED_STEP_TRACED} (not shared by {type(self).__name__})"
        elif not reuse_enabled():
            self.compiled_step = f"{COMPILED_STEP_TRACED} (reuse off: {REUSE_ENV}=0)"
        elif self.job.device != "cpu":
            self.compiled_step = f"{COMPILED_STEP_TRACED} (reused on CPU only)"
        else:
            self.compiled_step = COMPILED_STEP_TRACED
            self.compiled_key = compiled_step_key(self.job, data)
        return COMPILED_STEPS.take(self.compiled_key, data)

    def adopt_compiled(self, cached: CompiledFunctions | None) -> bool:
        """Make ``cached``'s model and optimizer this job's: every variable takes the value this
        job's freshly built one holds (initial weights, dropout seed state, zero slots, step
        counters, loss scale), exactly what a fresh trace would start from, and the fresh objects
        are dropped. False, changing nothing, if there is no entry or its variables do not pair up
        with the fresh ones (the job then traces its own)."""
        if cached is None:
            return False
        pairs = ((cached.model.variables, self.model.variables), (cached.optimizer.variables, self.optimizer.variables))
        if not all(same_variable_layout(targets, sources) for targets, sources in pairs):
            return False
        for targets, sources in pairs:
            for target, source in zip(targets, sources, strict=True):
                target.assign(source.value)
        self.model, self.optimizer, self.inner_optimizer = cached.model, cached.optimizer, cached.inner_optimizer
        self.compiled, self.compiled_step = cached, COMPILED_STEP_REUSED
        return True

    def keep_compiled(self, runtime: dict[str, Any], captured_bytes: int = 0) -> None:
        """This job's compiled functions (``runtime``: the runtime's own, with the tensors they
        captured, ``captured_bytes`` of them), with the model and optimizer they were traced with:
        ``release`` offers them to later jobs."""
        nbytes = _nbytes(self.model.variables) + _nbytes(self.optimizer.variables) + captured_bytes
        self.compiled = CompiledFunctions(self.model, self.optimizer, self.inner_optimizer, runtime, nbytes)

    def build_model_and_optimizer(self, keras: Any, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        """The job's Keras model under its dtype policy, holding ``init_weights``, and its built
        optimizer (``build_keras_optimizer``, with the options' ``optimizer_rules``), on the
        runtime's current device."""
        from precision_suite.backends.keras.keep_fp32 import keep_layers_fp32
        from precision_suite.backends.keras.models import build_keras_model

        job = self.job
        policy = keras.DTypePolicy(keras_dtype_policy(job.policy))
        if job.model.kind == "custom":
            from precision_suite.backends.keras.custom import call_keras_factory, load_keras_weights

            self.model = call_keras_factory(keras, job.model, data.input_shape, data.num_classes, policy)
            load_keras_weights(self.model, init_weights, f"the Keras model {job.model.name}")
        else:
            self.model = build_keras_model(job.model, data.input_shape, data.num_classes, init_weights, policy)
        keep_layers_fp32(self.model, job.model.keep_fp32)
        self.fp8 = None
        if fp8_settings(self.policy) is not None:
            from precision_suite.backends.keras.fp8 import quantize_float8

            self.fp8 = quantize_float8(self.model, job.model.keep_fp32)
        self.optimizer, self.inner_optimizer = build_keras_optimizer(keras, job, data, self.options.optimizer_rules)
        self.optimizer.build(self.model.trainable_variables)
        self.data_shape = tuple(data.input_shape)
        self.num_classes = data.num_classes

    def memory_layout(self) -> PrecisionLayout:
        """The dtypes this backend really holds (Keras mixed policies keep fp32 variables and
        cast them per use: no master copy), for the accounting."""
        import keras

        variable = max(self.model.trainable_variables, key=lambda v: int(np.prod(v.shape)))
        param = np.dtype(variable.dtype).name
        compute = keras.DTypePolicy(keras_dtype_policy(self.job.policy)).compute_dtype
        return PrecisionLayout(param, compute, (param,), None, param)

    def memory_with_peak(self, peak: int | None, source: str) -> MemoryStats:
        """The shared accounting (``precision_suite.measure.memory``) beside what the variables really
        hold; the figure is the allocator's ``peak`` where the runtime has one (GPU), else the
        accounting (CPU)."""
        observed = keras_memory_breakdown(self.model, self.optimizer)
        # A custom model has no spec to count from: its own variables (Keras has no saved-tensor
        # hook, so the activations are not in this figure, and the label says so).
        custom = self.job.model.kind == "custom"
        if custom:
            breakdown = dict(observed)
        else:
            breakdown = account_job(self.job, self.data_shape, self.num_classes, self.memory_layout()).breakdown()
        if peak is None:
            cpu_source = KERAS_MEASURED_CPU if custom else "accounting (cpu)"
            return MemoryStats(sum(breakdown.values()), cpu_source, breakdown, observed)
        return MemoryStats(int(peak), source, breakdown, observed)

    def release(self, *runtime_attrs: str) -> None:
        """Offer the job's compiled functions to later jobs (``COMPILED_STEPS``), drop its model,
        optimizer, data and compiled functions (and ``runtime_attrs``), then Keras' global state
        unless the functions stay cached: the start of ``teardown``."""
        key, compiled = getattr(self, "compiled_key", None), getattr(self, "compiled", None)
        if key is not None and compiled is not None:
            COMPILED_STEPS.put(key, self.compiled_data, compiled)
        for attr in (
            "_step_fn",
            "_eval_fn",
            "model",
            "optimizer",
            "inner_optimizer",
            "x_train",
            "y_train",
            "x_test",
            "y_test",
            "compiled",
            "compiled_data",
            *runtime_attrs,
        ):
            if hasattr(self, attr):
                delattr(self, attr)
        # Clearing the session would also clear TensorFlow's kernel cache (the cached graphs would
        # be instantiated again on their next call) and collect all garbage (0.2-0.4 s a job).
        if "keras" in sys.modules and key is None:
            import keras

            keras.backend.clear_session()

    def observed_precision(self) -> dict[str, Any]:
        if self.job.model.kind == "custom":
            import keras
            from precision_suite.backends.keras.custom import custom_observed_precision

            rows = self.x_test[:2]
            observed = custom_observed_precision(keras, self.model, rows, self.job, loss_scale_used(self.job))
        else:
            observed = keras_observed_precision(self.model, self.first_layer_output(), self.job)
        names = self.job.model.keep_fp32
        if names:
            from precision_suite.backends.keras.keep_fp32 import matched_layers, observe_kept

            # The first layer may be kept: the policy's compute dtype is read from the first layer
            # that is not; each kept name reports its own dtypes. (The layers are looked up again:
            # a job that reused compiled steps trains the cached model.)
            kept = matched_layers(self.model, names)
            blocks, compute = observe_kept(self.model, kept, self.x_test[:2], self.runtime_context())
            observed.update(compute_dtype=compute, keep_fp32=blocks)
        if self.fp8 is not None:
            from precision_suite.backends.keras.fp8 import observed_fp8

            observed.update(observed_fp8(self.model))
        return observed

    def fp8_environment(self) -> dict[str, Any]:
        """``{"fp8": ...}`` for the environment of an fp8-mixed job (which Dense layers were quantised,
        which not and why, the scaling recipe, emulated or not); empty for other policies."""
        if self.fp8 is None:
            return {}
        from precision_suite.backends.keras.fp8 import emulation_reason

        capability = self.cuda_capability() if self.job.device == "cuda" else None
        return {"fp8": self.fp8.record(emulation_reason(self.job.device, self.options.jit_compile, capability))}

    def cuda_capability(self) -> tuple[int, int] | None:
        """The job's GPU's compute capability, where the runtime tells it."""
        return None

    def first_layer_output(self) -> Any:
        """The first layer's output on two test rows, computed as a training step would."""
        raise NotImplementedError

    def block_names(self) -> list[str]:
        from precision_suite.backends.keras.keep_fp32 import candidate_layers
        from precision_suite.models import BUILT_IN_KINDS, block_names

        kind = self.job.model.kind
        return block_names(self.job.model) if kind in BUILT_IN_KINDS else candidate_layers(self.model)

    def probe_blocks(self, reference: Backend, names: list[str], steps: Any) -> list[Any]:
        from precision_suite.backends.keras.keep_fp32 import probe_layers

        return probe_layers(self, reference, names, list(steps))

    def runtime_context(self) -> AbstractContextManager:
        """What a computation outside the compiled step runs in to be computed as the step would
        (a device scope, a matmul precision). Default: nothing."""
        return nullcontext()

    def state_dict(self) -> dict[str, Any]:
        return keras_state_dict(self.model, self.optimizer, self.job)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_keras_state(self.model, self.optimizer, self.job, state)


def _nbytes(variables: Any) -> int:
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def keras_memory_breakdown(model: Any, optimizer: Any) -> dict[str, int]:
    """Weights, gradients, optimizer state and master copies of a Keras model, by variable size."""
    return {
        "weights": _nbytes(model.variables),
        "gradients": _nbytes(model.trainable_variables),
        "optimizer_state": _nbytes(optimizer.variables),
        # Keras' mixed policies keep float32 variables and cast per use: no master copy.
        "master_weights": 0,
    }


def _to_numpy(variable: Any) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(variable.value))


def keras_state_dict(model: Any, optimizer: Any, job: Job) -> dict[str, Any]:
    """Model, optimizer, step counter and loss-scale state of a Keras job, as NumPy / Python."""
    from precision_suite.backends.keras.models import keras_model_weights, keras_variable_map

    canonical = {id(v) for v in keras_variable_map(model).values()}
    state: dict[str, Any] = {
        "weights": keras_model_weights(model),
        # Anything else the model holds (dropout seed-generator states).
        "model_extra": [_to_numpy(v) for v in model.variables if id(v) not in canonical],
        "optimizer": [_to_numpy(v) for v in optimizer.variables],
        "iterations": int(_to_numpy(optimizer.iterations)),
        "loss_scale": None,
    }
    if job.loss_scaling_mode == "dynamic":
        state["loss_scale"] = {
            "scale": float(_to_numpy(optimizer.dynamic_scale)),
            "growth_tracker": int(_to_numpy(optimizer.step_counter)),
        }
    return state


def load_keras_state(model: Any, optimizer: Any, job: Job, state: dict[str, Any]) -> None:
    """Assign what ``keras_state_dict`` returned to the model's and optimizer's variables."""
    from precision_suite.backends.keras.models import keras_variable_map, load_keras_weights

    load_keras_weights(model, state["weights"])
    canonical = {id(v) for v in keras_variable_map(model).values()}
    extra = [v for v in model.variables if id(v) not in canonical]
    for target, values, what in (
        (extra, state["model_extra"], "model"),
        (list(optimizer.variables), state["optimizer"], "optimizer"),
    ):
        if len(target) != len(values):
            raise ValueError(
                f"checkpoint has {len(values)} {what} variables, this job has {len(target)}: "
                "it was saved from a different job configuration"
            )
        for var, value in zip(target, values, strict=True):
            var.assign(value)
    # The readable copy of the loss-scale state wins over the raw optimizer variables.
    if job.loss_scaling_mode == "dynamic" and state.get("loss_scale"):
        optimizer.dynamic_scale.assign(state["loss_scale"]["scale"])
        optimizer.step_counter.assign(state["loss_scale"]["growth_tracker"])
