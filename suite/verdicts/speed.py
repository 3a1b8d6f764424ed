"""Reading the speed records: the paired speedups of the speed phase and the timed windows as the
comparison uses them (``precision_suite.verdicts.compare.row_speed`` sets each row's one speedup),
and whether separately timed jobs' step times may be set against each other at all.

The phase itself runs in a worker (``precision_suite.measure.speed_phase``) and decides each
candidate's noise label there (``precision_suite.measure.timing.assess``); this module only reads
what it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from precision_suite.backends.base import family_of
from precision_suite.measure.timing import SpeedEstimate
from precision_suite.results import SPEED_KIND, latest_by_job


@dataclass(frozen=True)
class Windows:
    """Timed windows of one side: the mean step time (seconds) and the steps of each window —
    what a row's speed figures come from, and what ``benchmark.json`` reports as rounds."""

    step_s: tuple[float, ...]
    steps: tuple[int, ...]

    @classmethod
    def from_samples(cls, samples: Sequence[dict[str, Any]]) -> Windows | None:
        """From a speed record's ``WindowSample``s (``speed.windows[label].samples``)."""
        pairs = [
            (w["wall_s"] / w["steps"], int(w["steps"]))
            for w in samples
            if w.get("steps") and isinstance(w.get("wall_s"), int | float) and math.isfinite(w["wall_s"])
        ]
        return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)) if pairs else None

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]]) -> Windows | None:
        """From training jobs' ``curves.window_step_time_ms`` / ``window_steps``, pooled over seeds."""
        pairs = []
        for record in records:
            curves = record.get("curves") or {}
            windows = zip(curves.get("window_step_time_ms") or [], curves.get("window_steps") or [], strict=False)
            for ms, steps in windows:
                if isinstance(ms, int | float) and math.isfinite(ms) and ms > 0 and steps:
                    pairs.append((ms / 1e3, int(steps)))
        return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)) if pairs else None


@dataclass
class CandidateSpeed:
    """One candidate of a speed record, as the comparison reads it."""

    backend: str
    policy: str
    estimate: SpeedEstimate

    @property
    def label(self) -> str:
        return f"{self.backend} {self.policy}"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CandidateSpeed:
        names = {f.name for f in fields(SpeedEstimate)}
        return cls(raw["backend"], raw["policy"], SpeedEstimate(**{k: v for k, v in raw.items() if k in names}))


@dataclass
class SpeedPhase:
    """A speed record of one (model, dataset, device) of one API family on one runtime, typed."""

    model: str
    dataset: str
    device: str
    runtime: str  # the record's "framework"
    family: str
    baseline_backend: str
    baseline_policy: str
    candidates: list[CandidateSpeed]
    baseline_step_ms: float | None
    batch_scaling: float | None
    matmul_tflops: dict[str, float]
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    batch_size: int | None
    environ: dict[str, Any]
    model_config: dict[str, Any]
    # Each side's timed windows by label ("backend policy"); the baseline's pooled over every round.
    windows: dict[str, Windows] = field(default_factory=dict)

    @property
    def baseline_label(self) -> str:
        return f"{self.baseline_backend} {self.baseline_policy}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SpeedPhase:
        speed = record.get("speed") or {}
        scaling = speed.get("batch_scaling") or {}
        jobs = (record.get("config") or {}).get("jobs") or [{}]
        windows = {
            label: found
            for label, side in (speed.get("windows") or {}).items()
            if (found := Windows.from_samples(side.get("samples") or [])) is not None
        }
        return cls(
            model=str(record.get("model")),
            dataset=str(record.get("dataset")),
            device=str(record.get("device")),
            runtime=(runtime := str(record.get("framework"))),
            family=str(record.get("family") or family_of(runtime)),
            baseline_backend=speed["baseline"]["backend"],
            baseline_policy=speed["baseline"]["policy"],
            candidates=[CandidateSpeed.from_dict(c) for c in speed.get("candidates", [])],
            baseline_step_ms=speed.get("baseline_step_ms"),
            batch_scaling=scaling.get("step_time_ratio"),
            matmul_tflops=dict(speed.get("matmul_tflops") or {}),
            input_shape=tuple(speed["input_shape"]) if speed.get("input_shape") else None,
            num_classes=speed.get("num_classes"),
            batch_size=speed.get("batch_size"),
            environ=dict(record.get("environ") or {}),
            model_config=dict(jobs[0].get("model") or {}),
            windows=windows,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.dataset, self.device


def speed_phases(records: list[dict[str, Any]]) -> list[SpeedPhase]:
    """The ok speed records (newest per id) as ``SpeedPhase``s."""
    latest = latest_by_job([r for r in records if r.get("kind") == SPEED_KIND])
    return [SpeedPhase.from_record(r) for r in latest.values() if r.get("status") == "ok"]


# ---------------------------------------------------------------- separately timed jobs
def device_model(record: dict[str, Any]) -> str | None:
    """The device model a record ran on: the backend's device name, else the first GPU's name."""
    name = (record.get("environ") or {}).get("device_name")
    if name:
        return str(name)
    gpus = (record.get("placement") or {}).get("gpus") or []
    return str(gpus[0].get("name")) if gpus else None


def timing_exclusive(record: dict[str, Any]) -> bool:
    """Whether a record's step times were measured with no other job of the run beside it.
    Records written before placements existed ran one at a time (the local executor)."""
    placement = record.get("placement")
    if not placement:
        return True
    return bool(placement.get("timed")) and placement.get("concurrent_jobs_on_node", 1) <= 1


def speed_comparable(records: list[dict[str, Any]]) -> bool:
    """Whether the step times of these records (a baseline's and a candidate's) may be set
    against each other: every one timed with the node to itself, all on one device model."""
    return all(timing_exclusive(r) for r in records) and len({device_model(r) for r in records}) <= 1
