"""Reading the speed records: the paired speedups of the speed phase as the comparison uses them,
and whether separately timed jobs' step times may be set against each other at all.

The phase itself runs in a worker (``precision_suite.measure.speed_phase``) and decides each
candidate's noise label there (``precision_suite.measure.timing.assess``); this module only reads
what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from precision_suite.measure.timing import SpeedEstimate
from precision_suite.results import SPEED_KIND, latest_by_job
from precision_suite.verdicts.hardware import emulation


@dataclass
class CandidateSpeed:
    """One candidate of a speed record, as the comparison reads it."""

    backend: str
    policy: str
    estimate: SpeedEstimate

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CandidateSpeed:
        names = {f.name for f in fields(SpeedEstimate)}
        return cls(raw["backend"], raw["policy"], SpeedEstimate(**{k: v for k, v in raw.items() if k in names}))


@dataclass
class SpeedPhase:
    """A speed record of one (model, dataset, device, framework), typed."""

    model: str
    dataset: str
    device: str
    framework: str
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

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SpeedPhase:
        speed = record.get("speed") or {}
        scaling = speed.get("batch_scaling") or {}
        jobs = (record.get("config") or {}).get("jobs") or [{}]
        return cls(
            model=str(record.get("model")),
            dataset=str(record.get("dataset")),
            device=str(record.get("device")),
            framework=str(record.get("framework")),
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
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.dataset, self.device


def speed_phases(records: list[dict[str, Any]]) -> list[SpeedPhase]:
    """The ok speed records (newest per id) as ``SpeedPhase``s."""
    latest = latest_by_job([r for r in records if r.get("kind") == SPEED_KIND])
    return [SpeedPhase.from_record(r) for r in latest.values() if r.get("status") == "ok"]


def attach_speed(group: Any, phases: list[SpeedPhase], records: list[dict[str, Any]]) -> None:
    """Give a comparison group (``precision_suite.verdicts.compare.Group``) the paired speedups of its
    speed phases (one per framework) — rows the training jobs did not produce are added
    (``speed_only``) — and the "why no speedup" lines of its half-precision rows."""
    from precision_suite.verdicts.compare import Row
    from precision_suite.verdicts.diagnose import diagnose_group

    rows = {(row.backend, row.policy): row for row in group.rows}
    for phase in phases:

        def row_for(backend: str, policy: str, phase: SpeedPhase = phase) -> Any:
            row = rows.get((backend, policy))
            if row is None:
                row = Row(group.model, group.dataset, group.device, backend, phase.framework, policy)
                row.emulated_reason = emulation(policy, group.device, phase.environ)
                row.emulated = bool(row.emulated_reason)
                rows[(backend, policy)] = row
                group.rows.append(row)
            return row

        base = row_for(phase.baseline_backend, phase.baseline_policy)
        base.is_baseline, base.baseline = True, None
        for candidate in phase.candidates:
            row = row_for(candidate.backend, candidate.policy)
            estimate = candidate.estimate
            row.baseline = base.label
            row.speedup, row.speedup_min, row.speedup_max = estimate.speedup, estimate.ci_low, estimate.ci_high
            row.speed_source = "paired"
            row.noisy_reason = estimate.noisy_reason
    diagnose_group(group, {phase.framework: phase for phase in phases}, records)


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
