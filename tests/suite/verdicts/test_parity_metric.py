"""``parity.metric``: parity judged on accuracy (points) or on test loss (nats), and the unpaired
cross-framework test for families that did not start from the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.verdicts.stats import PARITY_METRICS, describe, equivalence, t_quantile


def test_loss_parity_is_the_paired_difference_in_nats():
    candidate = {0: 1.212, 1: 1.305, 2: 1.248}
    baseline = {0: 1.200, 1: 1.290, 2: 1.241}
    eq = equivalence(candidate, baseline, 0.05, metric="loss")
    diffs = np.array([candidate[s] - baseline[s] for s in (0, 1, 2)])
    half = t_quantile(0.95, 2) * diffs.std(ddof=1) / np.sqrt(3)  # 90% two-sided = two 5% one-sided tests
    assert eq.paired.estimate == pytest.approx(diffs.mean())
    assert (eq.paired.low, eq.paired.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert eq.outcome == "pass" and eq.unit == "nats"
    assert describe(eq).startswith(f"test loss Δ +{diffs.mean():.4f} nats, 90% CI")
    assert describe(eq).endswith("vs ±0.05 nats; pairing: CI width ×" + f"{eq.pairing_gain:.2f} of unpaired")


def test_accuracy_parity_reads_as_before_in_points():
    eq = equivalence({0: 0.90, 1: 0.91}, {0: 0.905, 1: 0.912}, 1.5)
    assert eq.paired.estimate == pytest.approx(100 * ((0.90 - 0.905) + (0.91 - 0.912)) / 2)
    assert describe(eq).startswith("Δ -0.35 pt, 90% CI") and PARITY_METRICS["accuracy"].unit == "pt"


def test_unpaired_equivalence_ignores_the_seed_pairing():
    """Same numbers, pairing off: the Welch interval over every seed of each side is read."""
    candidate, baseline = {0: 0.80, 1: 0.84, 2: 0.82}, {0: 0.81, 1: 0.85, 2: 0.83}
    paired = equivalence(candidate, baseline, 2.0)
    unpaired = equivalence(candidate, baseline, 2.0, pair=False)
    assert paired.method == "paired" and unpaired.method == "unpaired" and unpaired.paired is None
    assert unpaired.unpaired.estimate == pytest.approx(-1.0)
    assert unpaired.unpaired.width > paired.paired.width  # the pairing removed the seed spread
