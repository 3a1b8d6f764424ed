"""Confidence intervals the diff and the advice need: a paired change between two runs, a
memory ratio with its interval, and a row's speedup, each as the suite's one ``Interval``
(``precision_suite.verdicts.stats``).

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
from typing import Any

from precision_suite.results import RowKey
from precision_suite.verdicts.compare import Row, mean_ci95
from precision_suite.verdicts.stats import Interval


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


def memory_ratio_of(row: Row, records_by_row: dict[RowKey, list[dict[str, Any]]]) -> Interval:
    """The row's peak memory over its fp32 baseline's, paired per seed (``ratio_interval``) from
    ``records_by_row`` (``rundir.ok_records_by_row``); ``Interval(None)`` without a baseline."""
    from precision_suite.outputs.rundir import baseline_key, row_key

    base = records_by_row.get(baseline_key(row), []) if row.baseline else []
    return ratio_interval(base, records_by_row.get(row_key(row), []), "peak_memory_bytes")


def ratio_interval(base_records: list[dict[str, Any]], row_records: list[dict[str, Any]], key: str) -> Interval:
    """Per-seed paired ratio ``row / base`` of a metric (e.g. peak memory), on the log scale."""
    base = {r.get("seed"): v for r in base_records if (v := metric(r, key)) and v > 0}
    row = {r.get("seed"): v for r in row_records if (v := metric(r, key)) and v > 0}
    logs = [math.log(row[s] / base[s]) for s in sorted(set(base) & set(row), key=str)]
    mean, half = mean_ci95(logs)
    return _exp(mean, half) if mean is not None else Interval(None)
