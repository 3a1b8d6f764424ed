"""Statistics of accuracy verdicts: paired differences, equivalence tests, sequential looks.

Framework-free (NumPy, SciPy's Student t quantile), and the one place these rules live: the
comparison, the runner's seeds-on-demand and the simulation tests all call this module.

The verdict is a two one-sided test (TOST) of the accuracy difference Δ against the band
±tol, read off the (1 − 2α) confidence interval of Δ:

* PASS: the interval lies inside ±tol (equivalent: |Δ| < tol is shown at level α);
* FAIL: the interval lies entirely outside ±tol (a loss or gain beyond tol is shown);
* INCONCLUSIVE: neither; more seeds would tell. One seed is always INCONCLUSIVE.

So a PASS is wrong (|Δ| ≥ tol really) at most α of the time, and so is a FAIL (|Δ| ≤ tol
really). With seeds on demand the verdict is looked at several times, and each look could err:
the looks follow a fixed schedule (``look_schedule``) and each is tested at α / (number of
looks) (Bonferroni), which keeps the overall false-PASS and false-FAIL rates at or below α
whatever happens between looks. The price: wider intervals at every look, so more seeds to
reach a verdict than a single planned look would need. tests/suite/verdicts/test_stats_simulation.py
measures both rates by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from precision_suite.results import Outcome

ALPHA = 0.05  # per one-sided test of the TOST: a 90 % interval at one planned look

PASS, FAIL, INCONCLUSIVE = Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE

# Seed counts beyond this are not suggested: the answer is then "more than this".
MAX_SUGGESTED_SEEDS = 200
# Boundaries are inclusive up to float noise (a Δ of exactly tol computed as tol + 1e-15).
_EPS = 1e-9


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.special import stdtrit  # the ufunc behind scipy.stats.t.ppf, without its overhead

    return float(stdtrit(df, p))


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval, in the estimate's units: the suite's one interval
    (a paired accuracy difference, a run-to-run change, a speedup, a memory ratio). ``low`` and
    ``high`` are None when undefined: one seed gives no noise estimate, never a zero-width
    interval."""

    estimate: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0  # the values behind it: paired, the pairs; unpaired, the smaller side; 0 when not said
    std: float | None = None  # paired: the std of the differences

    @property
    def defined(self) -> bool:
        return self.estimate is not None and self.low is not None and self.high is not None

    @property
    def width(self) -> float:
        return self.high - self.low  # type: ignore[operator]

    def excludes(self, value: float) -> bool:
        return self.defined and not (self.low <= value <= self.high)  # type: ignore[operator]

    def below(self, other: Interval) -> bool:
        """Entirely below ``other``: a change neither interval's noise explains."""
        return self.defined and other.defined and self.high < other.low  # type: ignore[operator]

    def above(self, other: Interval) -> bool:
        return other.below(self)

    def format(self, unit: str = "", ci: str = "", undefined: str = "") -> str:
        """``1.66× (95% CI 1.63–1.68)`` with ``ci="95% CI "``; ``undefined`` follows an
        estimate that has no interval."""
        if self.estimate is None:
            return "n/a"
        if not self.defined:
            return f"{self.estimate:.2f}{unit}{undefined}"
        return f"{self.estimate:.2f}{unit} ({ci}{self.low:.2f}–{self.high:.2f})"


def paired_interval(differences: Sequence[float], alpha: float = ALPHA) -> Interval | None:
    """Student t interval of the mean of paired differences; None with fewer than two."""
    d = np.asarray([v for v in differences if v is not None and math.isfinite(v)], dtype=np.float64)
    if d.size < 2:
        return None
    mean = float(d.mean())
    std = float(d.std(ddof=1))
    half = t_quantile(1 - alpha, d.size - 1) * std / math.sqrt(d.size)
    return Interval(mean, mean - half, mean + half, int(d.size), std)


def unpaired_interval(candidate: Sequence[float], baseline: Sequence[float], alpha: float = ALPHA) -> Interval | None:
    """Welch interval of mean(candidate) − mean(baseline), for seeds that have no partner;
    None unless each side has two values."""
    a = np.asarray([v for v in candidate if v is not None and math.isfinite(v)], dtype=np.float64)
    b = np.asarray([v for v in baseline if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    mean = float(a.mean() - b.mean())
    if se == 0:
        return Interval(mean, mean, mean, int(min(a.size, b.size)))
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = t_quantile(1 - alpha, df) * se
    return Interval(mean, mean - half, mean + half, int(min(a.size, b.size)))


def tost_outcome(interval: Interval | None, tolerance: float) -> str:
    """PASS / FAIL / INCONCLUSIVE of an interval against ±tolerance (module docstring)."""
    if interval is None:
        return INCONCLUSIVE
    if not interval.defined:
        return INCONCLUSIVE
    if interval.low >= -tolerance - _EPS and interval.high <= tolerance + _EPS:  # type: ignore[operator]
        return PASS
    if interval.low > tolerance + _EPS or interval.high < -tolerance - _EPS:  # type: ignore[operator]
        return FAIL
    return INCONCLUSIVE


@lru_cache(maxsize=1024)
def look_schedule(min_seeds: int, max_seeds: int) -> tuple[int, ...]:
    """The seed counts at which a seeds-on-demand run looks at its verdicts: ``min_seeds``,
    then doubling, capped at ``max_seeds`` (3..10 → 3, 6, 10). Few looks keep the per-look α
    (α / looks) usable; doubling makes each look worth taking."""
    looks = [min_seeds]
    while looks[-1] < max_seeds:
        looks.append(min(max_seeds, 2 * looks[-1]))
    return tuple(looks)


def per_look_alpha(looks: int, alpha: float = ALPHA) -> float:
    """Bonferroni: each of ``looks`` looks is tested at α / looks, so the chance that any look
    errs stays at or below α."""
    return alpha / max(1, looks)


def seeds_needed(
    mean: float, std: float, tolerance: float, n_now: int, alpha_for: Callable[[int], float] | None = None
) -> int | None:
    """The smallest seed count above ``n_now`` at which an interval with this mean and paired
    std would be conclusive (PASS or FAIL), if both stay as observed; None when no count up to
    ``MAX_SUGGESTED_SEEDS`` would do (the mean sits on the tolerance edge).

    ``alpha_for(n)`` gives the per-look α a run ending at n seeds would use (default ``ALPHA``)."""
    margin = abs(abs(mean) - tolerance)
    for n in range(max(n_now + 1, 2), MAX_SUGGESTED_SEEDS + 1):
        alpha = ALPHA if alpha_for is None else alpha_for(n)
        if t_quantile(1 - alpha, n - 1) * std / math.sqrt(n) < margin:
            return n
    return None


def sequential_seeds_needed(mean: float, std: float, tolerance: float, n_now: int) -> int | None:
    """``seeds_needed`` for the plan ``seeds: {min: n_now, max: N}``: the N whose last look,
    at its Bonferroni α, would be conclusive."""
    return seeds_needed(mean, std, tolerance, n_now, lambda n: per_look_alpha(len(look_schedule(n_now, n))))


@dataclass(frozen=True)
class ParityMetric:
    """What a parity test compares per seed (``parity.metric``): a record's metric, the factor that
    turns it into the unit the tolerance is in, and the config key of that tolerance."""

    name: str
    record_key: str
    scale: float
    unit: str
    tolerance_key: str
    digits: int  # decimals a difference is shown with

    def fmt(self, value: float, sign: bool = True) -> str:
        return f"{value:{'+' if sign else ''}.{self.digits}f}"


PARITY_METRICS: dict[str, ParityMetric] = {
    "accuracy": ParityMetric("accuracy", "test_accuracy", 100.0, "pt", "tolerance_pts", 2),
    "loss": ParityMetric("loss", "test_loss", 1.0, "nats", "tolerance_loss", 4),
}


@dataclass(frozen=True)
class Equivalence:
    """The equivalence test of one difference of a parity metric (candidate − baseline): accuracy
    in points, or test loss in nats (``metric``). ``tolerance_pts`` is in that metric's unit."""

    outcome: str  # pass | fail | inconclusive
    tolerance_pts: float
    alpha: float  # per one-sided test, at this look
    looks: int  # looks of the run's seed plan (1: a fixed list of seeds)
    paired: Interval | None  # over the seeds both sides have
    unpaired: Interval | None  # Welch, over every seed of each side
    n_candidate: int
    n_baseline: int
    seeds_suggested: int | None = None  # for INCONCLUSIVE: seeds that would likely decide it
    # Width of the paired interval / width of the unpaired one on the same seeds (< 1: pairing
    # helped). None when either is missing or the unpaired width is zero.
    pairing_gain: float | None = None
    metric: str = "accuracy"

    @property
    def unit(self) -> str:
        return PARITY_METRICS[self.metric].unit

    @property
    def interval(self) -> Interval | None:
        """The interval the outcome was read from: paired when two seeds pair up."""
        return self.paired if self.paired is not None else self.unpaired

    @property
    def method(self) -> str:
        return "paired" if self.paired is not None else ("unpaired" if self.unpaired is not None else "none")

    @property
    def ci_level(self) -> float:
        return 1 - 2 * self.alpha


def metric_by_seed(records: list[Any], metric: str) -> dict[int, float]:
    """The parity ``metric``'s record value (``PARITY_METRICS``) by seed of result records."""
    key = PARITY_METRICS[metric].record_key
    return {r.get("seed"): v for r in records if (v := r.metric(key)) is not None}


def equivalence(
    candidate: dict[int, float],
    baseline: dict[int, float],
    tolerance_pts: float,
    looks: int = 1,
    metric: str = "accuracy",
    pair: bool = True,
) -> Equivalence:
    """TOST of per-seed values of ``metric`` (record values, keyed by seed: accuracy fractions,
    losses) against ±``tolerance_pts`` in the metric's unit (points, nats).

    Seeds present on both sides are paired (same initial weights and batches); the verdict
    comes from the paired interval when there are two pairs, else from the unpaired one.
    ``pair=False``: the sides did not start from the same weights, so only the unpaired (Welch)
    interval is read."""
    scale = PARITY_METRICS[metric].scale
    alpha = per_look_alpha(looks)
    shared = sorted(set(candidate) & set(baseline)) if pair else []
    diffs = [scale * (candidate[s] - baseline[s]) for s in shared]
    paired = paired_interval(diffs, alpha)
    cand_pts = [scale * v for v in candidate.values()]
    base_pts = [scale * v for v in baseline.values()]
    unpaired = unpaired_interval(cand_pts, base_pts, alpha)
    gain = None
    if paired is not None:
        same_seeds = unpaired_interval(
            [scale * candidate[s] for s in shared], [scale * baseline[s] for s in shared], alpha
        )
        if same_seeds is not None and same_seeds.width > 0:
            gain = paired.width / same_seeds.width
    chosen = paired if paired is not None else unpaired
    outcome = tost_outcome(chosen, tolerance_pts)
    suggested = None
    if outcome == INCONCLUSIVE:
        n_now = len(shared)
        if paired is not None and paired.std is not None:
            suggested = sequential_seeds_needed(paired.estimate, paired.std, tolerance_pts, n_now)
        elif n_now < 2:
            suggested = 3  # the spread is unknown until two seeds pair up
    return Equivalence(
        outcome=outcome,
        tolerance_pts=tolerance_pts,
        alpha=alpha,
        looks=looks,
        paired=paired,
        unpaired=unpaired,
        n_candidate=len(candidate),
        n_baseline=len(baseline),
        seeds_suggested=suggested,
        pairing_gain=gain,
        metric=metric,
    )


def records_equivalence(
    candidate: Iterable[Any],
    baseline: Iterable[Any],
    tolerance_pts: float,
    looks: int = 1,
    metric: str = "accuracy",
    pair: bool = True,
) -> Equivalence:
    """``equivalence`` of two sides' result records: each side's ``metric`` by seed
    (``metric_by_seed``)."""
    candidate_values, baseline_values = metric_by_seed(list(candidate), metric), metric_by_seed(list(baseline), metric)
    return equivalence(candidate_values, baseline_values, tolerance_pts, looks, metric, pair)


def describe(eq: Equivalence) -> str:
    """One line: the difference, its interval, the band and what the interval says."""
    interval = eq.interval
    metric = PARITY_METRICS[eq.metric]
    unit = metric.unit
    # Accuracy is the default and says nothing; a loss comparison names itself.
    what = "" if eq.metric == "accuracy" else "test loss "
    if interval is None:
        n = min(eq.n_candidate, eq.n_baseline)
        return f"{what}{n} paired seed(s): no interval from one seed (tolerance ±{eq.tolerance_pts:g} {unit})"
    level = f"{100 * eq.ci_level:.4g}%"
    text = (
        f"{what}Δ {metric.fmt(interval.estimate)} {unit}, {level} CI [{metric.fmt(interval.low)}, "
        f"{metric.fmt(interval.high)}] ({eq.method}, n={interval.n}) vs ±{eq.tolerance_pts:g} {unit}"
    )
    if eq.looks > 1:
        text += f"; α {eq.alpha:.3g} per look ({eq.looks} planned looks)"
    if eq.pairing_gain is not None:
        text += f"; pairing: CI width ×{eq.pairing_gain:.2f} of unpaired"
    return text


# --- chaos-aware agreement of two loss curves ----------------------------------------------


def relative_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| / max(|a|, |b|) per step over the common length; 0 where both are equal, NaN
    where either is not finite (a NaN never counts as agreement)."""
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
    return np.where(a == b, 0.0, rel)


def divergence_horizon(curve: np.ndarray, perturbed: np.ndarray, rtol: float) -> int | None:
    """The first step at which ``perturbed`` departs from ``curve`` by more than ``rtol``
    relative; None when it never does over their common length."""
    bad = ~(relative_difference(curve, perturbed) <= rtol)
    return int(np.argmax(bad)) if bad.any() else None


# Past the divergence horizon, a cross-framework difference and a self difference (a run against
# its one-ulp twin) are draws of the same saturated chaos when both frameworks compute the same
# thing up to rounding: "the cross draw is no larger than the largest self draw" is then a coin
# toss that fails about 1 / (self pairs + 1) of the time, and one seed in several fails far more
# often. So a seed is only held to be beyond its own chaos past the horizon when its cross median
# exceeds this many times the largest self median, and the verdict fails only when more than half
# of the seeds compared past the horizon are. The factor is set by simulation
# (tests/suite/verdicts/test_stats_chaos_simulation.py): chaotic runs that differ only by rounding exceed it
# in at most a few percent of seeds, one self pair or two, while a loss that drifts from the
# other framework's by a few times the chaos does not stay under it.
PAST_HORIZON_FACTOR = 3.0


@dataclass(frozen=True)
class PastHorizon:
    """One seed past the divergence horizon: median relative differences over steps ``lo`` to
    ``hi`` − 1, of the two curves (``cross``) and of the largest self pair (``own``)."""

    lo: int
    hi: int
    cross: float
    own: float

    @property
    def ratio(self) -> float:
        """cross / own (inf when only the cross pair differs, 0 when neither does)."""
        if self.own > 0:
            return self.cross / self.own
        return 0.0 if self.cross == 0 else math.inf

    @property
    def beyond(self) -> bool:
        """Whether the curves differ by more than ``PAST_HORIZON_FACTOR`` times their own chaos."""
        return not self.cross <= PAST_HORIZON_FACTOR * self.own

    def describe(self) -> str:
        return f"steps {self.lo}–{self.hi - 1} {self.cross:.1e} = ×{self.ratio:.2f} self {self.own:.1e}"


def past_horizon_problem(past: dict[Any, PastHorizon]) -> str | None:
    """The past-the-horizon finding over the seeds of one verdict (``past`` keyed by seed), or
    None: FAIL-worthy only when more than half of the seeds compared past the horizon differ by
    more than ``PAST_HORIZON_FACTOR`` times their own chaos. With independent seeds, each beyond
    the factor with probability p under the null, that happens with probability at most p
    whatever the number of seeds (p² with two, about 3p² with three)."""
    beyond = {seed: p for seed, p in past.items() if p.beyond}
    if not past or 2 * len(beyond) <= len(past):
        return None
    which = "; ".join(f"seed {seed} {p.describe()}" for seed, p in beyond.items())
    return (
        f"past the horizon the runs differ by more than {PAST_HORIZON_FACTOR:g}× as much as fp32 differs "
        f"from itself (median relative) in {len(beyond)} of {len(past)} seed(s): {which}"
    )


@dataclass
class Agreement:
    """How two per-step loss curves agree, judged against their own noise floor."""

    worst: float  # largest relative difference over the steps held to the rtol
    problems: list[str]
    horizon: int | None  # first step where a run departs from its one-ulp twin, if measured
    note: str | None  # what the past-the-horizon comparison found (``past.describe()``)
    everywhere: bool = False  # every step of the curves, not only those held to it, within the rtol
    # The past-the-horizon comparison, judged over every seed of a verdict by ``past_horizon_problem``.
    past: PastHorizon | None = None


def chaos_aware_agreement(
    a: np.ndarray,
    b: np.ndarray,
    own_pairs: list[tuple[np.ndarray, np.ndarray]],
    rtol: float,
    steps: int,
    min_steps: int,
) -> Agreement:
    """Curves ``a`` and ``b`` per step, given ``own_pairs`` (unperturbed, one-ulp-perturbed)
    curves that measure the runs' own chaos. Up to the divergence horizon (at least
    ``min_steps``) every step must agree within ``rtol``; past it, over the rest of the
    noise-floor run, every step must be finite and ``past`` holds the median difference of ``a``
    and ``b`` beside the largest median self difference, for ``past_horizon_problem`` to judge
    over the seeds. Without ``own_pairs`` the first ``steps`` steps are held to ``rtol``."""
    rel = relative_difference(a, b)
    problems: list[str] = []
    horizon = None
    selfs: list[np.ndarray] = []
    if not own_pairs:
        agree_upto, window = min(steps, rel.size), None
    else:
        selfs = [relative_difference(curve, nudged) for curve, nudged in own_pairs]
        length = min(s.size for s in selfs)
        horizons = [h for curve, nudged in own_pairs if (h := divergence_horizon(curve, nudged, rtol)) is not None]
        horizon = min(horizons) if horizons else None
        agree_upto = min(rel.size, max(min_steps, length if horizon is None else horizon))
        window = (agree_upto, min(length, rel.size)) if min(length, rel.size) > agree_upto else None
    head = rel[:agree_upto]
    bad = ~(head <= rtol)  # NaN counts as a disagreement
    worst = 0.0
    if head.size:
        worst = float(np.nanmax(head)) if np.isfinite(head).any() else math.inf
    if bad.any():
        step = int(np.argmax(bad))
        problems.append(
            f"step {step} differs by {head[step]:.2e} relative (> {rtol:g}; {int(bad.sum())} of the "
            f"{bad.size} steps held to it)"
        )
    past = None
    if window is not None:
        lo, hi = window
        cross = rel[lo:hi]
        if not np.isfinite(cross).all():
            step = lo + int(np.argmax(~np.isfinite(cross)))
            problems.append(f"past the horizon, step {step}: a loss that is not finite")
        else:
            own = max(float(np.nanmedian(s[lo:hi])) if np.isfinite(s[lo:hi]).any() else 0.0 for s in selfs)
            past = PastHorizon(lo, hi, float(np.median(cross)), own)
    note = past.describe() if past is not None else None
    return Agreement(worst, problems, horizon, note, bool(np.all(rel <= rtol)), past)
