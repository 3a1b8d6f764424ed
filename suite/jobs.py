"""The job matrix: backend × policy × model × dataset × seed, one resolved job each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from precision_suite.config import (
    DataConfig,
    DistributedConfig,
    LossScaleConfig,
    ModelConfig,
    ParityConfig,
    RunnerConfig,
    SuiteConfig,
    TrainConfig,
)
from pydantic import TypeAdapter

_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


@dataclass
class Job:
    """Everything one training run needs, self-contained so it can cross a process boundary."""

    job_id: str
    backend: str
    framework: str
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
    # Data parallelism (precision_suite.distributed): replicas this job trains on (an executor
    # reserves this many devices), and "dp-reference" for the one-process run at an N-replica
    # job's global batch that the data-parallel verdict compares against.
    world_size: int = 1
    role: str = ""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "backend": self.backend,
            "framework": self.framework,
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
            "world_size": self.world_size,
            "role": self.role,
            "distributed": self.distributed.model_dump(mode="json"),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        return cls(
            job_id=raw["job_id"],
            backend=raw["backend"],
            framework=raw["framework"],
            policy=raw["policy"],
            model=_MODEL_ADAPTER.validate_python(raw["model"]),
            data=DataConfig.model_validate(raw["data"]),
            seed=raw["seed"],
            device=raw["device"],
            train=TrainConfig.model_validate(raw["train"]),
            loss_scale=LossScaleConfig.model_validate(raw["loss_scale"]),
            options=raw["options"],
            runner=RunnerConfig.model_validate(raw["runner"]),
            parity=ParityConfig.model_validate(raw["parity"]),
            config_hash=raw.get("config_hash", ""),
            world_size=int(raw.get("world_size", 1)),
            role=raw.get("role", ""),
            distributed=DistributedConfig.model_validate(raw.get("distributed", {})),
        )


def job_id(model: str, dataset: str, backend: str, policy: str, seed: int) -> str:
    return f"{model}/{dataset}/{backend}/{policy}/seed{seed}"


def expand_jobs(config: SuiteConfig, device: str) -> list[Job]:
    """Every job of the config, in a stable order. Policies and options are assumed already
    checked against the registry (``precision_suite.plan.check_config``)."""
    from precision_suite.backends import get_backend_class

    config_hash = config.config_hash()
    jobs: list[Job] = []
    resolved = {}
    for name in config.backends.names:
        cls = get_backend_class(name)
        options = cls.Options.model_validate(config.backends.options.get(name, {}))
        resolved[name] = (cls, config.backends.policies.get(name, list(cls.policies)), options)
    for model in config.models:
        for name in config.backends.names:
            cls, policies, options = resolved[name]
            for policy in policies:
                for seed in config.seeds:
                    jobs.append(
                        Job(
                            job_id=job_id(model.name, config.data.name, name, policy, seed),
                            backend=name,
                            framework=cls.framework,
                            policy=policy,
                            model=model,
                            data=config.data,
                            seed=seed,
                            device=device,
                            train=config.train,
                            loss_scale=config.loss_scale,
                            options=options.model_dump(mode="json"),
                            runner=config.runner,
                            parity=config.parity,
                            config_hash=config_hash,
                            distributed=config.distributed,
                        )
                    )
    from precision_suite.distributed import expand_world_sizes

    return expand_world_sizes(jobs)


def check_backends(config: SuiteConfig, source: str) -> None:
    """Check the ``backends`` section against the registry before anything runs: known names,
    implemented policies, valid options, settings each backend can express."""
    from precision_suite.backends import RegistryError, get_backend_class
    from precision_suite.backends.base import POLICIES
    from precision_suite.config import ConfigError, _format_error
    from pydantic import ValidationError

    section = config.backends
    classes = {}
    for i, name in enumerate(section.names):
        try:
            classes[name] = get_backend_class(name)
        except RegistryError as exc:
            raise ConfigError(f"{source}: backends.names.{i}: {exc}") from None
    for key in ("policies", "options"):
        for name in getattr(section, key):
            if name not in classes:
                raise ConfigError(
                    f"{source}: backends.{key}.{name}: backend not in backends.names ({', '.join(section.names)})"
                )
    for name, policies in section.policies.items():
        cls = classes[name]
        if not policies:
            raise ConfigError(f"{source}: backends.policies.{name}: expected at least one policy")
        for j, policy in enumerate(policies):
            if policy not in cls.policies:
                what = "is not implemented by" if policy in POLICIES else "is not a policy of"
                raise ConfigError(
                    f'{source}: backends.policies.{name}.{j}: policy "{policy}" {what} {name}; '
                    f"it has: {', '.join(cls.policies)}"
                )
    for name, options in section.options.items():
        try:
            classes[name].Options.model_validate(options)
        except ValidationError as exc:
            error = exc.errors()[0]
            error["loc"] = ("backends", "options", name, *error["loc"])
            raise ConfigError(_format_error(error, source)) from None
    from precision_suite.distributed import config_problem as data_parallel_problem

    for job in expand_jobs(config, config.device):
        problem = classes[job.backend].config_problem(job) or data_parallel_problem(job)
        if problem:
            raise ConfigError(f"{source}: {job.backend} ({job.policy}): {problem}")
