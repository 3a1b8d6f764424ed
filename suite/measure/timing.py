"""Timing: windows of whole steps closed by a device sync, the load other processes put on this
process's cores, the paired rotation of the speed phase and its statistics.

Timing rules (docs/architecture.md, "Measurement rules"): warm-up steps are excluded and reported
apart; a timing window closes with ``backend.synchronize()``; per-step times are window means (no
per-step sync); evaluation and telemetry reads happen outside the timed windows.

The speed phase (``precision_suite.measure.speed_phase``) times baseline and candidates in
rotation (``rotation``). A candidate's round ratio is the mean of the two fp32 windows around it
over its own window (both as per-step times), so drift within a round cancels too. The speedup is
the median of the per-round ratios; its 95 % CI is the distribution-free order-statistic interval
for a median (``median_ci``: coverage ≥ 95 % for any continuous distribution of i.i.d. round
ratios, checked by simulation in tests/suite/measure/test_timing.py).

Noise is measured, not assumed. Per window the phase records wall time, the process's CPU time,
the 1-minute load average and — from ``/proc/stat`` on Linux — how many cores *other*
processes kept busy during the window (``other_cores``). A speedup is labelled ``noisy``
(shown, never claimed as faster or slower, like ``emulated``) when, with the reason (``assess``):

* its 95 % CI includes 1.0 (the direction is not established);
* the round ratios disagree: their coefficient of variation exceeds ``NOISY_ROUND_CV``;
* either side's window times vary by more than ``NOISY_WINDOW_CV`` (CV);
* other processes used more than ``BUSY_OTHER_CORES`` cores (median over the windows) of the
  cores this process may run on: contention that hits multi-threaded frameworks unevenly.

The label is decided here, in the worker, and written into the speed record (the comparison
reads it back: ``precision_suite.verdicts.speed``). Everything here is framework-free;
``benchmarks/harness_overhead.py`` uses it too.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

NOISY_ROUND_CV = 0.10
NOISY_WINDOW_CV = 0.15
BUSY_OTHER_CORES = 0.25


# ---------------------------------------------------------------- windows of the training loop
class WindowTimer:
    """Accumulates timed windows of whole steps. ``open()`` starts a window; ``close(steps)``
    syncs the device, then stops the clock and records the window's mean step time."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self._synchronize = synchronize
        self._start: float | None = None
        self.window_step_s: list[float] = []
        self.window_steps: list[int] = []

    @property
    def is_open(self) -> bool:
        return self._start is not None

    def open(self) -> None:
        self._start = time.perf_counter()

    def close(self, steps: int) -> None:
        if self._start is None:
            return
        self._synchronize()
        elapsed = time.perf_counter() - self._start
        self._start = None
        if steps > 0:
            self.window_step_s.append(elapsed / steps)
            self.window_steps.append(steps)

    @property
    def timed_s(self) -> float:
        return float(sum(s * n for s, n in zip(self.window_step_s, self.window_steps, strict=True)))

    @property
    def timed_steps(self) -> int:
        return int(sum(self.window_steps))

    def summary(self, batch_size: int) -> dict[str, float | None]:
        if not self.window_step_s:
            return {"samples_per_s": None, "step_time_ms_p50": None, "step_time_ms_p90": None}
        # Percentiles over per-step times, each window's mean standing for its steps.
        per_step_ms = np.repeat(np.array(self.window_step_s) * 1e3, self.window_steps)
        return {
            "samples_per_s": self.timed_steps * batch_size / self.timed_s,
            "step_time_ms_p50": float(np.percentile(per_step_ms, 50)),
            "step_time_ms_p90": float(np.percentile(per_step_ms, 90)),
        }


# ---------------------------------------------------------------- system load
def _proc_stat_busy(cpus: set[int] | None) -> float | None:
    """Busy CPU seconds since boot over ``cpus`` (all when None), from /proc/stat; None when
    unreadable (not Linux)."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
        busy += sum(values[:8]) - values[3] - values[4]
    return busy / tick


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class SystemLoad:
    """CPU seconds other processes spent on this process's cores between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.cpus = _allowed_cpus()

    def start(self) -> tuple[float | None, float]:
        return _proc_stat_busy(self.cpus), time.process_time()

    def other_cores(self, started: tuple[float | None, float], wall_s: float) -> float | None:
        busy0, cpu0 = started
        busy1 = _proc_stat_busy(self.cpus)
        if busy0 is None or busy1 is None or wall_s <= 0:
            return None
        own = time.process_time() - cpu0
        # /proc/stat counts in clock ticks (10 ms): short windows are coarse, never negative.
        return max(0.0, (busy1 - busy0 - own) / wall_s)


def busy_warning(sample_s: float = 0.5) -> str | None:
    """A warning when other processes keep this process's cores busy right now (sampled for
    ``sample_s``): speed numbers measured now will likely be labelled noisy."""
    load = SystemLoad()
    started = load.start()
    time.sleep(sample_s)
    other = load.other_cores(started, sample_s)
    cores = len(load.cpus) if load.cpus else os.cpu_count() or 1
    if other is None or other <= BUSY_OTHER_CORES:
        return None
    return (
        f"machine busy: other processes use {other:.1f} of the {cores} core(s) this run may use; "
        "speedups will likely be labelled noisy (rerun on a quiet machine to claim them)"
    )


# ---------------------------------------------------------------- windows and rounds
@dataclass
class WindowSample:
    """One timed window: ``steps`` steps in ``wall_s`` seconds (closed by a device sync)."""

    steps: int
    wall_s: float
    cpu_s: float  # process CPU time (all threads) during the window
    loadavg_1m: float | None
    other_cores: float | None  # cores other processes kept busy (see SystemLoad)

    @property
    def step_s(self) -> float:
        return self.wall_s / self.steps


def measure_window(run: Callable[[], int], load: SystemLoad | None = None) -> WindowSample:
    """Time ``run`` (which does its steps, syncs the device and returns how many it did)."""
    load = load or SystemLoad()
    started = load.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    steps = run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    try:
        loadavg = os.getloadavg()[0]
    except OSError:
        loadavg = None
    return WindowSample(steps, wall, cpu, loadavg, load.other_cores(started, wall))


@dataclass
class Rotation:
    """Windows of a rotation: ``baseline[r]`` holds n+1 windows, ``candidates[i][r]`` one."""

    baseline: list[list[WindowSample]] = field(default_factory=list)
    candidates: list[list[WindowSample]] = field(default_factory=list)
    # Per candidate, per round: baseline step time / candidate step time.
    speedups: list[list[float]] = field(default_factory=list)


def rotation(
    baseline: Callable[[], WindowSample],
    candidates: Sequence[Callable[[], WindowSample]],
    rounds: int,
    on_round: Callable[[int], None] | None = None,
) -> Rotation:
    """Time baseline and candidates in rotation (module docstring); each candidate's round
    ratio uses the baseline windows on both sides of it."""
    n = len(candidates)
    out = Rotation(candidates=[[] for _ in range(n)], speedups=[[] for _ in range(n)])
    for r in range(rounds):
        order = list(range(n)) if r % 2 == 0 else list(reversed(range(n)))
        base_windows = [baseline()]
        for i in order:
            out.candidates[i].append(candidates[i]())
            base_windows.append(baseline())
        out.baseline.append(base_windows)
        for position, i in enumerate(order):
            around = (base_windows[position].step_s + base_windows[position + 1].step_s) / 2
            out.speedups[i].append(around / out.candidates[i][-1].step_s)
        if on_round is not None:
            on_round(r + 1)
    return out


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): the order-statistic interval [x_(k), x_(n+1-k)] with the
    largest k whose coverage 1 - 2·P(Bin(n, ½) < k) is ≥ ``confidence``. With too few values
    for that (n < 6 at 95 %) it is [min, max] and ``coverage`` says how much less it covers."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    k, coverage = 1, 1 - 2 * 0.5**n
    cdf = 0.0  # P(Bin(n, 1/2) <= j - 1) for the next candidate k = j
    for j in range(1, n // 2 + 1):
        cdf += math.comb(n, j - 1) * 0.5**n
        if 1 - 2 * cdf < confidence:
            break
        k, coverage = j, 1 - 2 * cdf
    return statistics.median(xs), xs[k - 1], xs[n - k], coverage


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (sample std / mean); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else math.inf


@dataclass
class SpeedEstimate:
    """A paired speedup and whether it can be claimed."""

    speedup: float
    ci_low: float
    ci_high: float
    ci_coverage: float
    rounds: int
    round_cv: float
    window_cv: float  # the larger of baseline's and candidate's window-time CV
    other_cores: float | None  # median over the windows
    noisy_reason: str = ""

    @property
    def noisy(self) -> bool:
        return bool(self.noisy_reason)


def assess(
    speedups: Sequence[float],
    baseline_windows: Sequence[WindowSample],
    candidate_windows: Sequence[WindowSample],
) -> SpeedEstimate:
    """Median, CI and the noise label of one candidate (module docstring for the rules)."""
    median, low, high, coverage = median_ci(speedups)
    window_cv = max(cv([w.step_s for w in baseline_windows]), cv([w.step_s for w in candidate_windows]))
    others = [w.other_cores for w in [*baseline_windows, *candidate_windows] if w.other_cores is not None]
    other = statistics.median(others) if others else None
    reasons = []
    if low <= 1.0 <= high:
        reasons.append(f"95% CI {low:.2f}–{high:.2f} includes 1.0")
    round_cv = cv(speedups)
    if round_cv > NOISY_ROUND_CV:
        reasons.append(f"rounds disagree (CV {round_cv:.0%} > {NOISY_ROUND_CV:.0%})")
    if window_cv > NOISY_WINDOW_CV:
        reasons.append(f"window times vary (CV {window_cv:.0%} > {NOISY_WINDOW_CV:.0%})")
    if other is not None and other > BUSY_OTHER_CORES:
        reasons.append(f"other processes busy on {other:.1f} core(s)")
    return SpeedEstimate(median, low, high, coverage, len(speedups), round_cv, window_cv, other, "; ".join(reasons))
