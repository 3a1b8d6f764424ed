"""The cross-framework verdict: the fp32 runs of two frameworks (the reference, torch when
present, and another), for each shared seed, are one computation up to rounding.

Training is chaotic: however small, rounding differences grow until two runs decorrelate,
so agreement "for the first N steps" is only a fair demand up to where the run disagrees
with *itself*. The noise-floor runs measure that: each framework's fp32, same seed, every
initial weight nudged by one ulp. Its divergence horizon is the first step where that
curve departs from the unperturbed one by more than ``rtol``. Cross-framework losses must
agree within ``rtol`` at every step up to the horizon (and at least ``MIN_AGREEMENT_STEPS``);
past it, where both are draws of the same chaos, the median cross-framework divergence over
the rest of the noise-floor run may not exceed ``stats.PAST_HORIZON_FACTOR`` times the median
self divergence in more than half of the seeds (``stats.past_horizon_problem``). Without
noise-floor runs, the first ``steps`` steps are held to ``rtol``. Accuracy: the equivalence test
of parity, paired per seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from precision_suite.results import Outcome
from precision_suite.verdicts.stats import (
    FAIL,
    INCONCLUSIVE,
    PARITY_METRICS,
    PASS,
    Equivalence,
    PastHorizon,
    chaos_aware_agreement,
    describe,
    past_horizon_problem,
    records_equivalence,
)

# Per-step cross-framework agreement is required over at least this many first steps, however
# early the run's own divergence horizon comes.
MIN_AGREEMENT_STEPS = 10


@dataclass
class PairVerdict:
    """The outcome of one reference-vs-other pair, with what it rests on."""

    outcome: str
    detail: str
    equivalence: Equivalence | None = None
    divergence_horizon: int | None = None


@dataclass
class CurveAgreement:
    """The per-step loss agreement of a pair over its shared seeds."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    worst: float = 0.0
    horizons: list[int] = field(default_factory=list)
    past: dict[int, PastHorizon] = field(default_factory=dict)  # seed: its past-the-horizon divergences
    floors: int = 0  # seeds with a noise-floor run
    same_computation: bool = True  # every step within rtol and the same test accuracy, every seed


def optimizer_rules(records: Any) -> str:
    """Whose optimizer update rules a row's jobs ran: the backend option ``optimizer_rules``
    where the backend has one (tf-keras, keras-jax), else torch's (every built-in backend's default)."""
    for record in records:
        options = (record.get("config") or {}).get("options") or {}
        if options.get("optimizer_rules"):
            return str(options["optimizer_rules"])
    return "torch"


def framework_pair(
    reference: Any,
    other: Any,
    by_row: dict[tuple[str, str], list[dict[str, Any]]],
    noise_floor: dict[tuple[str, str, int], dict[str, Any]],
    tolerance_pts: float,
    rtol: float,
    steps: int,
    looks: int,
    metric: str = "accuracy",
) -> PairVerdict:
    """The verdict on the fp32 rows ``reference`` and ``other`` (``precision_suite.verdicts.compare.Row``)
    of one group, from their ok records (``by_row``) and their noise-floor runs. ``metric``: the
    parity metric the seed test compares (``tolerance_pts`` is in its unit)."""
    ref_records = {r["seed"]: r for r in by_row[(reference.backend, reference.policy)]}
    other_records = {r["seed"]: r for r in by_row[(other.backend, other.policy)]}
    if not (weights_aligned(ref_records.values()) and weights_aligned(other_records.values())):
        return unpaired_pair(other_records, ref_records, tolerance_pts, looks, metric)
    rules = (optimizer_rules(ref_records.values()), optimizer_rules(other_records.values()))
    if rules[0] != rules[1]:
        # e.g. tf-keras with optimizer_rules: keras (stock Keras Adam places ε differently):
        # the curves are not meant to agree, so neither agreement nor failure is claimed.
        detail = (
            f"different optimizer rules ({reference.label}: {rules[0]}, {other.label}: {rules[1]}); "
            "per-step losses are not expected to match"
        )
        return PairVerdict(Outcome.NOT_COMPARABLE, detail)
    shared = sorted(set(ref_records) & set(other_records))
    if not shared:
        return PairVerdict(Outcome.NOT_COMPARABLE, "no seed ran in both")
    found = curve_agreement(reference, other, ref_records, other_records, shared, noise_floor, rtol, steps)
    eq = records_equivalence(other_records.values(), ref_records.values(), tolerance_pts, looks, metric)
    # describe() names a loss test itself; accuracy, the default, is named here as it always was.
    named = f"accuracy {describe(eq)}" if metric == "accuracy" else describe(eq)
    if eq.outcome == FAIL:
        found.problems.append(named)
    horizon = min(found.horizons) if found.horizons else None
    if found.floors:
        where = f"divergence horizon step {horizon}" if horizon is not None else "no self-divergence"
        scope = f"up to the horizon ({where}, one-ulp noise-floor runs of {found.floors} seed(s))"
    else:
        scope = f"over the first {steps} steps (no noise-floor run)"
    if found.problems:
        outcome, detail = FAIL, "; ".join(found.problems) + f" [{scope}]"
    else:
        outcome = eq.outcome
        detail = (
            f"{len(shared)} seed(s): per-step loss within {found.worst:.1e} relative (≤ {rtol:g}) {scope}"
            + (f"; past it {'; '.join(found.notes)}" if found.notes else "")
            + f"; {named}"
        )
        if outcome == INCONCLUSIVE and found.same_computation:
            # Too few seeds for the seed test, but no seed noise to test either: each seed's
            # two runs are one computation up to rounding, from the first step to the last.
            outcome = PASS
            detail += (
                "; PASS without the seed test: every step of every seed within the rtol and the "
                "same test accuracy (the runs are one computation up to rounding)"
            )
    return PairVerdict(outcome, detail, equivalence=eq, divergence_horizon=horizon)


def weights_aligned(records: Any) -> bool:
    """Whether the rows' families started from the same initial weights: always for the built-in
    specs; for a custom model only with ``convert`` (the Keras model then starts from the torch
    weights)."""
    for record in records:
        model = (record.get("config") or {}).get("model") or {}
        if model.get("kind") == "custom" and not model.get("convert"):
            return False
    return True


UNPAIRED_LABEL = "unpaired test (no convert: the frameworks start from different initial weights)"


def unpaired_pair(
    other_records: dict[int, Any], ref_records: dict[int, Any], tolerance_pts: float, looks: int, metric: str
) -> PairVerdict:
    """Two families that did not start from the same weights (a custom model without ``convert``):
    no per-step comparison, only an unpaired (Welch) equivalence test of the parity metric over
    every seed of each side, labelled so."""
    eq = records_equivalence(other_records.values(), ref_records.values(), tolerance_pts, looks, metric, pair=False)
    return PairVerdict(
        eq.outcome, f"{UNPAIRED_LABEL} of {PARITY_METRICS[metric].record_key}: {describe(eq)}", equivalence=eq
    )


def curve_agreement(
    reference: Any,
    other: Any,
    ref_records: dict[int, Any],
    other_records: dict[int, Any],
    shared: list[int],
    noise_floor: dict[tuple[str, str, int], dict[str, Any]],
    rtol: float,
    steps: int,
) -> CurveAgreement:
    """Per-step train-loss agreement of the pair, seed by seed, against each seed's own chaos
    (its noise-floor runs) where it has them."""
    out = CurveAgreement()
    for seed in shared:
        a, b = ref_records[seed].curve(), other_records[seed].curve()
        if a is None or b is None:
            out.problems.append(f"seed {seed}: train-loss curve not recorded")
            continue
        if a.shape != b.shape:
            out.problems.append(f"seed {seed}: {a.size} vs {b.size} steps")
            continue
        # (unperturbed, perturbed) curve of each framework with a noise-floor run of this seed
        own_pairs = [
            (curve, nudged)
            for row, curve in ((reference, a), (other, b))
            if (record := noise_floor.get((row.backend, row.policy, seed))) is not None
            and (nudged := record.curve()) is not None
        ]
        found = chaos_aware_agreement(a, b, own_pairs, rtol, steps, MIN_AGREEMENT_STEPS)
        out.same_computation &= found.everywhere and (
            ref_records[seed].metric("test_accuracy") == other_records[seed].metric("test_accuracy")
        )
        out.floors += bool(own_pairs)
        out.worst = max(out.worst, found.worst)
        if found.horizon is not None:
            out.horizons.append(found.horizon)
        out.problems += [f"seed {seed}: {p}" for p in found.problems]
        if found.past is not None:
            out.past[seed] = found.past
        if found.note:
            out.notes.append(f"seed {seed}: {found.note}")
    if (past_problem := past_horizon_problem(out.past)) is not None:
        out.problems.append(past_problem)
    return out


def fp8_scaling_note(rows: Any) -> str | None:
    """Which FP8 scaling each API family's FP8 rows used, when a group holds FP8 rows of more than
    one family (they differ: torchao recomputes the scales every step, Keras and Transformer
    Engine's DelayedScaling take them from an amax history; Keras on TensorFlow and on JAX scale
    alike); None otherwise."""
    scaled = [row for row in rows if row.fp8_scaling]
    if len({row.family for row in scaled}) < 2:
        return None
    sides = "; ".join(f"{row.label}: {row.fp8_scaling}" for row in scaled)
    return f"FP8 scaling differs across frameworks, compare their fp8 rows with it in mind: {sides}"
