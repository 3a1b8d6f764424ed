"""The job matrix: backend × policy × model × dataset × seed, one resolved job each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from suite.config import (
    DataConfig,
    LossScaleConfig,
    ModelConfig,
    RunnerConfig,
    SuiteConfig,
    TrainConfig,
)

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
    device: str  # resolved: "cpu" or "cuda"
    train: TrainConfig
    loss_scale: LossScaleConfig
    options: dict[str, Any]
    runner: RunnerConfig
    config_hash: str = ""

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
            "config_hash": self.config_hash,
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
            config_hash=raw.get("config_hash", ""),
        )


def job_id(model: str, dataset: str, backend: str, policy: str, seed: int) -> str:
    return f"{model}/{dataset}/{backend}/{policy}/seed{seed}"


def expand_jobs(config: SuiteConfig, device: str) -> list[Job]:
    """Every job of the config, in a stable order. Policies and options are assumed already
    checked against the registry (``suite.plan.check_config``)."""
    from backends import get_backend_class

    config_hash = config.config_hash()
    jobs: list[Job] = []
    for model in config.models:
        for name in config.backends.names:
            cls = get_backend_class(name)
            policies = config.backends.policies.get(name, list(cls.policies))
            options = cls.Options.model_validate(config.backends.options.get(name, {}))
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
                            config_hash=config_hash,
                        )
                    )
    return jobs
