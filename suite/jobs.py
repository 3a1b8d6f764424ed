"""One job: everything a training run needs, self-contained so it can cross a process
boundary. Expanding a config into jobs is ``precision_suite.plan``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from precision_suite.backends.base import FAMILY_OF_RUNTIME
from precision_suite.config import (
    DataConfig,
    DistributedConfig,
    LossScaleConfig,
    ModelConfig,
    ParityConfig,
    RunnerConfig,
    TrainConfig,
)
from pydantic import TypeAdapter

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
    family: str  # the API family the user compares ("torch", "keras"): Backend.family
    runtime: str  # what executes it ("torch", "tensorflow", "jax"): the worker process it runs in
    policy: str
    model: Any  # MlpConfig | CnnConfig | TransformerConfig
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "backend": self.backend,
            "framework": self.runtime,
            "family": self.family,
            "policy": self.policy,
            "model": self.model.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "seed": self.seed,
            "device": self.device,
            "train": self.train.model_dump(mode="json"),
            "loss_scale": self.loss_scale.model_dump(mode="json"),
            "options": dict(self.options),
            "runner": self.runner.model_dump(mode="json"),
            "parity": self.parity.model_dump(mode="json"),
            "config_hash": self.config_hash,
            "timed": self.timed,
            "seed_looks": list(self.seed_looks),
            "perturb_ulp": self.perturb_ulp,
            "stop_after_steps": self.stop_after_steps,
            "world_size": self.world_size,
            "role": self.role,
            "distributed": self.distributed.model_dump(mode="json"),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        return cls(
            job_id=raw["job_id"],
            backend=raw["backend"],
            family=raw.get("family") or FAMILY_OF_RUNTIME.get(raw["framework"], raw["framework"]),
            runtime=raw["framework"],
            policy=raw["policy"],
            model=MODEL_ADAPTER.validate_python(raw["model"]),
            data=DataConfig.model_validate(raw["data"]),
            seed=raw["seed"],
            device=raw["device"],
            train=TrainConfig.model_validate(raw["train"]),
            loss_scale=LossScaleConfig.model_validate(raw["loss_scale"]),
            options=raw["options"],
            runner=RunnerConfig.model_validate(raw["runner"]),
            parity=ParityConfig.model_validate(raw["parity"]),
            config_hash=raw.get("config_hash", ""),
            timed=raw.get("timed", True),
            seed_looks=tuple(raw.get("seed_looks") or ()),
            perturb_ulp=raw.get("perturb_ulp", 0),
            stop_after_steps=raw.get("stop_after_steps"),
            world_size=int(raw.get("world_size", 1)),
            role=raw.get("role", ""),
            distributed=DistributedConfig.model_validate(raw.get("distributed", {})),
        )


def job_id(model: str, dataset: str, backend: str, policy: str, seed: int) -> str:
    return f"{model}/{dataset}/{backend}/{policy}/seed{seed}"
