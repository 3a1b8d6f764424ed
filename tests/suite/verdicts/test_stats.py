"""precision_suite.verdicts.stats against hand-worked numbers (textbook t quantiles, not the code's own
SciPy call)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from precision_suite.verdicts.stats import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    PAST_HORIZON_FACTOR,
    Interval,
    PastHorizon,
    chaos_aware_agreement,
    equivalence,
    look_schedule,
    paired_interval,
    past_horizon_problem,
    per_look_alpha,
    seeds_needed,
    sequential_seeds_needed,
    tost_outcome,
    unpaired_interval,
)

# One-sided 95 % Student t quantiles (table values): the 90 % two-sided interval of TOST.
T95 = {2: 2.919985580, 4: 2.131846786, 9: 1.833112933}


def test_paired_interval_is_student_t_on_the_differences():
    d = [0.5, -0.5, 1.0, 0.0, 0.5]
    interval = paired_interval(d)
    sd = math.sqrt(sum((x - 0.3) ** 2 for x in d) / 4)
    assert interval.estimate == pytest.approx(0.3)
    assert interval.std == pytest.approx(sd)
    assert interval.high - interval.estimate == pytest.approx(T95[4] * sd / math.sqrt(5), rel=1e-8)
    assert paired_interval([1.0]) is None
    assert paired_interval([1.0, float("nan")]) is None  # a NaN is no seed


def test_unpaired_interval_is_welch():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0, 2.0]
    interval = unpaired_interval(a, b)
    va, vb = 1.0 / 3, 0.7 / 5
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 4)
    from scipy.stats import t

    assert interval.estimate == pytest.approx(2.0 - 0.8)
    assert interval.high - interval.estimate == pytest.approx(t.ppf(0.95, df) * math.sqrt(va + vb), rel=1e-8)
    assert unpaired_interval([1.0], b) is None


def test_tost_reads_the_interval_against_the_band():
    assert tost_outcome(Interval(0.1, -0.9, 1.0, 3), 1.0) == PASS  # the edge counts as inside
    assert tost_outcome(Interval(0.5, -0.5, 1.5, 3), 1.0) == INCONCLUSIVE
    assert tost_outcome(Interval(-2.0, -2.5, -1.2, 3), 1.0) == FAIL
    assert tost_outcome(Interval(2.0, 1.2, 2.5, 3), 1.0) == FAIL  # a gain beyond tol is a FAIL too
    assert tost_outcome(Interval(0.0, -3.0, 3.0, 3), 1.0) == INCONCLUSIVE
    assert tost_outcome(None, 1.0) == INCONCLUSIVE


def test_equivalence_pairs_seeds_and_reports_how_much_pairing_helped():
    base = {0: 0.90, 1: 0.95, 2: 0.80}
    cand = {0: 0.901, 1: 0.952, 2: 0.799}  # seed spread 7 pt, paired spread 0.15 pt
    eq = equivalence(cand, base, 1.0)
    assert eq.method == "paired" and eq.outcome == PASS
    assert eq.paired.estimate == pytest.approx(100 * (0.002 / 3), abs=1e-9)
    assert eq.pairing_gain < 0.05  # pairing removed nearly all the seed-to-seed spread
    # The unpaired interval on the same numbers cannot tell.
    assert tost_outcome(eq.unpaired, 1.0) == INCONCLUSIVE


def test_a_seed_missing_on_one_side_is_left_out_of_the_pairs_but_not_of_the_unpaired_interval():
    base = {0: 0.90, 1: 0.91, 2: 0.92, 3: 0.93}
    cand = {0: 0.90, 1: 0.91, 2: 0.92}
    eq = equivalence(cand, base, 1.0)
    assert eq.paired.n == 3 and eq.n_baseline == 4
    assert eq.unpaired.estimate == pytest.approx(100 * (0.91 - 0.915))
    only_one_pair = equivalence({0: 0.9, 5: 0.91}, {0: 0.9, 6: 0.92}, 5.0)
    assert only_one_pair.method == "unpaired"


def test_look_schedule_doubles_and_alpha_is_split_over_the_looks():
    assert look_schedule(3, 10) == (3, 6, 10)
    assert look_schedule(2, 10) == (2, 4, 8, 10)
    assert look_schedule(3, 3) == (3,)
    assert per_look_alpha(1) == 0.05
    assert per_look_alpha(3) == pytest.approx(0.05 / 3)
    eq = equivalence({0: 0.9, 1: 0.91, 2: 0.9}, {0: 0.9, 1: 0.9, 2: 0.9}, 1.0, looks=3)
    assert eq.alpha == pytest.approx(0.05 / 3) and eq.ci_level == pytest.approx(1 - 0.1 / 3)


def test_seeds_needed_is_where_the_observed_interval_would_fit():
    # mean 0, std 1.8, tol 1: t(0.95, n-1) * 1.8 / sqrt(n) < 1 first at n = 11 (10: 1.833*1.8/3.162 = 1.04).
    assert seeds_needed(0.0, 1.8, 1.0, 3) == 11
    assert T95[9] * 1.8 / math.sqrt(10) > 1.0
    # The same toward a FAIL: mean 2, margin 1.
    assert seeds_needed(2.0, 1.8, 1.0, 3) == 11
    # On the edge nothing helps.
    assert seeds_needed(1.0, 1.8, 1.0, 3) is None
    # With seeds on demand the last look is tested at α / looks: more seeds.
    assert sequential_seeds_needed(0.0, 1.8, 1.0, 3) > 11


def test_one_seed_is_always_inconclusive():
    for cand in (0.95, 0.50):
        eq = equivalence({0: cand}, {0: 0.95}, 1.0)
        assert eq.outcome == INCONCLUSIVE and eq.interval is None and eq.seeds_suggested == 3


# --- past the divergence horizon --------------------------------------------------------------


def test_past_the_horizon_a_seed_is_beyond_its_chaos_only_past_the_factor():
    assert PAST_HORIZON_FACTOR == 3.0
    assert not PastHorizon(40, 100, 3e-3, 1e-3).beyond  # exactly 3×: still the run's own chaos
    assert PastHorizon(40, 100, 3.1e-3, 1e-3).beyond
    assert PastHorizon(40, 100, 3.1e-3, 1e-3).ratio == pytest.approx(3.1)
    # Twins that never left each other: any cross difference is beyond them; none is not.
    assert PastHorizon(40, 100, 1e-6, 0.0).beyond and PastHorizon(40, 100, 1e-6, 0.0).ratio == math.inf
    assert not PastHorizon(40, 100, 0.0, 0.0).beyond and PastHorizon(40, 100, 0.0, 0.0).ratio == 0.0
    assert PastHorizon(74, 100, 3.97e-3, 3.97e-3).describe() == "steps 74–99 4.0e-03 = ×1.00 self 4.0e-03"


def test_past_the_horizon_fails_a_verdict_only_when_more_than_half_of_its_seeds_are_beyond():
    within, beyond = PastHorizon(40, 100, 2e-3, 1e-3), PastHorizon(50, 100, 5e-3, 1e-3)
    assert past_horizon_problem({}) is None
    assert past_horizon_problem({0: within}) is None
    assert past_horizon_problem({0: beyond}) == (
        "past the horizon the runs differ by more than 3× as much as fp32 differs from itself (median "
        "relative) in 1 of 1 seed(s): seed 0 steps 50–99 5.0e-03 = ×5.00 self 1.0e-03"
    )
    assert past_horizon_problem({0: beyond, 1: within}) is None  # half is not more than half
    assert "in 2 of 3 seed(s): seed 0 steps 50–99" in past_horizon_problem({0: beyond, 1: within, 2: beyond})
    assert past_horizon_problem({0: beyond, 1: within, 2: within}) is None


def test_chaos_aware_agreement_measures_past_the_horizon_over_the_rest_of_the_noise_floor_run():
    steps = np.arange(60)
    curve = 2.0 - steps / 60
    # The twin leaves the rtol 1e-3 at step 30 and stays 1e-2 off (relative 1e-2 / 1.01).
    twin = curve * (1 + np.where(steps >= 30, 1e-2, 0.0))
    other = curve * (1 + np.where(steps >= 40, 2e-2, 0.0))
    found = chaos_aware_agreement(curve, other, [(curve, twin[:50])], 1e-3, 100, 10)
    assert found.horizon == 30 and found.problems == []
    past = found.past
    assert (past.lo, past.hi) == (30, 50)  # up to the end of the (shorter) noise-floor run
    # Steps 30–39 agree, 40–49 are 2e-2 / 1.02 off: the median of 20 is their midpoint.
    assert past.cross == pytest.approx(0.5 * 2e-2 / 1.02) and past.own == pytest.approx(1e-2 / 1.01)
    assert found.note == past.describe()
    # A loss that is not finite past the horizon is no draw of chaos.
    other[45] = np.nan
    found = chaos_aware_agreement(curve, other, [(curve, twin[:50])], 1e-3, 100, 10)
    assert found.past is None and found.problems == ["past the horizon, step 45: a loss that is not finite"]
