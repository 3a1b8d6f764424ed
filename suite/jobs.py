"""One job: everything a training run needs, self-contained so it can cross a process
boundary. Expanding a config into jobs is ``precision_suite.plan``."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from precision_suite.backends.base import family_of
from precision_suite.config import (
    DataConfig,
    DistributedConfig,
    LossScaleConfig,
    ModelConfig,
    ParityConfig,
    RunnerConfig,
    TrainConfig,
)
from pydantic import BaseModel, TypeAdapter

MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)
# The policy every other one of a framework is compared with (speedups, parity, cross-framework).
BASELINE_POLICY = "fp32"
# ``Job.role`` of the one-process run at an N-replica job's global batch (the data-parallel verdict's reference).
DP_REFERENCE = "dp-reference"


@dataclass
class Job:
    """Everything one training run needs, self-contained so it can cross a process boundary."""

    job_id: str
    backend: str
    runtime: str  # what executes it ("torch", "tensorflow", "jax"): the worker process it runs in
    family: str  # the API family the user compares ("torch", "keras"): Backend.family
    policy: str
    model: ModelConfig  # MlpConfig | CnnConfig | TransformerConfig
    data: DataConfig
    seed: int
    device: str  # "cpu", "cuda", or "auto" (resolved by the worker, which may import frameworks)
    train: TrainConfig
    loss_scale: LossScaleConfig
    options: dict[str, Any]
    runner: RunnerConfig
    parity: ParityConfig
    config_hash: str = ""
    # A timed job measures speed: on a cluster it has its node to itself (no other suite job
    # runs there meanwhile). Accuracy-only jobs may share a node, one per device.
    timed: bool = True

    # The seed counts at which the run looks at its verdicts (SuiteConfig.seed_looks): the
    # comparison tests each look at α / len(seed_looks).
    seed_looks: tuple[int, ...] = ()
    # A noise-floor run: every initial weight moved this many ulps toward +inf, training stopped
    # after ``stop_after_steps`` (the schedule still spans the full run).
    perturb_ulp: int = 0
    stop_after_steps: int | None = None
    # Data parallelism (precision_suite.execution.data_parallel): replicas this job trains on (an executor
    # reserves this many devices), and "dp-reference" for the one-process run at an N-replica
    # job's global batch that the data-parallel verdict compares against.
    world_size: int = 1
    role: str = ""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def framework(self) -> str:
        """The runtime, under the name records have always given it (``"framework"``)."""
        return self.runtime

    @property
    def loss_scaling_mode(self) -> str:
        """``"dynamic"``, ``"static"`` or ``"none"``: the policy's scaling under ``loss_scale``."""
        from precision_suite.backends.policy import get_policy

        return get_policy(self.policy).loss_scaling_mode(self.loss_scale.enabled, self.loss_scale.dynamic)

    # The worker message type; ``precision_suite.measure.speed_phase.SpeedTask`` (a timed phase) is "speed".
    kind: ClassVar[str] = "job"
    is_timed_phase: ClassVar[bool] = False

    # The JSON key of a field whose record key predates it (``to_dict`` / ``from_dict``).
    JSON_KEYS: ClassVar[dict[str, str]] = {"runtime": "framework"}

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON: config models dumped, tuples as lists (``from_dict`` reads it)."""
        return {self.JSON_KEYS.get(f.name, f.name): _as_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        """The job ``to_dict`` wrote: each field validated as its annotation says (a config model,
        the model union, a tuple); a field missing from ``raw`` takes its default."""
        adapters = _field_adapters(cls)
        values = {name: raw[key] for name in adapters if (key := cls.JSON_KEYS.get(name, name)) in raw}
        if not values.get("family"):  # written before the API family was apart from the runtime
            values["family"] = family_of(values["runtime"])
        return cls(**{name: adapters[name].validate_python(value) for name, value in values.items()})


def _as_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


@functools.cache
def _field_adapters(cls: type) -> dict[str, TypeAdapter[Any]]:
    """A validator per dataclass field of ``cls``, from its type annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}


def job_id(model: str, dataset: str, backend: str, policy: str, seed: int) -> str:
    return f"{model}/{dataset}/{backend}/{policy}/seed{seed}"
