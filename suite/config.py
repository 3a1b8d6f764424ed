"""YAML → validated, typed configuration.

YAML is only a loader: everything becomes pydantic models (``extra="forbid"``) before any job
runs. User errors raise ``ConfigError`` with one line naming the file, the key path, what was
expected and what was given.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from precision_suite.errors import UserError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

PositiveInt = Annotated[int, Field(gt=0, strict=True)]
NonNegInt = Annotated[int, Field(ge=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ConfigError(UserError, ValueError):
    """A configuration the user wrote that cannot run; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- models
class _ModelBase(_Strict):
    # Blocks (layer names; module qualified names for a torch model) that stay float32 under a half
    # policy: the answer of `precision-suite bisect`. Left out of the dump when empty, so a model
    # that keeps nothing has the same resolved config (and hash) as before the key existed.
    keep_fp32: list[str] = Field(default_factory=list, exclude_if=lambda names: not names)

    @field_validator("keep_fp32")
    @classmethod
    def _keep_fp32(cls, names: list[str]) -> list[str]:
        if any(not name.strip() for name in names):
            raise ValueError("expected block names, got an empty one")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate names in {names}")
        return names


class MlpConfig(_ModelBase):
    kind: Literal["mlp"] = "mlp"
    name: str = "mlp"
    hidden: list[PositiveInt] = [128, 64]
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class CnnConfig(_ModelBase):
    kind: Literal["cnn"] = "cnn"
    name: str = "cnn"
    channels: list[PositiveInt] = [16, 32]
    kernel_size: PositiveInt = 3
    dense: PositiveInt = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class TransformerConfig(_ModelBase):
    kind: Literal["transformer"] = "transformer"
    name: str = "transformer"
    patch_size: PositiveInt = 4
    d_model: PositiveInt = 32
    num_heads: PositiveInt = 4
    depth: PositiveInt = 2
    mlp_ratio: PositiveInt = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self


# ``package.module:attribute``: how a config names a user's Python callable (an entry-point string).
# Checked for its form only: the code is imported when a run needs it, never to read a config.
IMPORT_STRING_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _import_string(value: str | None, key: str) -> str | None:
    if value is not None and not IMPORT_STRING_RE.match(value):
        where = f"{key}: " if key else ""
        raise ValueError(f"{where}expected an import string package.module:function, got {json.dumps(value)}")
    return value


class CustomModelConfig(_ModelBase):
    """A user's model, one factory per API family (``precision_suite.models``, "Your own model"):
    ``torch`` ``(input_shape, num_classes) -> torch.nn.Module``, ``keras`` the same ``-> keras.Model``
    (called under the job's dtype policy), ``convert`` ``(torch initial state {name: ndarray},
    keras_model) -> None`` making the Keras model start from the torch weights."""

    kind: Literal["custom"] = "custom"
    name: str = "custom"
    torch: str | None = None
    keras: str | None = None
    convert: str | None = None

    @field_validator("torch", "keras", "convert")
    @classmethod
    def _import_strings(cls, value: str | None) -> str | None:
        return _import_string(value, "")

    def problem(self) -> str | None:
        """What makes this model unusable as a whole (checked with the list of models), or None."""
        if self.torch is None and self.keras is None:
            return "a custom model needs a torch or a keras factory (package.module:function)"
        if self.convert is not None and (self.torch is None or self.keras is None):
            return "convert maps the torch initial weights onto the Keras model: it needs both factories"
        return None

    @property
    def families(self) -> tuple[str, ...]:
        """The API families with a factory: the backends of the others do not run this model."""
        return tuple(f for f in ("torch", "keras") if getattr(self, f) is not None)


ModelConfig = Annotated[MlpConfig | CnnConfig | TransformerConfig | CustomModelConfig, Field(discriminator="kind")]
MODEL_KINDS = ("mlp", "cnn", "transformer", "custom")
# runner.parallel_jobs: auto never runs more training jobs at once than this.
MAX_AUTO_PARALLEL_JOBS = 4


# ---------------------------------------------------------------- data
class SyntheticConfig(_Strict):
    shape: list[PositiveInt] = [1, 8, 8]
    num_classes: Annotated[int, Field(ge=2, strict=True)] = 10
    train_size: PositiveInt = 2048
    test_size: PositiveInt = 512
    # Fraction of labels (train and test) replaced by a uniformly random class: a noisy task
    # whose accuracy varies from seed to seed, like many real benchmarks.
    label_noise: Annotated[float, Field(ge=0, lt=1)] = 0.0


class DataConfig(_Strict):
    name: Literal["digits", "synthetic", "npz", "mnist", "fashion_mnist", "cifar10", "python"] = "digits"
    path: str | None = None
    # data.name python: a user's function () -> {x_train, y_train, x_test, y_test[, num_classes]}.
    loader: str | None = None
    cache_dir: str = "~/.cache/precision-suite"
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _npz_needs_path(self) -> DataConfig:
        if self.name == "npz" and not self.path:
            raise ValueError("data.name npz needs data.path (a .npz file)")
        if self.name == "python" and not self.loader:
            raise ValueError("data.name python needs data.loader (package.module:function)")
        if self.loader is not None and self.name != "python":
            raise ValueError(f"data.loader is read only with data.name python (data.name is {self.name})")
        _import_string(self.loader, "loader")
        return self


# ---------------------------------------------------------------- training
class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: PositiveFloat = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    eps: PositiveFloat = 1e-8


class LrScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: NonNegInt = 0
    step_size: PositiveInt = 1000
    gamma: PositiveFloat = 0.1
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0


class TrainConfig(_Strict):
    epochs: PositiveInt | None = 10
    steps: PositiveInt | None = None
    batch_size: PositiveInt = 64
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: LrScheduleConfig = LrScheduleConfig()
    grad_clip_norm: PositiveFloat | None = None
    grad_accumulation: PositiveInt = 1
    # Steps kept out of timing (compilation, autotuning, scaler warm-up); not the lr warm-up,
    # which is lr_schedule.warmup_steps.
    timing_warmup_steps: NonNegInt = 5
    timing_window_steps: PositiveInt = 50
    # Test accuracy every N epochs for the curves (0: only at the end). Outside timed windows.
    eval_every_epochs: NonNegInt = 1
    divergence_patience: PositiveInt = 20

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainConfig:
        if self.steps is not None:
            self.epochs = None
        elif self.epochs is None:
            raise ValueError("train needs epochs or steps")
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accumulation ({self.grad_accumulation})"
            )
        return self


class LossScaleConfig(_Strict):
    """Names copy ``torch.amp.GradScaler``'s arguments; its defaults unless the config says
    otherwise."""

    dynamic: bool = True
    init_scale: PositiveFloat = 2.0**16
    growth_factor: Annotated[float, Field(gt=1)] = 2.0
    backoff_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    growth_interval: PositiveInt = 2000
    enabled: bool = True


class BackendsConfig(_Strict):
    names: list[str] = ["torch-amp", "torch-manual", "tf-keras", "keras-jax"]
    # Per backend: which policies to run. A backend not listed runs all its policies.
    policies: dict[str, list[str]] = {}
    # Per policy: the only models (by name) it runs on, for every backend; a policy not listed
    # runs on every model. E.g. {fp16-mixed: [mlp]}: fp16 where it is cheap on a CPU. fp32, the
    # baseline every other policy is compared with, runs on every model. Checked against the
    # run's policies and models (``precision_suite.plan.check_backends``).
    policy_models: dict[str, list[str]] = {}
    # Per backend: its own options, validated by the backend's Options schema.
    options: dict[str, dict[str, Any]] = {}

    @field_validator("names")
    @classmethod
    def _non_empty_unique(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("at least one backend is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate backend names in {names}")
        return names


class ParityConfig(_Strict):
    # What parity compares, paired per seed: test accuracy (tolerance_pts, in accuracy points) or
    # test loss (tolerance_loss, in nats: "within 0.02 nats of fp32", as language models are judged).
    metric: Literal["accuracy", "loss"] = "accuracy"
    # Three seeds on digits' 360 test rows (one sample = 0.28 pt) can show equivalence within
    # ±1.5 pt, rarely within ±1 (a single flipped sample widens the 90% CI to about ±1).
    tolerance_pts: Annotated[float, Field(ge=0)] = 1.5
    tolerance_loss: Annotated[float, Field(ge=0)] = 0.02
    check_pure: bool = False
    cross_framework_rtol: PositiveFloat = 1e-3
    # Per-step losses are compared over at most this many first steps (see
    # verdicts/cross_framework.py for why); the one-ulp noise-floor runs last this long.
    cross_framework_steps: PositiveInt = 100
    # Measure the run's own chaos for the cross-framework verdict: one short extra fp32 run per
    # framework and seed with every initial weight nudged by one ulp (only when two or more
    # frameworks run fp32).
    noise_floor_runs: bool = True


class SeedRange(_Strict):
    """Seeds on demand: start with seeds 0..min-1, add seeds (0..max-1) for the rows whose
    verdict is still INCONCLUSIVE at each look of ``precision_suite.verdicts.stats.look_schedule``."""

    min: Annotated[int, Field(ge=2, strict=True)] = 3
    max: PositiveInt = 10

    @model_validator(mode="after")
    def _ordered(self) -> SeedRange:
        if self.max < self.min:
            raise ValueError(f"seeds.max ({self.max}) must be >= seeds.min ({self.min})")
        return self


class RayConfig(_Strict):
    """``runner.executor: ray``: where the cluster is and what each job reserves on it."""

    # null: a private Ray instance on this machine, on the loopback interface only; "auto": the
    # cluster `ray start` runs on this machine; "host:port": that cluster's head (GCS) address.
    address: str | None = None
    # CPUs one job reserves (times its world size); also its thread count unless runner.threads.
    num_cpus_per_job: PositiveInt = 1
    # The private instance only (address null): CPUs and GPUs it offers (null: what Ray detects).
    num_cpus: PositiveInt | None = None
    num_gpus: NonNegInt | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'expected null, "auto" or "host:port" (the head\'s GCS address), got {value!r}')
        return value

    @model_validator(mode="after")
    def _local_sizes_only_for_a_private_instance(self) -> RayConfig:
        if self.address is not None and (self.num_cpus is not None or self.num_gpus is not None):
            raise ValueError(
                "num_cpus and num_gpus size the private instance (address null); "
                "a cluster's nodes declare their own with ray start --num-cpus/--num-gpus"
            )
        return self


class SlurmConfig(_Strict):
    """``runner.executor: slurm``: the job matrix as Slurm job arrays through submitit
    (``precision_suite.execution.slurm``). Names are submitit's ``AutoExecutor.update_parameters``
    ones (``timeout_min``, ``mem_gb``, ``cpus_per_task``, ``gpus_per_node``) or sbatch's."""

    # "slurm": sbatch on the cluster this machine submits to; "local": submitit's local executor
    # (real subprocesses on this machine, the same folder layout, no Slurm needed).
    cluster: Literal["slurm", "local"] = "slurm"
    # submitit's folder (scripts, pickles, logs); on a file system every node sees. null: the
    # run's logs/slurm.
    folder: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # Slurm's time limit of one job (minutes; Slurm rounds up to whole minutes). null:
    # runner.job_timeout_s plus the worker's start-up and submitit's signal delay.
    timeout_min: PositiveFloat | None = None
    # CPUs per replica (a job of world size N asks N times as many); its thread count unless runner.threads.
    cpus_per_task: PositiveInt = 1
    mem_gb: PositiveFloat | None = None
    # GPUs of one node: a GPU job (device cuda, or auto with this set) asks one per replica; a
    # data-parallel job over more replicas than this spans nodes, one Slurm task per rank.
    gpus_per_node: PositiveInt | None = None
    # Ranks per node of a data-parallel job run as Slurm tasks (one task per rank; torch env:// and
    # TF_CONFIG from the Slurm environment). null: gpus_per_node where the job needs more GPUs
    # than that, else one task on one node whose ranks the suite's own launcher starts.
    tasks_per_node: PositiveInt | None = None
    # Array tasks running at once (sbatch --array=0-K%P); on cluster local, jobs running at once.
    array_parallelism: PositiveInt = 256
    # Timed jobs get a node of their own (sbatch --exclusive); false only where the partition
    # hands out whole nodes anyway.
    exclusive_timing: bool = True
    # More submitit parameters of the cluster's executor, passed as they are, e.g. {constraint:
    # a100, signal_delay_s: 120, additional_parameters: {mail-type: END}}.
    extra: dict[str, Any] = {}

    @field_validator("extra")
    @classmethod
    def _not_a_named_key(cls, extra: dict[str, Any]) -> dict[str, Any]:
        named = {"partition", "account", "qos", "timeout_min", "time", "cpus_per_task", "mem_gb", "mem"}
        named |= {"gpus_per_node", "tasks_per_node", "nodes", "array_parallelism", "exclusive", "folder", "cluster"}
        clash = sorted(set(extra) & named)
        if clash:
            raise ValueError(f"{', '.join(clash)}: set with its own runner.slurm key, not in extra")
        return extra


class RunnerConfig(_Strict):
    isolation: Literal["per-framework", "per-job"] = "per-framework"
    job_timeout_s: PositiveFloat = 600.0
    out_dir: str = "runs"
    threads: PositiveInt | None = None
    deterministic: bool = True
    oom_retry_half_batch: bool = False
    # Where jobs run: one at a time on this machine, fanned out over a Ray cluster, or Slurm arrays.
    executor: Literal["local", "ray", "slurm"] = "local"
    ray: RayConfig = RayConfig()
    slurm: SlurmConfig = SlurmConfig()
    # Training jobs claim no speed: on Ray they then pack densely (one per device) instead of
    # taking their node's timing slot, and their step times are never used for a speedup.
    accuracy_only: bool = False
    # Local executor: training jobs run this many at a time, each worker with an equal share of
    # the cores (``SuiteConfig.parallel_jobs``). Above 1 the training jobs claim no speed (like
    # accuracy_only); the timed speed phase still runs alone with every core. "auto": the
    # available cores (at most 4) on a CPU, 1 on a GPU or when training jobs are the speed source.
    parallel_jobs: PositiveInt | Literal["auto"] = 1


class DebugConfig(_Strict):
    """Deliberate faults, to prove that a check catches what it should (a canary for CI)."""

    # "backend/policy" → factor on train.optimizer.lr for that row only, e.g.
    # {torch-amp/bf16-mixed: 10}: a broken candidate whose parity verdict must FAIL. Recorded in
    # the job's config like any setting.
    lr_scale: dict[str, PositiveFloat] = {}


class SpeedConfig(_Strict):
    """The paired, interleaved timing phase (``precision_suite.measure.speed_phase``): per (framework, model,
    device) every policy's backend is set up once in one worker and timed in rotation with the
    fp32 baseline, ``rounds`` rounds of windows of at least ``window_ms``. Speedups in the
    comparison come from here; the training jobs' own step times stay as information."""

    enabled: bool = True
    rounds: Annotated[int, Field(ge=3, strict=True)] = 10
    window_ms: PositiveFloat = 50.0
    # Skip the training jobs: speed (and memory accounting) only, no accuracy.
    speed_only: bool = False
    # Also time the fp32 baseline at half the batch: a step time that barely changes says the
    # model is overhead-bound (one of the "why no speedup" diagnostics).
    batch_probe: bool = True


class ReportConfig(_Strict):
    """What the report files draw (``precision_suite.report``)."""

    # The most model groups whose plots report.md / report.html show (six plots a group, a few
    # tenths of a CPU-second each): groups with a failing verdict or job first, then inconclusive
    # ones, then in table order; every group keeps its table and verdicts. null: every group.
    plot_groups: NonNegInt | None = 8


class FaultInjectionConfig(_Strict):
    """Debug only, for tests of the data-parallel paths (not a user feature): make one replica
    misbehave. ``inf_grad``: its local gradient is multiplied by inf (before any all-reduce) at
    ``steps``; ``crash``: the rank exits abruptly at the first of ``steps``; ``hang``: it stops
    answering collectives from there."""

    kind: Literal["inf_grad", "crash", "hang"] = "inf_grad"
    rank: NonNegInt = 1
    steps: list[NonNegInt] = [0]


class DistributedConfig(_Strict):
    """Data-parallel jobs (``suite/execution/data_parallel.py``). ``train.batch_size`` is the per-replica
    batch: a job over N replicas trains on a global batch of N × batch_size (weak scaling)."""

    # One size or a list (a sweep); each size > 1 is its own job (job id suffix /wsN).
    world_size: PositiveInt | list[PositiveInt] = 1
    # data-parallel verdict: fp32 over N replicas vs one process at the same global batch; per-step
    # loss relative difference allowed (the all-reduce sums in another order) over the first steps.
    data_parallel_rtol: PositiveFloat = 1e-4
    data_parallel_steps: PositiveInt = 10
    debug_fault_injection: FaultInjectionConfig | None = None
    # tf-keras: MirroredStrategy over N devices in one process, or MultiWorkerMirroredStrategy over
    # N processes (TF_CONFIG on 127.0.0.1: the multi-node path, run on one machine).
    tf_strategy: Literal["mirrored", "multi-worker"] = "mirrored"

    @field_validator("world_size")
    @classmethod
    def _sizes(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("expected a non-empty list of distinct world sizes")
        return value

    @property
    def world_sizes(self) -> list[int]:
        return list(self.world_size) if isinstance(self.world_size, list) else [self.world_size]


class SuiteConfig(_Strict):
    models: list[ModelConfig] = [MlpConfig(), CnnConfig(), TransformerConfig()]
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    backends: BackendsConfig = BackendsConfig()
    loss_scale: LossScaleConfig = LossScaleConfig()
    # A list of seeds (one look), or {min, max}: seeds on demand (SeedRange).
    seeds: list[NonNegInt] | SeedRange = [0, 1, 2]
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parity: ParityConfig = ParityConfig()
    runner: RunnerConfig = RunnerConfig()
    debug: DebugConfig = DebugConfig()
    speed: SpeedConfig = SpeedConfig()
    distributed: DistributedConfig = DistributedConfig()
    report: ReportConfig = ReportConfig()
    # Folders put on sys.path (and PYTHONPATH of every worker) before a custom model's factories or
    # a python data loader are imported. A config with such import strings gets its own folder and
    # the current directory added when it is loaded (absolute), so --resume finds the same code.
    python_path: list[str] = []
    # What loading said besides errors (deprecated keys); not part of the config itself.
    _notices: list[str] = PrivateAttr(default_factory=list)
    # Where it came from, for the run's config.yaml header: the file and the overrides.
    _origin: list[str] = PrivateAttr(default_factory=list)

    @property
    def notices(self) -> list[str]:
        return self._notices

    @property
    def origin(self) -> list[str]:
        return self._origin

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        # `models: [mlp, cnn]` is shorthand for `models: [{kind: mlp}, {kind: cnn}]`.
        if isinstance(value, list):
            return [{"kind": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: list[Any]) -> list[Any]:
        names = [m.name for m in models]
        if not names:
            raise ValueError("at least one model is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for index, model in enumerate(models):
            if isinstance(model, CustomModelConfig) and (problem := model.problem()):
                raise ValueError(f"models.{index} ({model.name}): {problem}")
        return models

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_range(cls, value: Any) -> Any:
        # A mapping is a SeedRange; validated here so its errors name its keys (the union would
        # report that it is not a list).
        if not isinstance(value, dict):
            return value
        try:
            return SeedRange.model_validate(value)
        except ValidationError as exc:
            text = format_error(exc.errors()[0], "seeds").removeprefix("seeds: ")
            raise ValueError(text.removeprefix("(top level): ")) from None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | SeedRange) -> list[int] | SeedRange:
        if isinstance(seeds, SeedRange):
            return seeds
        if not seeds:
            raise ValueError("at least one seed is needed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"duplicate seeds in {seeds}")
        return seeds

    def seed_looks(self) -> tuple[int, ...]:
        """The seed counts at which verdicts are looked at: one look for a list."""
        from precision_suite.verdicts.stats import look_schedule

        if isinstance(self.seeds, SeedRange):
            return look_schedule(self.seeds.min, self.seeds.max)
        return (len(self.seeds),)

    def seeds_at_look(self, look: int) -> list[int]:
        """The seeds a row has once look ``look`` (0-based) is reached."""
        if isinstance(self.seeds, SeedRange):
            return list(range(self.seed_looks()[look]))
        return list(self.seeds)

    def parallel_jobs(self) -> int:
        """How many training jobs the local executor runs at once (``runner.parallel_jobs``)."""
        from precision_suite.execution.placement import visible_gpus
        from precision_suite.measure.environment import available_cores

        wanted = self.runner.parallel_jobs
        if wanted != "auto":
            return wanted
        speed_elsewhere = self.runner.accuracy_only or self.speed.enabled or self.speed.speed_only
        on_gpu = self.device == "cuda" or (
            self.device == "auto" and bool(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES")))
        )
        if not speed_elsewhere or on_gpu or self.runner.executor != "local":
            return 1
        return max(1, min(MAX_AUTO_PARALLEL_JOBS, available_cores()))

    def training_timed(self) -> bool:
        """Whether training jobs claim their machine for timing (they run alone)."""
        return not self.runner.accuracy_only and self.parallel_jobs() == 1

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one) and reads
    `1e-3` as a float (YAML 1.1 only accepts `1.0e-3`)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_text(part: Any) -> str:
    text = str(part)
    # Keys a user could not have meant (spaces, dots, control characters) are quoted, so the
    # message stays one readable line.
    if isinstance(part, str) and (not text or not text.isprintable() or any(c in text for c in " .")):
        return json.dumps(text)
    return text


# Names users bring from elsewhere (Slurm job scripts, issue texts) for keys the schema spells
# submitit's way: the unknown-key error names the key meant.
_KEY_SYNONYMS = {"time_min": "timeout_min", "cpus_per_job": "cpus_per_task", "gpus_per_job": "gpus_per_node"}


def format_error(error: dict[str, Any], source: str) -> str:
    path = ".".join(_key_text(p) for p in error["loc"] if not str(p).startswith("function-"))
    # Drop pydantic's union-branch labels like `mlp` in `models.0.mlp.hidden`.
    msg = error["msg"]
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = path[: -len(_key_text(error["loc"][-1]))].rstrip(".")
        key = json.dumps(str(error["loc"][-1]))
        hint = _KEY_SYNONYMS.get(str(error["loc"][-1]))
        hint_text = f' (the key is "{hint}")' if hint else ""
        return f"{source}: {path}: unknown key {key}" + (f" in {parent}" if parent else "") + hint_text
    if kind == "missing":
        return f"{source}: {path}: required key is missing"
    expected = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "float_parsing": "a number",
        "finite_number": "a finite number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "greater_than": f"a number > {error.get('ctx', {}).get('gt')}",
        "greater_than_equal": f"a number >= {error.get('ctx', {}).get('ge')}",
        "less_than": f"a number < {error.get('ctx', {}).get('lt')}",
        "less_than_equal": f"a number <= {error.get('ctx', {}).get('le')}",
    }.get(kind)
    if expected is None:
        if kind == "literal_error":
            expected = "one of " + msg.removeprefix("Input should be ")
        elif kind == "union_tag_invalid":
            expected = "kind one of " + ", ".join(MODEL_KINDS)
        elif kind == "value_error":
            return f"{source}: {path or '(top level)'}: {msg.removeprefix('Value error, ')}"
        else:
            expected = msg.removeprefix("Input should be ")
    got = _describe(error.get("input"))
    return f"{source}: {path}: expected {expected}, got {got}"


# Keys renamed in a release, still read for one more with a notice: old path → new key.
RENAMED_KEYS: dict[tuple[str, ...], str] = {
    ("train", "warmup_steps"): "timing_warmup_steps",  # confused with lr_schedule.warmup_steps
}


def _apply_renames(raw: dict[str, Any], source: str) -> list[str]:
    notices = []
    for (*parents, old), new in RENAMED_KEYS.items():
        section = raw
        for key in parents:
            section = section.get(key) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old not in section:
            continue
        dotted = ".".join(parents)
        if new in section:
            raise ConfigError(f"{source}: {dotted}.{old}: renamed to {dotted}.{new}; give only {dotted}.{new}")
        section[new] = section.pop(old)
        notices.append(f"{source}: {dotted}.{old} is deprecated and will be removed; use {dotted}.{new}")
    return notices


def validate(raw: Any, source: str) -> SuiteConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(raw)}")
    notices = _apply_renames(raw, source)
    try:
        config = SuiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_error(exc.errors()[0], source)) from None
    config.notices.extend(notices)
    return config


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], value parsed as YAML, e.g. `[x, y]`, `1e-3`, `true`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    value = parse_yaml(text, f"--set {key}") if text.strip() else ""
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i]) or 'top level'} is not a mapping")
            child = node.get(part)
            if not isinstance(child, dict | list):
                # Expand `models` shorthand and absent sections so nested keys can be set.
                child = {} if child is None else child
                node[part] = child
            node = child
        last = path[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(path)}: cannot set a key inside a non-mapping")
    return raw


def default_config_text() -> str:
    """The embedded default config: ``configs/default.yaml``, installed as ``precision_suite.configs``."""
    try:
        return resources.files("precision_suite.configs").joinpath("default.yaml").read_text()
    except ModuleNotFoundError:  # running from a source tree that was never installed
        return (Path(__file__).resolve().parent.parent / "configs" / "default.yaml").read_text()


def merge_sections(raw: dict[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge keyword sections into ``raw`` (in place): a mapping merges into the mapping it
    meets, key by key; anything else (a list, a number, ``models``) replaces the value. A pydantic
    section (``train=TrainConfig(...)``) counts as its full mapping."""
    for key, value in sections.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        current = raw.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merge_sections(current, value)
        else:
            raw[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return raw


def load_config(
    path: str | Path | Mapping[str, Any] | None,
    overrides: list[str] | None = None,
    sections: Mapping[str, Any] | None = None,
) -> SuiteConfig:
    """Load a YAML file (None = the packaged default; a mapping = the config itself), merge
    keyword ``sections`` into it (``merge_sections``), then apply `--set` ``overrides``."""
    source = source_name(path)
    raw = copy.deepcopy(dict(path)) if isinstance(path, Mapping) else _read_config_file(path, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(raw)}")
    if path is not None:
        # A relative data.path in a file means "next to this file", as in every config tool; in a
        # mapping given from Python, relative to the current directory.
        _resolve_data_path(raw, Path.cwd() if isinstance(path, Mapping) else Path(path).parent)
    if sections:
        raw = merge_sections(raw, sections)
        source = f"{source} (with overrides)"
        _resolve_data_path(raw, Path.cwd())
    if overrides:
        raw = apply_overrides(raw, overrides)
        source = f"{source} (with --set)"
        _resolve_data_path(raw, Path.cwd())  # typed on the command line: relative to the cwd
    file_dir = Path(path).parent if path is not None and not isinstance(path, Mapping) else None
    _resolve_python_path(raw, file_dir)
    return validate(raw, source)


def user_code_keys(raw: Any) -> list[str]:
    """The keys by which a raw config imports the user's code: models of ``kind: custom`` and a
    ``data.name: python`` loader (read from the mapping, before validation)."""
    found = []
    if not isinstance(raw, dict):
        return found
    models = raw.get("models")
    for index, model in enumerate(models if isinstance(models, list) else [models]):
        if isinstance(model, dict) and model.get("kind") == "custom":
            found.append(f"models.{index}.kind: custom")
    data = raw.get("data")
    if isinstance(data, dict) and data.get("name") == "python":
        found.append("data.name: python")
    return found


def _resolve_python_path(raw: dict[str, Any], config_dir: Path | None) -> None:
    """For a config that imports user code: ``python_path`` entries made absolute (relative to the
    config's folder), then that folder and the current directory appended, as a user expects
    ``mypkg`` next to the config or under the cwd to import (in place). Left alone otherwise, so
    a built-in config's resolved form (and hash) does not change."""
    if not user_code_keys(raw):
        return
    entries = raw.get("python_path")
    if entries is None:
        entries = []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return  # the schema reports it
    base = config_dir if config_dir is not None else Path.cwd()
    resolved = [str((base / Path(e).expanduser()).absolute()) for e in entries]
    for extra in ([config_dir.absolute()] if config_dir is not None else []) + [Path.cwd()]:
        if str(extra) not in resolved:
            resolved.append(str(extra))
    raw["python_path"] = resolved


def source_name(path: str | Path | Mapping[str, Any] | None) -> str:
    """How messages name a config: its file, ``default.yaml``, or ``config mapping`` (from Python)."""
    if isinstance(path, Mapping):
        return "config mapping"
    return "default.yaml" if path is None else str(path)


def _read_config_file(path: str | Path | None, source: str) -> Any:
    if path is None:
        return parse_yaml(default_config_text(), source)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    return parse_yaml(text, source)


def _resolve_data_path(raw: dict[str, Any], base: Path) -> None:
    """Make a relative ``data.path`` absolute against ``base`` (in place), so the resolved
    config a run saves and its workers read means the same file from any directory."""
    data = raw.get("data")
    value = data.get("path") if isinstance(data, dict) else None
    if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
        data["path"] = str((base / value).absolute())
