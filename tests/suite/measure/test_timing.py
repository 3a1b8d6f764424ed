"""Timing of the speed phase: its statistics (proven by simulation), its rotation, its noise
labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from precision_suite.measure.timing import (
    NOISY_ROUND_CV,
    WindowSample,
    assess,
    median_ci,
    rotation,
)


def _window(step_s: float, other: float | None = 0.0) -> WindowSample:
    return WindowSample(steps=10, wall_s=10 * step_s, cpu_s=10 * step_s, loadavg_1m=0.0, other_cores=other)


@pytest.mark.parametrize("n", [6, 8, 10, 20])
def test_median_ci_covers_the_true_median_at_least_95_percent(n):
    # Skewed, heavy-ish tailed round ratios (lognormal): the interval is distribution-free.
    rng = np.random.default_rng(n)
    true_median = 1.3
    trials, hits = 4000, 0
    for _ in range(trials):
        values = true_median * np.exp(rng.normal(0, 0.2, n))
        _, low, high, coverage = median_ci(list(values))
        hits += low <= true_median <= high
    assert coverage >= 0.95
    # Binomial noise of 4000 trials: 3 standard errors below the nominal coverage at most.
    assert hits / trials >= coverage - 3 * math.sqrt(coverage * (1 - coverage) / trials)


def test_median_ci_order_statistics():
    values = list(range(1, 11))  # n = 10: [x_(2), x_(9)], coverage 1 - 2·11/1024
    median, low, high, coverage = median_ci(values)
    assert (median, low, high) == (5.5, 2, 9)
    assert coverage == pytest.approx(1 - 22 / 1024)
    # Too few values for 95%: the full range, with the smaller coverage said.
    assert median_ci([1.0, 2.0, 3.0])[1:] == (1.0, 3.0, 0.75)


def test_rotation_cancels_linear_drift():
    # The machine slows down steadily (load drift); the candidate always takes half the baseline's
    # time at the same moment. Timing each side alone would mix drift into the ratio; the rotation
    # averages the baseline windows on both sides of each candidate window, so it sees exactly 2.
    clock = [0]

    def at(scale: float):
        def window() -> WindowSample:
            clock[0] += 1
            return _window(scale * (1 + 0.05 * clock[0]))

        return window

    rot = rotation(at(1.0), [at(0.5), at(0.25)], rounds=6)
    assert [len(ws) for ws in rot.baseline] == [3] * 6
    assert np.allclose(rot.speedups[0], 2.0, rtol=0.03)
    assert np.allclose(rot.speedups[1], 4.0, rtol=0.03)
    naive = rot.baseline[0][0].step_s / rot.candidates[1][-1].step_s  # first fp32 vs a late window
    assert abs(naive - 4.0) > 0.5


def test_clean_speedup_is_claimed_noisy_ones_are_not():
    base = [_window(1.0) for _ in range(10)]
    fast = [_window(0.5) for _ in range(10)]
    clean = assess([2.0 + 0.01 * i for i in range(10)], base, fast)
    assert not clean.noisy and clean.ci_low > 1.0

    straddles = assess([0.9, 1.1] * 5, base, fast)
    assert "includes 1.0" in straddles.noisy_reason

    disagree = assess([1.5, 3.0] * 5, base, fast)
    assert "rounds disagree" in disagree.noisy_reason and disagree.round_cv > NOISY_ROUND_CV

    jittery = assess([2.0] * 10, [_window(1.0 + 0.5 * (i % 2)) for i in range(10)], fast)
    assert "window times vary" in jittery.noisy_reason

    busy = assess([2.0] * 10, [_window(1.0, other=1.0) for _ in range(10)], fast)
    assert "other processes busy" in busy.noisy_reason
