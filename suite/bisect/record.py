"""bisect.json: what ``precision-suite bisect`` found, typed. Read by ``advise`` (any machine, no
framework); a resumed bisect finds its trials' run directories and probe.json instead."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BISECT_FILE = "bisect.json"
BISECT_SCHEMA = "precision-suite/bisect/v1"


@dataclass
class TrialRecord:
    """One run of the search: the blocks kept, what it was (``endpoint``, ``search``, ``verdict``),
    its outcome, and the run directory holding its records."""

    kept: list[str]
    kind: str  # "endpoint: nothing kept" | "endpoint: every block kept" | "search: ..." | "verdict"
    outcome: str  # pass | fail | inconclusive | failed
    detail: str
    run_dir: str
    seeds: list[int]
    runs: int  # training runs the trial itself made (fp32 baselines copied from the first endpoint not counted)


@dataclass
class ModelBisect:
    """The answer for one model: ``keep_fp32`` (None: no answer, even keeping every block did not
    pass), the ranking, every trial, and the final verdict's run directory."""

    model: str
    blocks: list[str]
    keep_fp32: list[str] | None
    verdict: str  # the final paired parity verdict: pass | fail | inconclusive
    verdict_detail: str
    verdict_run_dir: str | None
    story: list[str] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)  # BlockSensitivity as dicts
    trials: list[TrialRecord] = field(default_factory=list)
    trial_bound: int = 0  # the most search trials, stated up front

    @property
    def answered(self) -> bool:
        return self.keep_fp32 is not None


@dataclass
class BisectResult:
    backend: str
    policy: str
    config: str  # the config file it ran
    models: list[ModelBisect]
    schema: str = BISECT_SCHEMA

    @property
    def runs(self) -> int:
        return sum(t.runs for m in self.models for t in m.trials)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cost": {"trials": sum(len(m.trials) for m in self.models), "training_runs": self.runs}}

    def write(self, out_dir: Path) -> Path:
        path = out_dir / BISECT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BisectResult:
        models = []
        for m in raw["models"]:
            trials = [TrialRecord(**t) for t in m.get("trials", [])]
            models.append(ModelBisect(**{**m, "trials": trials}))
        return cls(raw["backend"], raw["policy"], raw.get("config", ""), models, raw.get("schema", BISECT_SCHEMA))


def read_bisect(path: Path) -> BisectResult | None:
    """The bisect.json at ``path`` (a file or a folder holding one), None if there is none or it
    cannot be read as one."""
    path = path / BISECT_FILE if path.is_dir() else path
    if not path.exists():
        return None
    try:
        return BisectResult.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
