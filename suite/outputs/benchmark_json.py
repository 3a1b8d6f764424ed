"""``benchmark.json``: the run's step times in pytest-benchmark's JSON schema, so benchmark
tooling that reads pytest-benchmark files (``pytest-benchmark compare``, benchmark-tracking
CI actions) tracks precision-suite's speedups across commits with no adapter.

One benchmark per row (backend × policy of a model/dataset/device group) whose speed was
measured. A *round* is one timed window (closed by a device sync, never single steps —
DESIGN.md) and its value the window's mean step time in seconds; ``iterations`` is the steps per
window. The windows are the ones the row's speedup came from (``compare.row_speed``,
``Row.speed_windows``): the paired speed phase's windows of the row where it ran (a baseline's
pooled over its rounds), else the windows of its training jobs timed alone, pooled over seeds. A
row whose jobs ran side by side with no speed phase has no benchmark: its step times are not a
measurement to track. ``extra_info`` carries what the comparison concluded: accuracy Δ, the
speedup with its interval and source, memory, verdicts.
"""

from __future__ import annotations

import json
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from precision_suite.outputs.rundir import versions
from precision_suite.results import jsonable
from precision_suite.verdicts.compare import Comparison, Group, Row

BENCHMARK_FILE = "benchmark.json"


def _quartiles(data: list[float]) -> tuple[float, float]:
    """Q1 and Q3 by the methods pytest-benchmark uses (Wikipedia's method 3 for odd counts,
    method 2 for even), so the same data give the same numbers as its own files."""
    n, s = len(data), data
    if n == 1:
        return s[0], s[0]
    if n % 2:
        k, r = n // 4, n % 4
        if r == 1:
            return 0.25 * s[k - 1] + 0.75 * s[k], 0.75 * s[3 * k] + 0.25 * s[3 * k + 1]
        return 0.75 * s[k] + 0.25 * s[k + 1], 0.25 * s[3 * k + 1] + 0.75 * s[3 * k + 2]
    return statistics.median(s[: n // 2]), statistics.median(s[n // 2 :])


def step_time_stats(rounds_s: list[float], iterations: int = 1) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` block for these round times (seconds per iteration)."""
    if not rounds_s:
        raise ValueError("no rounds")
    data = [float(v) for v in rounds_s]
    ordered = sorted(data)
    mean = statistics.mean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0
    q1, q3 = _quartiles(ordered)
    iqr = q3 - q1
    if len(data) == 1:
        ld15iqr = hd15iqr = data[0]
    else:
        ld15iqr = ordered[bisect_left(ordered, q1 - 1.5 * iqr)]
        # pytest-benchmark's own definition, kept so its files and ours agree: the first datum
        # *above* the upper fence when there is one, else the largest.
        hd15iqr = ordered[min(bisect_right(ordered, q3 + 1.5 * iqr), len(ordered) - 1)]
    stddev_outliers = sum(v < mean - stddev or v > mean + stddev for v in data)
    iqr_outliers = sum(v < q1 - 1.5 * iqr or v > q3 + 1.5 * iqr for v in data)
    total = sum(data)
    return {
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "stddev": stddev,
        "rounds": len(data),
        "median": statistics.median(data),
        "iqr": iqr,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": ld15iqr,
        "hd15iqr": hd15iqr,
        "ops": len(data) / total if total else 0,
        "total": total,
        "data": data,
        "iterations": iterations,
    }


def suite_version() -> str:
    try:
        return version("precision-suite")
    except PackageNotFoundError:
        return "unknown"


def machine_info(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine the jobs ran on, from the records (a report may be rebuilt elsewhere), in
    pytest-benchmark's ``machine_info`` keys where the record has them."""
    environ = next((r.get("environ") for r in records if r.get("status") == "ok" and r.get("environ")), None)
    environ = environ or next((r.get("environ") for r in records if r.get("environ")), {}) or {}
    flags = environ.get("cpu_flags") or {}
    info: dict[str, Any] = {
        "node": environ.get("hostname"),
        "platform": environ.get("platform"),
        "python_version": environ.get("python"),
        "cpu": {
            "brand_raw": environ.get("cpu_model"),
            "count": environ.get("cpu_count"),
            "flags": sorted(name for name, present in flags.items() if present),
        },
        "device_name": environ.get("device_name"),
        "versions": versions(environ),
    }
    return {key: value for key, value in info.items() if value is not None}


def commit_info(records: list[dict[str, Any]]) -> dict[str, Any]:
    commit = next((r["environ"]["git_commit"] for r in records if (r.get("environ") or {}).get("git_commit")), None)
    dirty = bool(commit and commit.endswith("-dirty"))
    return {
        "id": (commit or "unversioned").removesuffix("-dirty"),
        "time": None,
        "author_time": None,
        "dirty": dirty,
        "project": "precision-suite",
        "branch": None,
    }


def _extra_info(group: Group, row: Row) -> dict[str, Any]:
    return {
        "model": row.model,
        "dataset": row.dataset,
        "device": row.device,
        "device_name": group.device_name,
        "framework": row.framework,
        "seeds": row.seeds_ok,
        "seeds_failed": row.seeds_failed,
        "accuracy_mean": row.accuracy_mean,
        "accuracy_ci95": row.accuracy_ci95,
        "accuracy_delta_pts": row.delta_pts,
        "baseline": row.baseline,
        "is_baseline": row.is_baseline,
        "speedup": row.speedup,
        "speedup_min": row.speedup_min,  # its 95 % interval
        "speedup_max": row.speedup_max,
        "speed_source": row.speed_source or None,
        "noisy": row.noisy_reason or False,
        "speed_unmeasured": row.speed_unmeasured or None,
        "emulated": row.emulated_reason or False,
        "peak_memory_bytes": row.peak_memory_bytes,
        "memory_source": row.memory_source,
        "memory_ratio": row.memory_ratio,
        "verdict": row.overall,
        "verdicts": {v.name: v.outcome for v in row.verdicts},
    }


def benchmark_document(comparison: Comparison, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``records``: the run's job records, for the machine and commit only; every figure is the
    comparison's."""
    benchmarks = []
    for group in comparison.groups:
        for row in group.rows:
            windows = row.speed_windows
            if windows is None:
                continue  # speed not measured, or no timed window kept (a record from before windows were)
            iterations = Counter(windows.steps).most_common(1)[0][0]
            benchmarks.append(
                {
                    "group": group.key,
                    "name": f"{row.backend}[{row.policy}]",
                    "fullname": f"{group.key}::{row.backend}[{row.policy}]",
                    "params": {"backend": row.backend, "policy": row.policy},
                    "param": row.policy,
                    "extra_info": _extra_info(group, row),
                    "options": {"timer": "perf_counter", "unit": "timed window of training steps"},
                    "stats": step_time_stats(list(windows.step_s), iterations),
                }
            )
    return jsonable(
        {
            "machine_info": machine_info(records),
            "commit_info": commit_info(records),
            "benchmarks": benchmarks,
            "datetime": datetime.now(timezone.utc).isoformat(),
            "version": suite_version(),
        }
    )


def write_benchmark_json(out_dir: Path, comparison: Comparison, records: list[dict[str, Any]]) -> Path:
    path = Path(out_dir) / BENCHMARK_FILE
    document = benchmark_document(comparison, records)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
