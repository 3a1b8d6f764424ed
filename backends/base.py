"""The one interface every backend implements.

The suite owns the training loop, the timing and the telemetry; a backend only knows how to
do one framework's work. A backend module may import its framework at module level, but this
module and ``backends/__init__.py`` never do: ``import precision_suite.backends`` must work with no framework
installed.

The loop the suite runs (``suite/measure/loop.py``)::

    backend.setup(job, init_weights, data)
    for batch_indices in plan:               # one optimizer step each
        backend.train_step(batch_indices)    # no host-device sync in here
        ...                                  # every few steps: synchronize(), drain_telemetry()
    backend.evaluate()
    backend.teardown()
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from precision_suite.backends.policy import get_policy
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job


# The API family of the built-in backends of each runtime: the family of a backend (or a record)
# that names only a ``framework`` (its runtime), as everything did before the two were apart.
FAMILY_OF_RUNTIME: dict[str, str] = {"torch": "torch", "tensorflow": "keras", "jax": "keras"}


def family_of(runtime: str) -> str:
    """The API family of ``runtime``'s built-in backends (``FAMILY_OF_RUNTIME``); an unknown
    runtime is its own family."""
    return FAMILY_OF_RUNTIME.get(runtime, runtime)


def implementation_label(family: str, runtime: str) -> str:
    """How a (family, runtime) pair is named in ids and headings: the runtime alone where the
    family is the runtime's usual one ("torch", "tensorflow"), else "keras on torch"."""
    return runtime if family_of(runtime) == family else f"{family} on {runtime}"


# Rows per forward pass when evaluating, the same in every backend.
EVAL_BATCH = 1024


def dtype_summary(dtypes: set[str]) -> str | None:
    """One dtype name for what a block was seen to use, ``"mixed: a, b"`` when several were seen
    (a block claimed float32 then fails ``precision-active``), None when nothing was seen."""
    if not dtypes:
        return None
    return next(iter(dtypes)) if len(dtypes) == 1 else "mixed: " + ", ".join(sorted(dtypes))


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass
class Telemetry:
    """Per-step values since the last drain, one entry per optimizer step."""

    loss: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    loss_scale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class EvalResult:
    test_loss: float
    test_accuracy: float


@dataclass
class MemoryStats:
    """A peak and where it comes from: never an unlabelled number."""

    peak_memory_bytes: int | None
    memory_source: str
    # The framework-neutral accounting (precision_suite.measure.memory) by component: the CPU figure,
    # shown beside the allocator peak on a GPU.
    breakdown: dict[str, int] = field(default_factory=dict)
    # What the backend counted from its own tensors (a cross-check of the accounting).
    observed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockError:
    """One block's own error under a policy at one training step (``Backend.probe_blocks``): the
    block run under the policy on the input the fp32 run gave it, against the fp32 run's output
    (and, given the fp32 run's output gradient, its parameter gradients), as relative L2 errors;
    ``nonfinite`` counts inf/NaN values among those outputs and gradients."""

    name: str
    step: int
    activation_rel_error: float
    gradient_rel_error: float | None  # None: not measured (no parameters, or not by this backend)
    nonfinite: int


class NoOptions(BaseModel):
    """Options schema of a backend that takes none."""

    model_config = ConfigDict(extra="forbid")


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist here; the job is recorded ``unavailable``."""


def module_available(module: str, pip_name: str | None = None) -> Availability:
    """Availability of a framework, found without importing it."""
    if importlib.util.find_spec(module) is None:
        return Availability(False, f"{pip_name or module} is not installed")
    return Availability(True)


class Backend(ABC):
    """One framework's way of training the suite's models under a precision policy.

    Class attributes:
        name: registry name, e.g. ``"torch-amp"``.
        family: the API family the user compares (``"torch"``, ``"keras"``): a policy's fp32
            baseline, the cross-framework check (one family against another), the tools
            ``advise`` names and the report's colours are per family.
        runtime: what executes it (``"torch"``, ``"tensorflow"``, ``"jax"``; a module name that
            is also its pip extra): the runner keeps one worker process per runtime, the speed
            phase times a runtime's policies in one process, and ``is_available`` looks for it.
        policies: the policies this backend implements (names declared with
            ``precision_suite.backends.policy.register_policy``).
        Options: a pydantic model (``extra="forbid"``) of the backend's own options, validated
            with the config before anything runs.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    runtime: ClassVar[str]
    policies: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A backend written before family and runtime were apart set ``framework`` (its runtime).
        legacy = cls.__dict__.get("framework")
        if legacy is not None and "runtime" not in cls.__dict__:
            cls.runtime = legacy
            if "family" not in cls.__dict__:
                cls.family = family_of(legacy)
        if hasattr(cls, "runtime"):
            cls.framework = cls.runtime  # the old name of the runtime, for code written before the split

    @classmethod
    def data_parallel_class(cls, job: Job) -> type[Backend] | None:
        """The class that runs ``job`` over ``job.world_size`` replicas, or None when this backend
        has no data-parallel variant (its N-replica jobs are then recorded unavailable). That
        class's ``process_per_replica`` says whether the launcher starts one process per replica
        (torch.distributed) or one for all (``tf.distribute.MirroredStrategy``). Must not import
        the framework."""
        return None

    # On a data-parallel class: one process per replica, launched like torchrun (True), or one
    # process holding every replica (False).
    process_per_replica: ClassVar[bool] = True

    @staticmethod
    @abstractmethod
    def is_available() -> Availability:
        """Whether the framework can be used here, and why not. Must not import the framework
        (use ``importlib.util.find_spec``); it runs in the parent process of every run."""

    @classmethod
    def resolve_device(cls, requested: str) -> str:
        """The device a job asking for ``requested`` ("auto", "cpu" or "cuda") runs on: "auto"
        means CUDA when the framework sees a GPU (``sees_cuda``). Runs in the worker. Raises
        ``DeviceUnavailable`` when "cuda" is asked for and there is none."""
        if requested == "cpu":
            return "cpu"
        if cls.sees_cuda():
            return "cuda"
        if requested == "cuda":
            raise DeviceUnavailable(f"device cuda: {cls.runtime} sees no CUDA device")
        return "cpu"

    @classmethod
    def sees_cuda(cls) -> bool:
        """Whether the framework sees a CUDA device. Runs in the worker, so it may import the
        framework. Default: no (a CPU-only backend)."""
        return False

    @classmethod
    def config_problem(cls, job: Job) -> str | None:
        """A reason this backend cannot run ``job`` as configured (e.g. a loss-scale setting the
        framework cannot express), checked before any job starts; None if it can. Must not
        import the framework."""
        return None

    @classmethod
    def unsupported_reason(cls, policy: str, device: str) -> str | None:
        """Why ``policy`` cannot run on ``device`` ("cpu" or "cuda"), or None if it can.
        Checked without importing the framework; the job is then recorded ``unavailable``."""
        return get_policy(policy).unsupported_reason(device)

    @abstractmethod
    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        """Build the model from ``job.model`` with exactly ``init_weights`` (see
        ``precision_suite.models.init_weights`` for names and layouts), put the training and test data on
        the device once, and build the optimizer, lr schedule and loss scaler from
        ``job.train`` and ``job.loss_scale``. Seeds every framework RNG from ``job.seed``."""

    def prepare_batches(self, rows: np.ndarray) -> Sequence[Any]:
        """Convert a block of the batch plan (one row of indices per step, shape (steps, batch))
        into what ``train_step`` takes, in one go, before the timed steps: e.g. upload all the
        indices to the device at once, as a hand-written loop would, instead of one small copy
        per step. The loop calls it once per epoch, outside the timed windows. Default: the
        NumPy rows unchanged."""
        return list(rows)

    @abstractmethod
    def train_step(self, batch_indices: Any) -> None:
        """One optimizer step on the training rows ``batch_indices`` (gathered on the device):
        an element of ``prepare_batches``'s result, or a NumPy index array.

        With ``job.train.grad_accumulation > 1`` the rows are split into that many micro-batches
        and the optimizer (and loss scaler) steps once. Must not force a host-device sync: the
        loss, loss scale and skipped flag stay on the device until ``drain_telemetry``. A step
        skipped for overflow leaves parameters, optimizer state and lr schedule untouched."""

    @abstractmethod
    def drain_telemetry(self) -> Telemetry:
        """Per-step loss (fp32 value of the unscaled loss), loss scale used for the step (1.0
        when not scaling) and skipped flag for every step since the last call, read in bulk."""

    @abstractmethod
    def evaluate(self) -> EvalResult:
        """Mean test loss and accuracy (0..1) over the whole test set, in the policy's compute
        precision, without changing any training state (BatchNorm in inference mode)."""

    def synchronize(self) -> None:
        """Block until all queued device work is done; timing windows close with this."""

    def activate(self) -> None:
        """Make this backend's global framework settings (TF32, threads, determinism) current
        again. The speed phase keeps several backends of one framework alive in one process and
        times them in rotation; it calls this before each one's timed window. Default: nothing."""

    def matmul_tflops(self, dtype: str, seconds: float = 0.2) -> float | None:
        """TFLOP/s this framework sustains on one large square matrix product in ``dtype`` on
        the job's device, measured for about ``seconds`` (after ``setup``): the rate the model's
        achieved FLOP/s is held against in the "why no speedup" diagnostics. None: not measured."""
        return None

    def reset_memory_stats(self) -> None:
        """Reset the allocator's peak counters before the measured part of the job."""

    def memory_stats(self) -> MemoryStats:
        """Peak memory of the job and its source: on GPU the allocator peak; on CPU the
        framework-neutral accounting (``precision_suite.measure.memory.account_job``: weights, gradients,
        optimizer state, master copies, saved activations), labelled as such. ``breakdown`` is
        that accounting on every device."""
        return MemoryStats(None, "not measured")

    @abstractmethod
    def observed_precision(self) -> dict[str, Any]:
        """What actually ran, observed rather than configured: ``compute_dtype`` (dtype of a
        real matmul output under the policy), ``param_dtype`` (dtype of the weights the forward
        pass reads), ``master_dtype`` (dtype of the weights the optimizer updates, or None) and
        ``loss_scaling`` (``"dynamic"``, ``"static"`` or ``"none"``). Dtype names are numpy
        style: ``float32``, ``float16``, ``bfloat16``."""

    def environment(self) -> dict[str, Any]:
        """Framework versions, device name, and the framework settings that affect speed or
        numerics (TF32, compile/XLA, thread counts)."""
        return {}

    def block_names(self) -> list[str]:
        """After ``setup``: the blocks of the job's model that ``keep_fp32`` may name and
        ``precision-suite bisect`` ranks, in forward order. Built-in models: the spec's
        (``precision_suite.models.block_names``). Default: none (bisect cannot search)."""
        return []

    def probe_blocks(self, reference: Backend, names: list[str], steps: Sequence[np.ndarray]) -> list[BlockError]:
        """After ``setup`` of this job and of ``reference`` (the same model and weights in fp32,
        same framework): for each training step's rows in ``steps``, each named block's own error
        under this backend's policy (``BlockError``), then one fp32 step of ``reference`` and its
        weights copied here, so every step probes the blocks on the weights fp32 training reaches.
        Slow (not for the timed loop); ``bisect`` ranks blocks with it. Default: nothing measured
        (bisect then ranks in forward order)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically in a fresh process: model, optimizer,
        master weights, loss-scaler state, step counters. Values are numpy arrays or plain
        Python so the suite can save them without importing the framework."""
        raise NotImplementedError(f"{self.name} does not support checkpoints")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (after ``setup`` of the same job)."""
        raise NotImplementedError(f"{self.name} does not support checkpoints")

    def teardown(self) -> None:
        """Free device memory and undo any global framework state the job set."""
