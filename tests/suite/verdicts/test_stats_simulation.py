"""The verdicts' error rates, proven by simulation through the real comparison.

Accuracies are drawn from a known distribution (the truth is set, not measured), written as
result records, and judged by ``precision_suite.verdicts.compare`` exactly as a run would be; with seeds
on demand, the runner's own decision (``precision_suite.execution.seeds_on_demand.undecided_rows``) says which
simulated runs get more seeds at each look. Each simulated run is its own model, so one
``compare`` call judges all of them at once.

Noise level of a noisy 10-class benchmark: seed-to-seed std 1.3 pt per policy,
nearly uncorrelated between baseline and candidate by the end of a long chaotic run, so the
paired per-seed difference has a std of 1.8 pt; tolerance ±1 pt.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import cache

import numpy as np
import pytest
from precision_suite.execution.seeds_on_demand import undecided_rows
from precision_suite.results import RowKey
from precision_suite.verdicts.compare import compare
from precision_suite.verdicts.stats import FAIL, INCONCLUSIVE, PASS, look_schedule

from tests.helpers.records import make_record

RUNS = 2000
SEED_STD_PTS = 1.3
PAIRED_STD_PTS = 1.8
TOLERANCE_PTS = 1.0
BASE_ACCURACY = 0.67


@cache
def simulate(
    delta_pts: float,
    paired_std_pts: float = PAIRED_STD_PTS,
    seed_std_pts: float = SEED_STD_PTS,
    looks: tuple[int, ...] = (3,),
    corrected: bool = True,
    runs: int = RUNS,
    rng_seed: int = 0,
) -> dict[str, float]:
    """Fraction of simulated runs ending PASS / FAIL / INCONCLUSIVE, and the mean seeds used.

    ``corrected=False`` records a plan of one look although the runs look several times: the
    naive procedure the Bonferroni correction exists to avoid."""
    rng = np.random.default_rng(rng_seed)
    n_max = looks[-1]
    # Baseline and candidate of one seed share a component (same initial weights and batches)
    # with the correlation that turns a per-policy std into the given paired std.
    rho = 1 - paired_std_pts**2 / (2 * seed_std_pts**2)
    shared = rng.standard_normal((runs, n_max))
    own = rng.standard_normal((2, runs, n_max))
    base = BASE_ACCURACY + seed_std_pts / 100 * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own[0])
    cand = BASE_ACCURACY + (delta_pts + seed_std_pts * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own[1])) / 100
    planned = list(looks) if corrected else [n_max]

    def records(run: int, seeds: range) -> list[dict]:
        out = []
        for seed in seeds:
            for policy, accuracy in (("fp32", base[run, seed]), ("bf16-mixed", cand[run, seed])):
                record = make_record("torch-amp", policy, seed, accuracy=float(accuracy), model=f"sim{run}", steps=2)
                record["config"]["seed_looks"] = planned
                out.append(record)
        return out

    by_run = {run: records(run, range(looks[0])) for run in range(runs)}
    outcome: dict[int, str] = {}
    seeds_used: dict[int, int] = {}
    active = list(range(runs))
    for k, n in enumerate(looks):
        comparison = compare([r for run in active for r in by_run[run]])
        undecided = undecided_rows(comparison)
        for group in comparison.groups:
            run = int(group.model.removeprefix("sim"))
            [row] = [r for r in group.rows if r.policy == "bf16-mixed"]
            outcome[run] = row.verdict("parity").outcome
            seeds_used[run] = n
        active = [run for run in active if RowKey(f"sim{run}", "digits", "cpu", "torch-amp", "bf16-mixed") in undecided]
        if k + 1 < len(looks):
            for run in active:
                by_run[run] += records(run, range(n, looks[k + 1]))
    counts = Counter(outcome.values())
    rates = {o: counts[o] / runs for o in (PASS, FAIL, INCONCLUSIVE)}
    rates["mean_seeds"] = float(np.mean(list(seeds_used.values())))
    return rates


# Monte Carlo standard error of a 5 % rate over 2,000 runs is 0.49 pt; the runs are seeded, so
# each rate below is one fixed number (printed with -s, quoted in the README "Measured results").


@pytest.mark.parametrize("looks", [(3,), look_schedule(3, 10)], ids=["3 seeds", "3 to 10 seeds"])
def test_no_false_fail_at_no_difference_and_no_false_pass_at_twice_the_tolerance(looks):
    same = simulate(0.0, looks=looks)
    lost = simulate(-2 * TOLERANCE_PTS, looks=looks, rng_seed=1)
    print(f"\n{looks}: Δ=0 {same}\n{looks}: Δ=-2 tol {lost}")
    assert same[FAIL] <= 0.05
    assert lost[PASS] <= 0.05
    # At this noise 3 seeds rarely decide, and 10 not always: INCONCLUSIVE says so instead of
    # a verdict that flips on noise.
    assert same[INCONCLUSIVE] > 0.5
    if len(looks) > 1:
        # ... and seeds on demand decide more often than 3 seeds do.
        assert lost[FAIL] > simulate(-2 * TOLERANCE_PTS, looks=(3,), rng_seed=1)[FAIL]  # cached: same draw


def test_at_the_tolerance_edge_false_pass_stays_at_alpha_only_with_the_correction():
    """The hardest truth for an equivalence test is |Δ| = tol exactly: a PASS there is wrong,
    and TOST holds it to α per look. Looking three times at an uncorrected α errs more often;
    α / looks per look keeps the whole procedure at α. Low noise, so looks often decide."""
    low_noise = {"paired_std_pts": 0.3, "seed_std_pts": 0.3}
    looks = look_schedule(3, 10)
    # 1,000 runs each (Monte Carlo SE of a 5 % rate: 0.7 pt), to keep the test quick.
    runs = 1000
    one_look = simulate(TOLERANCE_PTS, looks=(3,), runs=runs, rng_seed=2, **low_noise)
    naive = simulate(TOLERANCE_PTS, looks=looks, corrected=False, runs=runs, rng_seed=2, **low_noise)
    corrected = simulate(TOLERANCE_PTS, looks=looks, runs=runs, rng_seed=2, **low_noise)
    print(f"\nΔ=tol one look {one_look}\nnaive {naive}\ncorrected {corrected}")
    assert one_look[PASS] <= 0.05 + 3 * 0.0069  # exactly α in theory: allow 3 Monte Carlo SE
    assert naive[PASS] > 0.08  # the price of looking without paying for it
    assert corrected[PASS] <= 0.05
    # And a FAIL at the edge is as wrong as a PASS (|Δ| ≤ tol is not "a loss beyond tol").
    assert corrected[FAIL] <= 0.05


def test_seeds_on_demand_decide_a_clear_case_early():
    """Low noise, no real difference: most simulated runs stop at the first look or the second,
    and nearly all PASS by the last."""
    rates = simulate(0.0, paired_std_pts=0.3, seed_std_pts=0.3, looks=look_schedule(3, 10), runs=500, rng_seed=3)
    assert rates[PASS] >= 0.99
    assert rates["mean_seeds"] < 6.5
