"""From result records to conclusions: baselines, statistics over seeds, verdicts.

Pure Python + NumPy (SciPy only for the Student t quantile); never imports a framework, so a
results file can be compared on any machine. Every number here is derived from
``results.jsonl`` alone, which is what lets ``precision-suite report DIR`` rebuild a report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from precision_suite.backends.base import family_of
from precision_suite.backends.fp8 import fp8_problems, fp8_settings
from precision_suite.backends.policy import POLICIES, find_policy
from precision_suite.config import ParityConfig
from precision_suite.jobs import BASELINE_POLICY
from precision_suite.measure.timing import SpeedEstimate
from precision_suite.results import (
    FAILURE_STATUSES,
    SPEED_KIND,
    Outcome,
    Record,
    device_label,
    is_dp_reference,
    is_job_failure,
    is_noise_floor_run,
    latest_by_job,
    world_size,
)
from precision_suite.verdicts.cross_framework import framework_pair
from precision_suite.verdicts.data_parallel import ScalingRow, scaling_rows
from precision_suite.verdicts.hardware import emulation
from precision_suite.verdicts.speed import (
    SpeedPhase,
    Windows,
    device_model,
    speed_comparable,
    speed_phases,
    timing_exclusive,
)
from precision_suite.verdicts.stats import (
    FAIL,
    INCONCLUSIVE,
    PARITY_METRICS,
    PASS,
    Equivalence,
    describe,
    records_equivalence,
    t_quantile,
)

# Outcomes of a verdict: PASS, FAIL and INCONCLUSIVE (precision_suite.verdicts.stats) and these. Only
# FAIL and FAILED of an enforced verdict make `check` exit 1; `check --strict` adds INCONCLUSIVE.
FAILED = Outcome.FAILED  # every seed of the policy failed to produce a result
NO_BASELINE = Outcome.NO_BASELINE
NOT_COMPARABLE = Outcome.NOT_COMPARABLE
INFO = Outcome.INFO  # a headline whose only failure is information-only


# What the comparison assumes where a record carries no parity settings: the config's defaults.
PARITY_DEFAULTS = ParityConfig()

# Where a row's speedup was measured (``Speedup.source``).
PAIRED = "paired"  # the speed phase: baseline and policy timed in rotation in one worker
TIMED_JOBS = "timed jobs"  # the training jobs, each timed alone (speed phase off, one job at a time)


@dataclass
class Verdict:
    """One checkable claim. ``enforced`` is False for information-only verdicts (``-pure``
    parity unless ``check_pure``), which are shown but never fail ``check``."""

    name: str  # parity | cross-framework | precision-active | status
    subject: str  # e.g. "mlp/digits/cpu torch-amp bf16-mixed"
    outcome: str  # pass | fail | inconclusive | failed | no baseline | n/a
    detail: str
    enforced: bool = True
    # The accuracy equivalence test behind a parity / cross-framework verdict.
    equivalence: Equivalence | None = None
    # cross-framework: the first step at which fp32 with its initial weights nudged by one ulp
    # departs from fp32 by more than the rtol (the run's own chaos); None when it never did
    # within the noise-floor run, or when no such run was made.
    divergence_horizon: int | None = None

    @property
    def is_failure(self) -> bool:
        return self.enforced and self.outcome in (FAIL, FAILED)

    @property
    def is_inconclusive(self) -> bool:
        return self.enforced and self.outcome == INCONCLUSIVE


@dataclass(frozen=True)
class Speedup:
    """A row's speedup over its fp32 baseline (baseline step time / row step time) with its 95 %
    interval and where it was measured: the one figure the report, ``advise``, ``diff`` and
    ``benchmark.json`` read (``row_speed`` sets it). ``noisy_reason``: shown, never claimed."""

    estimate: float
    ci_low: float | None  # None: no interval (one seed timed without windows)
    ci_high: float | None
    source: str  # PAIRED | TIMED_JOBS
    noisy_reason: str = ""

    @property
    def defined(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    @classmethod
    def paired(cls, estimate: SpeedEstimate) -> Speedup:
        return cls(estimate.speedup, estimate.ci_low, estimate.ci_high, PAIRED, estimate.noisy_reason)


@dataclass
class Row:
    """One backend × policy of one (model, dataset, device) group, aggregated over seeds."""

    model: str
    dataset: str
    device: str
    backend: str
    runtime: str  # what executed it (the records' "framework")
    policy: str
    family: str = ""  # the API family (torch, keras); "" means the runtime's usual one
    seeds_ok: list[int] = field(default_factory=list)
    seeds_failed: list[int] = field(default_factory=list)
    accuracy_values: list[float] = field(default_factory=list)
    accuracy_mean: float | None = None
    accuracy_ci95: float | None = None  # half-width; None with fewer than two seeds
    baseline: str | None = None  # "torch-amp fp32"; None when this row has no baseline
    is_baseline: bool = False
    delta_pts: float | None = None
    # The training jobs' own timing, as information: never a speedup unless they were timed alone.
    step_time_ms_p50: float | None = None
    samples_per_s: float | None = None
    peak_memory_bytes: float | None = None
    memory_source: str | None = None
    memory_ratio: float | None = None
    skipped_steps: float | None = None  # mean over seeds
    loss_scale_final: float | None = None  # median over seeds
    observed: dict[str, Any] = field(default_factory=dict)
    emulated: bool = False
    emulated_reason: str = ""
    fp8_scaling: str = ""  # an FP8 policy: how its backend chose the FP8 scales (environ.fp8.scaling)
    verdicts: list[Verdict] = field(default_factory=list)
    # The speedup over ``baseline`` (``row_speed``); None: not measured, ``speed_unmeasured`` says why.
    speed: Speedup | None = None
    speed_unmeasured: str = ""
    # The timed windows this row's speed figures come from (a baseline's too): benchmark.json's rounds.
    speed_windows: Windows | None = None
    why_not_faster: list[str] = field(default_factory=list)  # precision_suite.verdicts.diagnose

    def __post_init__(self) -> None:
        self.family = self.family or family_of(self.runtime)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.policy}"

    @property
    def framework(self) -> str:
        """The runtime, under its name from before family and runtime were apart."""
        return self.runtime

    @property
    def implementation(self) -> tuple[str, str]:
        """(family, runtime): what a baseline shares with its rows, and what the cross-framework
        check compares one of against another."""
        return self.family, self.runtime

    @property
    def speedup(self) -> float | None:
        return None if self.speed is None else self.speed.estimate

    @property
    def speedup_min(self) -> float | None:
        """The lower end of the speedup's 95 % interval."""
        return None if self.speed is None else self.speed.ci_low

    @property
    def speedup_max(self) -> float | None:
        return None if self.speed is None else self.speed.ci_high

    @property
    def speed_source(self) -> str:
        return "" if self.speed is None else self.speed.source

    @property
    def noisy_reason(self) -> str:
        """Set: the speedup is shown but never claimed (like emulated)."""
        return "" if self.speed is None else self.speed.noisy_reason

    @property
    def subject(self) -> str:
        return f"{self.model}/{self.dataset}/{self.device} {self.label}"

    @property
    def all_failed(self) -> bool:
        return not self.seeds_ok and bool(self.seeds_failed)

    @property
    def is_pure(self) -> bool:
        policy = find_policy(self.policy)
        return policy is not None and policy.pure

    def verdict(self, name: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.name == name), None)

    @property
    def overall(self) -> str:
        """The row's worst outcome, for one verdict cell."""
        outcomes = [v.outcome for v in self.verdicts if v.enforced]
        for outcome in (FAILED, FAIL, INCONCLUSIVE, NO_BASELINE, PASS):
            if outcome in outcomes:
                return outcome
        return NOT_COMPARABLE


@dataclass
class JobNote:
    """A job that produced no result: unavailable (listed) or failed (listed as a failure)."""

    job_id: str
    model: str
    dataset: str
    device: str
    backend: str
    policy: str
    seed: int | None
    status: str
    message: str


@dataclass
class Group:
    model: str
    dataset: str
    device: str
    device_name: str
    tolerance_pts: float  # in the unit of parity_metric (points; nats for loss)
    rows: list[Row] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # cross-framework
    parity_metric: str = "accuracy"  # parity.metric: what parity compares (stats.PARITY_METRICS)

    @property
    def tolerance_text(self) -> str:
        """``±1.5 pt`` or ``±0.02 nats (test loss)``."""
        unit = PARITY_METRICS[self.parity_metric].unit
        return f"±{self.tolerance_pts:g} {unit}" + ("" if self.parity_metric == "accuracy" else " (test loss)")

    @property
    def key(self) -> str:
        return f"{self.model}/{self.dataset}/{self.device}"

    @property
    def key_tuple(self) -> tuple[str, str, str]:
        return self.model, self.dataset, self.device


@dataclass
class Headline:
    group: str
    row: str
    text: str
    outcome: str


@dataclass
class Comparison:
    groups: list[Group]
    headlines: list[Headline]
    unavailable: list[JobNote]
    failed_jobs: list[JobNote]
    tolerance_pts: float | None  # None when groups use different recorded tolerances
    check_pure: bool
    cross_framework_rtol: float
    run_dir: str | None = None  # where the records came from, for the commands a report suggests
    scaling: list[ScalingRow] = field(default_factory=list)  # data-parallel runs only

    @property
    def rows(self) -> list[Row]:
        return [row for group in self.groups for row in group.rows]

    @property
    def verdicts(self) -> list[Verdict]:
        out: list[Verdict] = []
        for group in self.groups:
            for row in group.rows:
                out.extend(row.verdicts)
            out.extend(group.verdicts)
        return out


# --- statistics ------------------------------------------------------------------------------


def mean_ci95(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and half-width of the two-sided 95% Student t interval. One value: the interval is
    undefined (None), not zero — one seed says nothing about seed-to-seed spread."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = float(np.mean(finite))
    if len(finite) < 2:
        return mean, None
    sem = float(np.std(finite, ddof=1)) / math.sqrt(len(finite))
    return mean, t_quantile(0.975, len(finite) - 1) * sem


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _exp_interval(mean: float, half: float | None) -> tuple[float, float | None, float | None]:
    if half is None:
        return math.exp(mean), None, None
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _welch_log_diff(base_s: tuple[float, ...], row_s: tuple[float, ...]) -> tuple[float, float | None]:
    """Difference of mean log window times and the half-width of its Welch 95 % interval."""
    a, b = np.log(base_s), np.log(row_s)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = va + vb
    if se2 == 0:
        return diff, 0.0
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, t_quantile(0.975, df) * math.sqrt(se2)


def jobs_speedup(base_records: list[Record], row_records: list[Record]) -> Speedup | None:
    """The speedup of training jobs timed alone (ok records of the baseline and of the row) on
    the log scale, so its interval is symmetric in "faster" and "slower": with two or more seeds
    in both, the geometric mean of the per-seed ratios of ``step_time_ms_p50`` and its Student t
    interval (seeds paired: same weights and batches); with one, Welch's interval of the
    difference of mean log window times (each timed window one observation), or no interval
    when the records kept no windows. Labelled noisy when the interval includes 1.0."""
    base = {r.get("seed"): v for r in base_records if _finite_positive(v := r.metric("step_time_ms_p50"))}
    row = {r.get("seed"): v for r in row_records if _finite_positive(v := r.metric("step_time_ms_p50"))}
    shared = sorted(set(base) & set(row), key=str)
    if len(shared) >= 2:
        mean, half = mean_ci95([math.log(base[s] / row[s]) for s in shared])
        if mean is None:
            return None
        estimate, low, high = _exp_interval(mean, half)
    elif len(shared) == 1:
        seed = shared[0]
        base_w = Windows.from_records([r for r in base_records if r.get("seed") == seed])
        row_w = Windows.from_records([r for r in row_records if r.get("seed") == seed])
        if base_w is not None and row_w is not None:
            estimate, low, high = _exp_interval(*_welch_log_diff(base_w.step_s, row_w.step_s))
        else:
            estimate, low, high = base[seed] / row[seed], None, None
    else:
        return None
    noisy = f"95% CI {low:.2f}–{high:.2f} includes 1.0" if low is not None and low <= 1.0 <= high else ""  # type: ignore[operator]
    return Speedup(estimate, low, high, TIMED_JOBS, noisy)


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


# --- verdicts ----------------------------------------------------------------------------------


def _expected_loss_scaling(policy: str, config: dict[str, Any]) -> str:
    found = find_policy(policy)
    if found is None:
        return "none"
    loss_scale = config.get("loss_scale") or {}
    return found.loss_scaling_mode(loss_scale.get("enabled", True), loss_scale.get("dynamic", True))


def _precision_problems(record: dict[str, Any]) -> list[str]:
    policy = record.get("policy", "")
    expected = find_policy(policy)
    observed = record.get("observed") or {}
    if expected is None:
        return []  # a third-party policy: nothing to hold it to
    if not observed:
        return ["observed precision not recorded"]
    problems = []
    compute = observed.get("compute_dtype")
    claimed = ((record.get("config") or {}).get("model") or {}).get("keep_fp32") or []
    # With blocks kept in fp32, compute is read outside them: None when nothing is left outside.
    if compute != expected.compute_dtype and not (claimed and compute is None):
        problems.append(f"compute {compute}, expected {expected.compute_dtype}")
    problems += _kept_block_problems(claimed, observed.get("keep_fp32") or {}, expected.compute_dtype)
    updated = observed.get("master_dtype") or observed.get("param_dtype")
    if updated != expected.master_dtype:
        what = "master" if observed.get("master_dtype") else "param"
        problems.append(f"{what} {updated}, expected {expected.master_dtype}")
    scaling = observed.get("loss_scaling")
    want_scaling = _expected_loss_scaling(policy, record.get("config") or {})
    if scaling is not None and scaling != want_scaling:
        problems.append(f"loss scaling {scaling}, expected {want_scaling}")
    if (fp8 := fp8_settings(expected)) is not None:
        problems.extend(fp8_problems(observed, fp8))
    return problems


def _kept_block_problems(claimed: list[str], observed: dict[str, Any], policy_compute: str) -> list[str]:
    """Every block the config keeps in fp32 must have been seen running in fp32 (under an fp32
    policy there is nothing to keep apart, so nothing to check)."""
    if policy_compute == "float32":
        return []
    problems = []
    for name in claimed:
        seen = observed.get(name)
        if seen is None:
            problems.append(f"kept block {name}: not observed")
            continue
        for what, allowed in (("compute_dtype", {"float32"}), ("param_dtype", {"float32", None})):
            if seen.get(what) not in allowed:  # a block without parameters has no param dtype
                problems.append(f"kept block {name}: {what.removesuffix('_dtype')} {seen.get(what)}, expected float32")
    return problems


def _precision_verdict(row: Row, records: list[dict[str, Any]]) -> Verdict:
    problems = []
    for record in records:
        for problem in _precision_problems(record):
            problems.append(f"seed {record.get('seed')}: {problem}")
    if problems:
        return Verdict("precision-active", row.subject, FAIL, "; ".join(problems))
    dtype = row.observed.get("compute_dtype")
    detail = f"observed compute {dtype}"
    if row.observed.get("fp8_layers"):
        operands = row.observed.get("fp8_operands") or {}
        fp8 = ", ".join(sorted({*operands.get("forward", []), *operands.get("backward", [])}))
        detail += f"; {fp8} in {len(row.observed['fp8_layers'])} FP8 layers"
    return Verdict("precision-active", row.subject, PASS, detail)


def seed_looks(records: list[dict[str, Any]]) -> int:
    """How many looks the run's seed plan has (``Job.seed_looks``; 1 for a fixed list)."""
    return max((len((r.get("config") or {}).get("seed_looks") or [0]) for r in records), default=1)


def _parity_verdict(
    row: Row,
    records: list[dict[str, Any]],
    base_records: list[dict[str, Any]],
    tolerance_pts: float,
    check_pure: bool,
    looks: int,
    metric: str = "accuracy",
) -> Verdict:
    enforced = check_pure or not row.is_pure
    note = "" if enforced else " (information: -pure policies are not checked)"
    if row.baseline is None:
        return Verdict("parity", row.subject, NO_BASELINE, f"no fp32 baseline of {row.runtime}{note}")
    eq = records_equivalence(records, base_records, tolerance_pts, looks, metric)
    detail = f"{describe(eq)} vs {row.baseline}{note}"
    return Verdict("parity", row.subject, eq.outcome, detail, enforced=enforced, equivalence=eq)


def _cross_framework_verdicts(
    group: Group,
    by_row: dict[tuple[str, str], list[dict[str, Any]]],
    noise_floor: dict[tuple[str, str, int], dict[str, Any]],
    rtol: float,
    steps: int,
    looks: int,
) -> list[Verdict]:
    """The fp32 of each implementation (API family on a runtime) against the reference's, torch's
    when present (rows are in ``row_order``), where both have an fp32 result
    (``precision_suite.verdicts.cross_framework``). A Keras backend on the torch runtime is a Keras
    implementation: held against torch like every other."""
    fp32_rows: dict[tuple[str, str], Row] = {}
    for row in group.rows:
        if row.policy == BASELINE_POLICY and row.seeds_ok:
            fp32_rows.setdefault(row.implementation, row)
    if len(fp32_rows) < 2:
        return []
    reference, *others = fp32_rows.values()
    verdicts = []
    for other in others:
        subject = f"{group.key} {reference.label} vs {other.label}"
        found = framework_pair(
            reference, other, by_row, noise_floor, group.tolerance_pts, rtol, steps, looks, group.parity_metric
        )
        verdicts.append(
            Verdict(
                "cross-framework",
                subject,
                found.outcome,
                found.detail,
                equivalence=found.equivalence,
                divergence_horizon=found.divergence_horizon,
            )
        )
    return verdicts


# --- aggregation -----------------------------------------------------------------------------


def _note(record: dict[str, Any]) -> JobNote:
    return JobNote(
        job_id=str(record.get("job_id")),
        model=record.model_name,
        dataset=record.dataset_name,
        device=str(record.get("device")),
        backend=str(record.get("backend")),
        policy=str(record.get("policy")),
        seed=record.get("seed"),
        status=str(record.get("status")),
        message=str(record.get("error") or "(no message)"),
    )


def _parity_setting(records: list[Record], key: str, default: Any = None) -> Any:
    """The first recorded ``config.parity[key]`` among ``records``, else ``default``."""
    return next((value for r in records if (value := r.setting("parity", key)) is not None), default)


def _aggregate_row(row: Row, records: list[dict[str, Any]]) -> None:
    row.seeds_ok = sorted(r.get("seed") for r in records)
    row.accuracy_values = [v for r in records if (v := r.metric("test_accuracy")) is not None]
    row.accuracy_mean, row.accuracy_ci95 = mean_ci95(row.accuracy_values)
    row.step_time_ms_p50 = _mean([r.metric("step_time_ms_p50") for r in records])
    row.samples_per_s = _mean([r.metric("samples_per_s") for r in records])
    row.peak_memory_bytes = _mean([r.metric("peak_memory_bytes") for r in records])
    sources = {(r.get("metrics") or {}).get("memory_source") for r in records} - {None}
    row.memory_source = " / ".join(sorted(map(str, sources))) or None
    row.skipped_steps = _mean([r.metric("skipped_steps") for r in records])
    # Median, not mean: a loss scale is a power of the growth factor, and the median is one the
    # scaler actually reached (the mean of 2^16, 2^15, 2^15 is no scale any seed had).
    scales = [v for r in records if (v := r.metric("loss_scale_final")) is not None]
    row.loss_scale_final = float(np.median(scales)) if scales else None
    if records:
        row.observed = dict(records[0].get("observed") or {})


def compare(
    records: list[dict[str, Any]],
    tolerance_pts: float | None = None,
    check_pure: bool | None = None,
    cross_framework_rtol: float | None = None,
    cross_framework_steps: int | None = None,
    speed_records: list[dict[str, Any]] | None = None,
) -> Comparison:
    """Turn result records into rows, verdicts and headlines.

    ``tolerance_pts``, ``check_pure`` and ``cross_framework_rtol`` default to what the records'
    config recorded (``config.parity``); an explicit value overrides it. A resumed run's older
    records of the same job are superseded by the newest. ``speed_records`` (the speed phase's,
    ``ReadResult.speed``) replace the rows' speedups with paired ones (``precision_suite.measure.speed_phase``).
    """
    records, noise_floor, speed_records = _sorted_records(records, speed_records or [])
    phases: dict[tuple[str, str, str], list[SpeedPhase]] = defaultdict(list)
    for phase in speed_phases(speed_records):
        phases[phase.key].append(phase)
    unavailable, failed_jobs = _job_notes(records, speed_records)

    if check_pure is None:
        check_pure = bool(_parity_setting(records, "check_pure", False))
    if cross_framework_steps is None:
        cross_framework_steps = int(
            _parity_setting(records, "cross_framework_steps", PARITY_DEFAULTS.cross_framework_steps)
        )
    if cross_framework_rtol is None:
        cross_framework_rtol = float(
            _parity_setting(records, "cross_framework_rtol", PARITY_DEFAULTS.cross_framework_rtol)
        )

    groups: list[Group] = []
    headlines: list[Headline] = []
    tolerances = set()
    for (model, dataset, device), group_records in sorted(_records_by_group(records).items()):
        metric = str(_parity_setting(group_records, "metric", PARITY_DEFAULTS.metric))
        tol = tolerance_pts
        if tol is None:
            key = PARITY_METRICS[metric].tolerance_key
            recorded = _parity_setting(group_records, key)
            tol = float(recorded) if recorded is not None else float(getattr(PARITY_DEFAULTS, key))
        if metric == "accuracy":
            tolerances.add(tol)
        nudged = _noise_floor_of(noise_floor, model, dataset, device)
        group = _build_group(
            model,
            dataset,
            device,
            group_records,
            tol,
            check_pure,
            cross_framework_rtol,
            cross_framework_steps,
            nudged,
            metric=metric,
        )
        _distributed_verdicts(group, group_records, records, noise_floor)
        row_speed(group, phases.pop(group.key_tuple, []), group_records)
        groups.append(group)
        headlines.extend(_headlines(group))
    for (model, dataset, device), group_phases in sorted(phases.items()):  # speed_only: no job records
        name = group_phases[0].environ.get("device_name") or ""
        group = Group(model, dataset, device, name, PARITY_DEFAULTS.tolerance_pts)
        row_speed(group, group_phases, [])
        groups.append(group)
        headlines.extend(_headlines(group))

    return Comparison(
        groups=groups,
        headlines=headlines,
        unavailable=unavailable,
        failed_jobs=failed_jobs,
        tolerance_pts=tolerances.pop() if len(tolerances) == 1 else tolerance_pts,
        check_pure=check_pure,
        cross_framework_rtol=cross_framework_rtol,
        scaling=scaling_rows(records),
    )


def _sorted_records(
    records: list[dict[str, Any]], speed_records: list[dict[str, Any]]
) -> tuple[list[Record], list[Record], list[dict[str, Any]]]:
    """(the newest record of each job, the one-ulp noise-floor runs, the speed records). Speed
    records mixed into ``records`` (a raw read of results.jsonl) are taken as such. Noise-floor
    runs measure the run's own chaos for the cross-framework verdict; they are no result of their
    own (short, perturbed) and stay out of every statistic."""
    records = [r if isinstance(r, Record) else Record(r) for r in records]
    speed_records = [*speed_records, *(r for r in records if r.get("kind") == SPEED_KIND)]
    jobs = latest_by_job([r for r in records if r.get("kind") != SPEED_KIND and "job_id" in r]).values()
    noise_floor = [r for r in jobs if is_noise_floor_run(r)]
    return [r for r in jobs if not is_noise_floor_run(r)], noise_floor, speed_records


def _job_notes(records: list[Record], speed_records: list[dict[str, Any]]) -> tuple[list[JobNote], list[JobNote]]:
    """(unavailable, failed) jobs and speed phases: those that produced no result."""
    unavailable = [_note(r) for r in records if r.get("status") == "unavailable"]
    failed_jobs = [_note(r) for r in records if r.get("status") in FAILURE_STATUSES]
    failed_speed = latest_by_job(speed_records).values()
    failed_jobs += [_note(r) for r in failed_speed if r.get("status") in FAILURE_STATUSES]
    # An unknown status is not ok and not known-harmless: treat it as a failure, saying so.
    for record in records:
        if record.get("status") not in FAILURE_STATUSES | {"ok", "unavailable"}:
            note = _note(record)
            note.message = f"unknown status {record.get('status')!r}: {note.message}"
            failed_jobs.append(note)
    return unavailable, failed_jobs


def _records_by_group(records: list[Record]) -> dict[tuple[str, str, str], list[Record]]:
    """The records of each comparison group (model, dataset, device label)."""
    by_group: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    for record in records:
        # One-process references of data-parallel runs only feed the data-parallel verdict.
        if record.get("status") == "unavailable" or is_dp_reference(record):
            continue
        key = (record.model_name, record.dataset_name, device_label(record))
        by_group[key].append(record)
    return by_group


def _noise_floor_of(
    noise_floor: list[Record], model: str, dataset: str, device: str
) -> dict[tuple[str, str, int], Record]:
    """The group's ok noise-floor runs by (backend, policy, seed)."""
    return {
        (str(r.get("backend")), str(r.get("policy")), r.get("seed")): r
        for r in noise_floor
        if r.get("status") == "ok" and (r.model_name, r.dataset_name, str(r.get("device"))) == (model, dataset, device)
    }


def _distributed_verdicts(
    group: Group, group_records: list[dict[str, Any]], records: list[dict[str, Any]], noise_floor: list[Record]
) -> None:
    """replica-consistency on every row of an N-replica group, data-parallel on its fp32 rows
    (``precision_suite.verdicts.data_parallel``)."""
    from precision_suite.verdicts.data_parallel import data_parallel, references_for, replica_consistency

    for row in group.rows:
        ok = [
            r
            for r in group_records
            if r.get("status") == "ok" and (r.get("backend"), r.get("policy")) == (row.backend, row.policy)
        ]
        if not ok or world_size(ok[0]) == 1:
            continue
        row.verdicts.append(Verdict("replica-consistency", row.subject, *replica_consistency(row.subject, ok)))
        if row.policy == BASELINE_POLICY:
            references = [ref for r in ok for ref in references_for(r, records)]
            row.verdicts.append(Verdict("data-parallel", row.subject, *data_parallel(ok, references, noise_floor)))


# Records of a group by (backend, policy).
ByBackendPolicy = dict[tuple[str, str], list[Record]]


def _rows_by_key(records: list[Record]) -> tuple[ByBackendPolicy, ByBackendPolicy]:
    """(every record, the ok ones) of each row, by (backend, policy)."""
    ok_by_row: ByBackendPolicy = defaultdict(list)
    all_by_row: ByBackendPolicy = defaultdict(list)
    for record in records:
        key = (str(record.get("backend")), str(record.get("policy")))
        all_by_row[key].append(record)
        if record.get("status") == "ok":
            ok_by_row[key].append(record)
    return all_by_row, ok_by_row


def row_order(row: Row) -> tuple[bool, str, str, str, int, str]:
    """Torch's rows first (the cross-framework reference), then by family, runtime, backend and
    the order the policies were declared in."""
    rank = list(POLICIES)
    policy_rank = rank.index(row.policy) if row.policy in rank else len(rank)
    return (row.family != "torch", row.family, row.runtime, row.backend, policy_rank, row.policy)


def _new_row(group: Group, backend: str, policy: str, family: str, runtime: str, environ: dict[str, Any]) -> Row:
    row = Row(group.model, group.dataset, group.device, backend, runtime, policy, family=family)
    row.emulated_reason = emulation(policy, group.device, environ)
    row.emulated = bool(row.emulated_reason)
    row.fp8_scaling = str((environ.get("fp8") or {}).get("scaling") or "")
    return row


def _row_verdicts(
    row: Row,
    group: Group,
    all_records: list[Record],
    ok_by_row: ByBackendPolicy,
    check_pure: bool,
    looks: int,
) -> None:
    """A row's own verdicts: ``status`` when every seed failed, else parity against its baseline
    and precision-active."""
    if row.all_failed:
        statuses = sorted({r.get("status") for r in all_records})
        detail = f"all {len(row.seeds_failed)} seed(s) failed ({', '.join(statuses)})"
        enforced = any(is_job_failure(r, check_pure) for r in all_records)
        if not enforced:
            detail += " (information: -pure policies are not checked)"
        row.verdicts.append(Verdict("status", row.subject, FAILED, detail, enforced=enforced))
        return
    own = ok_by_row[(row.backend, row.policy)]
    if not row.is_baseline:
        base = next((other for other in group.rows if other.label == row.baseline), None)
        base_records = ok_by_row[(base.backend, base.policy)] if base is not None else []
        row.verdicts.append(
            _parity_verdict(row, own, base_records, group.tolerance_pts, check_pure, looks, group.parity_metric)
        )
    row.verdicts.append(_precision_verdict(row, own))


def _build_group(
    model: str,
    dataset: str,
    device: str,
    records: list[Record],
    tolerance_pts: float,
    check_pure: bool,
    rtol: float,
    cf_steps: int,
    noise_floor: dict[tuple[str, str, int], dict[str, Any]] | None = None,
    metric: str = "accuracy",
) -> Group:
    all_by_row, ok_by_row = _rows_by_key(records)
    for ok in ok_by_row.values():
        ok.sort(key=lambda r: r.get("seed") or 0)
    device_name = next((name for r in records if (name := r.environ.get("device_name"))), "")
    group = Group(model, dataset, device, device_name, tolerance_pts, parity_metric=metric)
    for (backend, policy), found in all_by_row.items():
        ok = ok_by_row[(backend, policy)]
        environ = next((r.environ for r in ok), found[0].environ)
        row = _new_row(group, backend, policy, found[0].family, found[0].runtime, environ)
        row.seeds_failed = sorted(r.get("seed") for r in found if r.get("status") != "ok")
        _aggregate_row(row, ok)
        group.rows.append(row)
    group.rows.sort(key=row_order)

    looks = seed_looks(records)
    for row in group.rows:
        _attach_baseline(row, group, ok_by_row)
        _row_verdicts(row, group, all_by_row[(row.backend, row.policy)], ok_by_row, check_pure, looks)
    group.verdicts = _cross_framework_verdicts(group, ok_by_row, noise_floor or {}, rtol, cf_steps, looks)
    return group


def _attach_baseline(row: Row, group: Group, ok_by_row: ByBackendPolicy) -> None:
    """The baseline is fp32 of the same API family on the same runtime: the row's own backend's
    fp32 if it has one with a result, else the backend of that family and runtime with the most
    fp32 seeds."""
    candidates = [
        other
        for other in group.rows
        if other.implementation == row.implementation
        and other.policy == BASELINE_POLICY
        and ok_by_row[(other.backend, other.policy)]
    ]
    if not candidates:
        return
    candidates.sort(key=lambda o: (o.backend != row.backend, -len(o.seeds_ok), o.backend))
    base = candidates[0]
    if base is row:
        row.is_baseline = True
        return
    if not row.seeds_ok:
        row.baseline = base.label
        return
    row.baseline = base.label
    if row.accuracy_mean is not None and base.accuracy_mean is not None:
        row.delta_pts = 100.0 * (row.accuracy_mean - base.accuracy_mean)
    # Allocator peaks and CPU accountings measure different things: no ratio across sources.
    if (
        row.peak_memory_bytes
        and base.peak_memory_bytes
        and row.memory_source is not None
        and row.memory_source == base.memory_source
    ):
        row.memory_ratio = row.peak_memory_bytes / base.peak_memory_bytes


# --- speed -------------------------------------------------------------------------------------


def _unmeasured_reason(records: list[Record]) -> str:
    """Why the step times of these (a baseline's and a row's) training jobs give no speedup, or ""
    when they may be set against each other (``speed_comparable``)."""
    if speed_comparable(records):
        return ""
    if not all(timing_exclusive(r) for r in records):
        return "not measured: the training jobs ran side by side (untimed) and no speed phase timed this row"
    models = sorted({str(device_model(r)) for r in records})
    return f"not measured: the training jobs ran on different device models ({', '.join(models)})"


def row_speed(group: Group, phases: list[SpeedPhase], records: list[Record]) -> None:
    """Set every row's speed (``Row.speed``, ``speed_windows``, ``speed_unmeasured``) by the one
    rule every output reads:

    1. the paired speed phase where one timed the row (``precision_suite.verdicts.speed``: median of the
       per-round ratios, its order-statistic 95 % CI, its noise label); a phase's rows that no
       training job produced (``speed_only``) are added;
    2. else the row's and its baseline's training jobs (``jobs_speedup``), where every one was
       timed alone (``placement.timed``, nothing beside it: ``speed.enabled: false`` and
       ``runner.parallel_jobs: 1``) on one device model;
    3. else not measured, saying why: never a figure from jobs that ran side by side.

    Then the "why no speedup" lines of the group's half-precision rows (``precision_suite.verdicts.diagnose``)."""
    from precision_suite.verdicts.diagnose import diagnose_group

    timed_by_phase = _paired_speed(group, phases)
    _jobs_speed(group, records, timed_by_phase)
    diagnose_group(group, {(phase.family, phase.runtime): phase for phase in phases}, records)


def _paired_speed(group: Group, phases: list[SpeedPhase]) -> set[tuple[str, str]]:
    """Rule 1 of ``row_speed``: the speed phases' paired speedups; returns the (backend, policy)
    rows they timed."""
    rows = {(row.backend, row.policy): row for row in group.rows}
    timed_by_phase: set[tuple[str, str]] = set()
    for phase in phases:

        def row_for(backend: str, policy: str, phase: SpeedPhase = phase) -> Row:
            row = rows.get((backend, policy))
            if row is None:
                row = _new_row(group, backend, policy, phase.family, phase.runtime, phase.environ)
                rows[(backend, policy)] = row
                group.rows.append(row)
            timed_by_phase.add((backend, policy))
            return row

        base = row_for(phase.baseline_backend, phase.baseline_policy)
        base.is_baseline, base.baseline = True, None
        base.speed_windows = phase.windows.get(phase.baseline_label)
        for candidate in phase.candidates:
            row = row_for(candidate.backend, candidate.policy)
            row.baseline = base.label
            row.speed = Speedup.paired(candidate.estimate)
            row.speed_windows = phase.windows.get(candidate.label)
    return timed_by_phase


def _jobs_speed(group: Group, records: list[Record], timed_by_phase: set[tuple[str, str]]) -> None:
    """Rules 2 and 3 of ``row_speed`` for the rows no phase timed: the training jobs' own speedup
    where they were timed alone, else why not."""
    _, ok = _rows_by_key(records)
    for row in group.rows:
        own = ok[(row.backend, row.policy)]
        if (row.backend, row.policy) in timed_by_phase or not own:
            continue
        if row.is_baseline:
            if not _unmeasured_reason(own):
                row.speed_windows = Windows.from_records(own)
            continue
        if row.baseline is None:
            continue
        base_backend, base_policy = row.baseline.split(" ", 1)
        both = ok[(base_backend, base_policy)] + own
        row.speed_unmeasured = _unmeasured_reason(both)
        if not row.speed_unmeasured:
            row.speed = jobs_speedup(ok[(base_backend, base_policy)], own)
            row.speed_windows = Windows.from_records(own)


# --- headlines ---------------------------------------------------------------------------------


def format_speed(row: Row) -> str:
    if row.speedup is None:
        return "speed not measured" if row.speed_unmeasured else "speed n/a"
    if row.emulated:
        return f"emulated ({row.speedup:.2f}×, no speed claim)"
    if row.noisy_reason:
        return f"noisy ({row.speedup:.2f}×, no speed claim: {row.noisy_reason})"
    if row.speedup >= 1:
        return f"{row.speedup:.1f}× faster"
    return f"{1 / row.speedup:.1f}× slower"


def _headlines(group: Group) -> list[Headline]:
    out = []
    for row in group.rows:
        if row.is_baseline:
            continue
        if row.all_failed:
            text = f"{row.label}: all {len(row.seeds_failed)} seed(s) failed"
            out.append(Headline(group.key, row.label, text, FAILED))
            continue
        parity = row.verdict("parity")
        precision = row.verdict("precision-active")
        parts = []
        if row.baseline is None:
            parts.append(f"no fp32 baseline of {row.runtime}")
        else:
            parts.append(format_speed(row))
            if row.delta_pts is not None:
                parts.append(f"{row.delta_pts:+.1f} pt".replace("-", "−"))
        if parity is not None and parity.outcome in (PASS, FAIL, INCONCLUSIVE):
            suffix = "" if parity.enforced else " (info)"
            parts.append(f"parity {parity.outcome.upper()}{suffix}")
        if precision is not None and precision.outcome == FAIL:
            parts.append("precision-active FAIL")
        if row.seeds_failed:
            parts.append(f"{len(row.seeds_failed)} seed(s) failed")
        text = f"{row.label}: " + ", ".join(parts)
        if any(v.is_failure for v in row.verdicts):
            outcome = FAIL
        elif any(not v.enforced and v.outcome == FAIL for v in row.verdicts):
            outcome = INFO
        else:
            outcome = row.overall
        out.append(Headline(group.key, row.label, text, outcome))
    return out


def check_exit_code(comparison: Comparison, strict: bool = False) -> int:
    """1 if any enforced verdict fails (a failed policy included), or with ``strict`` is
    INCONCLUSIVE; else 0."""
    return 1 if any(v.is_failure or (strict and v.is_inconclusive) for v in comparison.verdicts) else 0
