"""``precision-suite advise DIR``: from the run's measurements only, which precision policy to
use per (model, dataset, device) and framework, and the one line that applies it in the tools
users already use.

A policy is recommended only when its parity verdict is PASS (not merely "not FAIL": an
inconclusive one is not evidence), its precision was observed active, its hardware is not
emulating it, and it is faster than fp32 beyond noise (the lower end of the speedup's 95 %
interval above 1, and not labelled noisy). Among those, the fastest. Every other policy is listed
with why not. When none qualifies, the advice is to stay with fp32, said plainly.

The speedup is the comparison row's (``compare.row_speed``), the one the report shows: the paired
speed phase where it ran, training jobs only where they were timed alone, else "not measured".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precision_suite.backends.base import implementation_label
from precision_suite.backends.policy import find_policy
from precision_suite.bisect.record import BISECT_FILE, read_bisect
from precision_suite.outputs.intervals import memory_ratio_of, speedup_of
from precision_suite.outputs.rundir import (
    RowKey,
    RunDir,
    RunDirError,
    load_run,
    ok_records_by_row,
    row_key,
)
from precision_suite.verdicts.compare import PASS, Comparison, Group, Row
from precision_suite.verdicts.stats import PARITY_METRICS, Interval

# Which tools' settings apply to an API family's result (a Keras result holds on any runtime).
TOOLS_BY_FAMILY = {"torch": ("Lightning", "accelerate", "PyTorch"), "keras": ("Keras",)}


@dataclass
class BisectFix:
    """What ``precision-suite bisect`` found for a failing policy: the blocks to keep in fp32, and
    the speed and memory of the fixed policy measured in bisect's verdict run."""

    keep: list[str]
    verdict_run_dir: str
    speedup: Interval
    memory_ratio: Interval


@dataclass
class Candidate:
    row: Row
    speedup: Interval
    memory_ratio: Interval  # policy / fp32 peak memory
    reasons: list[str] = field(default_factory=list)  # why not; empty = eligible
    fix: BisectFix | None = None  # a bisect answer for this failing policy, where one was found


@dataclass
class Advice:
    group: str
    device_name: str
    framework: str  # the implementation advised: its runtime, or "keras on torch" (``implementation_label``)
    choice: Candidate | None
    avoid: list[Candidate]
    alternatives: list[Candidate] = field(default_factory=list)  # also qualify, but slower than the choice
    family: str = ""  # whose tools' settings apply (``TOOLS_BY_FAMILY``)

    def settings(self) -> list[tuple[str, str]]:
        if self.choice is None:
            return []
        device = "cuda" if self.choice.row.device.startswith("cuda") else "cpu"
        policy = find_policy(self.choice.row.policy)
        if policy is None:
            return []
        tools = TOOLS_BY_FAMILY.get(self.family, tuple(policy.advise))
        return [(tool, line) for tool in tools if (line := policy.advice(tool, device)) is not None]


def _fmt(value: Interval) -> str:
    return value.format("×", ci="95% CI ", undefined=" (no interval)")


def memory_saving_text(ratio: Interval) -> str:
    if ratio.estimate is None:
        return "memory saving n/a"
    # A ratio above 1 is a cost, said as one rather than as a negative saving.
    sign, what = (1, "memory saving") if ratio.estimate <= 1 else (-1, "memory cost")
    value = sign * 100 * (1 - ratio.estimate)
    if not ratio.defined:
        return f"{what} {value:.0f}%"
    low, high = sorted(sign * 100 * (1 - r) for r in (ratio.low, ratio.high))  # type: ignore[operator]
    if abs(high - low) < 0.05:
        return f"{what} {value:.0f}% (the same in every seed)"
    return f"{what} {value:.0f}% (95% CI {low:.0f}–{high:.0f}%)"


def why_not(row: Row, speedup: Interval, check_pure: bool) -> list[str]:
    reasons = []
    status = row.verdict("status")
    if row.all_failed:
        return [f"failed: {status.detail if status else 'no seed produced a result'}"]
    parity = row.verdict("parity")
    if parity is None:
        reasons.append("no parity verdict")
    elif parity.outcome != PASS:
        reasons.append(f"parity {parity.outcome.upper()}: {parity.detail}")
    if row.is_pure and not check_pure:
        reasons.append("half-precision weights with no fp32 master copy (shown for information, not held to parity)")
    precision = row.verdict("precision-active")
    if precision is not None and precision.outcome != PASS:
        reasons.append(f"precision-active {precision.outcome.upper()}: {precision.detail}")
    if row.seeds_failed:
        reasons.append(f"{len(row.seeds_failed)} seed(s) failed")
    if row.emulated:
        reasons.append(f"emulated: {row.emulated_reason}, so no speed claim")
    elif speedup.estimate is None:
        reasons.append(f"speed {row.speed_unmeasured}" if row.speed_unmeasured else "no speed measurement")
    elif not speedup.defined:
        reasons.append(f"speed {speedup.estimate:.2f}× without an interval (one seed, no timed windows)")
    elif speedup.low <= 1 <= speedup.high:  # type: ignore[operator]
        reasons.append(f"noisy: speedup {_fmt(speedup)} straddles 1.0, not faster beyond noise")
    elif speedup.high < 1:  # type: ignore[operator]
        reasons.append(f"slower: {_fmt(speedup)}")
    elif row.noisy_reason:
        reasons.append(f"noisy: speedup {_fmt(speedup)} not claimed ({row.noisy_reason})")
    return reasons


def advise_group(group: Group, records: dict, check_pure: bool) -> list[Advice]:
    out = []
    for implementation in dict.fromkeys(row.implementation for row in group.rows):
        candidates = []
        for row in group.rows:
            if row.implementation != implementation or row.is_baseline:
                continue
            speedup = speedup_of(row)
            candidates.append(Candidate(row, speedup, memory_ratio_of(row, records), why_not(row, speedup, check_pure)))
        eligible = [c for c in candidates if not c.reasons]
        choice = max(eligible, key=lambda c: c.speedup.estimate or 0.0) if eligible else None
        avoid = [c for c in candidates if c.reasons]
        alternatives = [c for c in eligible if c is not choice]
        label = implementation_label(*implementation)
        out.append(Advice(group.key, group.device_name, label, choice, avoid, alternatives, implementation[0]))
    return out


def advise(run: RunDir) -> list[Advice]:
    records = ok_records_by_row(run.records)
    advice = [a for g in run.comparison.groups for a in advise_group(g, records, run.comparison.check_pure)]
    fixes = bisect_fixes(run.path)
    for item in advice:
        for candidate in item.avoid:
            parity = candidate.row.verdict("parity")
            if parity is not None and parity.outcome != PASS:
                candidate.fix = fixes.get(row_key(candidate.row))
    return advice


def _bisect_files(run_path: Path) -> list[Path]:
    """bisect.json in the run directory, in its subfolders, next to it, and in its neighbours."""
    places = [run_path, *sorted(p for p in run_path.glob("*") if p.is_dir())]
    parent = run_path.parent
    places += [parent, *sorted(p for p in parent.glob("*") if p.is_dir() and p != run_path)]
    return [p / BISECT_FILE for p in places if (p / BISECT_FILE).is_file()]


def bisect_fixes(run_path: Path) -> dict[RowKey, BisectFix]:
    """Every answered bisect found around ``run_path`` whose verdict passed, by the row it fixes,
    with the fixed policy's speed and memory read from bisect's own verdict run."""
    fixes: dict[RowKey, BisectFix] = {}
    for path in _bisect_files(run_path):
        result = read_bisect(path)
        for model in result.models if result is not None else []:
            if not model.keep_fp32 or model.verdict != PASS or not model.verdict_run_dir:
                continue
            try:
                fixed = load_run(model.verdict_run_dir)
            except RunDirError:
                continue
            records = ok_records_by_row(fixed.records)
            for row in fixed.comparison.rows:
                if (row.backend, row.policy) != (result.backend, result.policy) or row.model != model.model:
                    continue
                fix = BisectFix(model.keep_fp32, model.verdict_run_dir, speedup_of(row), memory_ratio_of(row, records))
                fixes.setdefault(row_key(row), fix)
    return fixes


def fix_text(fix: BisectFix) -> str:
    speed = "speed not measured" if fix.speedup.estimate is None else f"{_fmt(fix.speedup)} vs fp32"
    return (
        f"fails; passes with {len(fix.keep)} block(s) kept in fp32 (bisect: keep_fp32: [{', '.join(fix.keep)}]): "
        f"{speed}, {memory_saving_text(fix.memory_ratio)} (measured in {fix.verdict_run_dir})"
    )


def _parity_delta(row: Any) -> str:
    """The difference parity judged: accuracy in points, or test loss in nats (``parity.metric``)."""
    eq = next((v.equivalence for v in row.verdicts if v.name == "parity" and v.equivalence is not None), None)
    if eq is None or eq.metric == "accuracy" or eq.interval is None:
        return f"accuracy Δ {row.delta_pts:+.2f} pt"
    return f"test loss Δ {PARITY_METRICS[eq.metric].fmt(eq.interval.estimate)} {eq.unit}"


def render_text(advice: list[Advice], comparison: Comparison) -> str:
    lines = []
    for item in advice:
        where = f"{item.group}" + (f" ({item.device_name})" if item.device_name else "")
        lines.append(f"## {where} · {item.framework}")
        if item.choice is None:
            lines.append(
                "stay with fp32: no policy is both faster than fp32 beyond noise and at parity (PASS) "
                "on this model and device."
            )
        else:
            c = item.choice
            lines.append(
                f"use {c.row.policy} ({c.row.backend}): {_fmt(c.speedup)} faster than fp32, "
                f"{memory_saving_text(c.memory_ratio)}, {_parity_delta(c.row)}, parity PASS."
            )
            for tool, setting in item.settings():
                body = setting.replace("\n", "\n    ")
                lines.append(f"  {tool}:" + (f"\n    {body}" if "\n" in setting else f" {setting}"))
        for c in item.alternatives:
            lines.append(
                f"  also at parity and faster: {c.row.label} {_fmt(c.speedup)}, {memory_saving_text(c.memory_ratio)}"
            )
        for c in item.avoid:
            lines.append(f"  avoid {c.row.label}: " + "; ".join(c.reasons))
            if c.fix is not None:
                lines.append(f"    {c.row.label} {fix_text(c.fix)}")
        lines.append("")
    tolerance = comparison.tolerance_pts
    bands = {g.tolerance_text for g in comparison.groups if g.parity_metric != "accuracy"}
    if tolerance is not None or bands:
        within = [f"accuracy within ±{tolerance:g} pt"] if tolerance is not None else []
        within += [f"test loss within {band.removesuffix(' (test loss)')}" for band in sorted(bands)]
        lines.append(
            f"parity: {' / '.join(within)} of fp32 of the same framework; speedups vs fp32 of "
            "the same framework with 95% intervals, as in the report: the paired speed phase where it ran, "
            "else training jobs timed alone (over seeds; timed windows with one seed)."
        )
    return "\n".join(lines).rstrip() + "\n"
