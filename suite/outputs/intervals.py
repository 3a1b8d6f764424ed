"""Confidence intervals the diff and the advice need and the comparison does not (yet) give:
a paired change between two runs, and a speedup or memory ratio with its interval.

This is the one seam to swap when paired-statistics helpers land in ``precision_suite.verdicts.stats``;
the rest of ``outputs`` only calls the functions below.

- Paired change (run-to-run, per seed): the mean of per-seed differences with the 95 % Student t
  interval of ``compare.mean_ci95`` — the same interval the comparison puts on accuracy. One
  seed gives no interval (no noise estimate), never a zero-width one.
- Speedup (baseline step time / policy step time): on the log scale, so a ratio's interval is
  symmetric in "faster" and "slower". With two or more seeds, the t interval of the per-seed log
  ratios (seeds paired: same weights and batches); with one seed, Welch's t interval of the
  difference of mean log window times (each timed window one observation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from precision_suite.verdicts.compare import mean_ci95


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95 % interval; ``low``/``high`` are None when undefined."""

    estimate: float | None
    low: float | None = None
    high: float | None = None

    @property
    def defined(self) -> bool:
        return self.estimate is not None and self.low is not None and self.high is not None

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


def metric(record: dict[str, Any], key: str) -> float | None:
    value = (record.get("metrics") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def paired_change(old: dict[Any, float], new: dict[Any, float]) -> Interval:
    """Mean of ``new[s] - old[s]`` over the seeds in both, with its t interval."""
    diffs = [new[s] - old[s] for s in sorted(set(old) & set(new), key=str)]
    mean, half = mean_ci95(diffs)
    if mean is None:
        return Interval(None)
    if half is None:
        return Interval(mean)
    return Interval(mean, mean - half, mean + half)


def _exp(mean: float, half: float | None) -> Interval:
    if half is None:
        return Interval(math.exp(mean))
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half))


def _welch_log_diff(base_ms: list[float], row_ms: list[float]) -> tuple[float, float | None]:
    a, b = np.log(base_ms), np.log(row_ms)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = va + vb
    if se2 == 0:
        return diff, 0.0
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t as student_t

    return diff, float(student_t.ppf(0.975, df)) * math.sqrt(se2)


def _windows_ms(record: dict[str, Any]) -> list[float]:
    values = (record.get("curves") or {}).get("window_step_time_ms") or []
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v) and v > 0]


def speedup_interval(base_records: list[dict[str, Any]], row_records: list[dict[str, Any]]) -> Interval:
    """Speedup of a row over its baseline (ok records of each), with its 95 % interval."""
    base = {r.get("seed"): v for r in base_records if (v := metric(r, "step_time_ms_p50")) and v > 0}
    row = {r.get("seed"): v for r in row_records if (v := metric(r, "step_time_ms_p50")) and v > 0}
    shared = sorted(set(base) & set(row), key=str)
    if len(shared) >= 2:
        mean, half = mean_ci95([math.log(base[s] / row[s]) for s in shared])
        return _exp(mean, half) if mean is not None else Interval(None)
    if len(shared) == 1:
        seed = shared[0]
        base_w = next((_windows_ms(r) for r in base_records if r.get("seed") == seed), [])
        row_w = next((_windows_ms(r) for r in row_records if r.get("seed") == seed), [])
        if base_w and row_w:
            return _exp(*_welch_log_diff(base_w, row_w))
        return Interval(base[seed] / row[seed])
    return Interval(None)


def ratio_interval(base_records: list[dict[str, Any]], row_records: list[dict[str, Any]], key: str) -> Interval:
    """Per-seed paired ratio ``row / base`` of a metric (e.g. peak memory), on the log scale."""
    base = {r.get("seed"): v for r in base_records if (v := metric(r, key)) and v > 0}
    row = {r.get("seed"): v for r in row_records if (v := metric(r, key)) and v > 0}
    logs = [math.log(row[s] / base[s]) for s in sorted(set(base) & set(row), key=str)]
    mean, half = mean_ci95(logs)
    return _exp(mean, half) if mean is not None else Interval(None)
