"""Confidence intervals the diff and the advice need: a paired change between two runs, a
memory ratio with its interval, and a row's speedup as an ``Interval``.

- Paired change (run-to-run, per seed): the mean of per-seed differences with the 95 % Student t
  interval of ``compare.mean_ci95`` — the same interval the comparison puts on accuracy. One
  seed gives no interval (no noise estimate), never a zero-width one.
- Memory ratio (policy / baseline peak): the t interval of the per-seed log ratios.
- Speedup: never computed here. It is the comparison row's (``compare.row_speed``: the speed
  phase where it ran, training jobs only where they were timed alone, else not measured), so the
  report, ``advise``, ``diff`` and ``benchmark.json`` quote one figure with one interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from precision_suite.verdicts.compare import Row, mean_ci95


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


def speedup_of(row: Row) -> Interval:
    """The row's speedup (``Row.speed``) and its 95 % interval; ``Interval(None)`` when not measured."""
    if row.speed is None:
        return Interval(None)
    return Interval(row.speed.estimate, row.speed.ci_low, row.speed.ci_high)


def ratio_interval(base_records: list[dict[str, Any]], row_records: list[dict[str, Any]], key: str) -> Interval:
    """Per-seed paired ratio ``row / base`` of a metric (e.g. peak memory), on the log scale."""
    base = {r.get("seed"): v for r in base_records if (v := metric(r, key)) and v > 0}
    row = {r.get("seed"): v for r in row_records if (v := metric(r, key)) and v > 0}
    logs = [math.log(row[s] / base[s]) for s in sorted(set(base) & set(row), key=str)]
    mean, half = mean_ci95(logs)
    return _exp(mean, half) if mean is not None else Interval(None)
