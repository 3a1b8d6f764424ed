"""What a comparison looks like: rich tables in the terminal, report.md, a self-contained
report.html (plots embedded as base64 PNG, opens offline), summary.csv and the plot PNGs.

Plots use matplotlib's object-oriented API on Agg canvases, so writing a report never touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from precision_suite.compare import (
    FAIL,
    FAILED,
    INCONCLUSIVE,
    NO_BASELINE,
    PASS,
    Comparison,
    Group,
    JobNote,
    Row,
    Verdict,
    _dataset_name,
    _framework,
    _model_name,
    check_exit_code,
)
from precision_suite.results import is_noise_floor_run, latest_by_job
from precision_suite.scaling import SCALING_HEADER, SCALING_NOTE, scaling_cells
from precision_suite.stats import MAX_SUGGESTED_SEEDS
from rich import box
from rich.console import Console
from rich.table import Table

_STYLE = {PASS: "green", FAIL: "red", FAILED: "red", NO_BASELINE: "yellow", INCONCLUSIVE: "bold yellow"}
_CSS_CLASS = {PASS: "pass", FAIL: "fail", FAILED: "fail", NO_BASELINE: "warn", INCONCLUSIVE: "warn"}
_FRAMEWORK_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]

SUMMARY_COLUMNS = [
    "model",
    "dataset",
    "device",
    "device_name",
    "backend",
    "framework",
    "policy",
    "seeds_ok",
    "seeds_failed",
    "accuracy_mean",
    "accuracy_ci95",
    "baseline",
    "delta_pts",
    "step_time_ms_p50",
    "samples_per_s",
    "speedup",
    "speedup_min",
    "speedup_max",
    "emulated",
    "emulated_reason",
    "peak_memory_bytes",
    "memory_source",
    "memory_ratio",
    "skipped_steps",
    "loss_scale_final",
    "compute_dtype",
    "param_dtype",
    "master_dtype",
    "loss_scaling",
    "parity",
    "precision_active",
    "verdict",
    "speed_source",
    "noisy_reason",
    "why_not_faster",
]


# --- cell formatting -------------------------------------------------------------------------


def _minus(text: str) -> str:
    return text.replace("-", "−")


def fmt_accuracy(row: Row) -> str:
    if row.accuracy_mean is None:
        return "—"
    text = f"{100 * row.accuracy_mean:.2f}"
    if row.accuracy_ci95 is None:
        return text + " (1 seed, no CI)" if len(row.accuracy_values) == 1 else text
    return f"{text} ± {100 * row.accuracy_ci95:.2f}"


def fmt_delta(row: Row) -> str:
    if row.is_baseline:
        return "baseline"
    if row.delta_pts is None:
        return "—" if row.baseline else "no baseline"
    return _minus(f"{row.delta_pts:+.2f}")


def fmt_speedup(row: Row) -> str:
    if row.is_baseline:
        return "1.00× (baseline)"
    if row.speedup is None:
        return "—"
    spread = ""
    if row.speed_source == "paired" and row.speedup_min is not None and row.speedup_max is not None:
        spread = f" (CI {row.speedup_min:.2f}–{row.speedup_max:.2f})"
    elif row.speedup_min is not None and row.speedup_max is not None and len(row.seeds_ok) > 1:
        spread = f" ({row.speedup_min:.2f}–{row.speedup_max:.2f})"
    text = f"{row.speedup:.2f}×{spread}"
    if row.emulated:
        return f"{text} emulated"
    return f"{text} noisy" if row.noisy_reason else text


def speed_explanation(group: Group) -> str:
    """How the group's speedups were measured (paired phase or separate jobs)."""
    if any(row.speed_source == "paired" for row in group.rows):
        return (
            "speedup = paired, interleaved timing (fp32 and each policy in rotation in one worker): median of "
            "per-round fp32/policy step-time ratios, 95% CI in parentheses; noisy = shown, not claimed"
        )
    return "speedup = fp32 step time p50 / step time p50 of separately timed jobs; range over seeds in parentheses"


def speed_notes(group: Group) -> list[str]:
    """One line per row that is not claimed faster and has measured causes."""
    return [
        f"why not faster — {row.label}: " + "; ".join(row.why_not_faster) for row in group.rows if row.why_not_faster
    ]


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def fmt_memory(row: Row) -> str:
    text = fmt_bytes(row.peak_memory_bytes)
    if row.memory_ratio is not None:
        text += f" ({row.memory_ratio:.2f}×)"
    return text


def fmt_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if digits:
        return f"{value:.{digits}f}"
    # Means over seeds are rarely whole: one decimal is what a reader can use.
    return f"{value:g}" if float(value).is_integer() else f"{value:.1f}"


def fmt_seeds(row: Row) -> str:
    total = len(row.seeds_ok) + len(row.seeds_failed)
    text = f"{len(row.seeds_ok)}/{total}"
    if row.seeds_failed:
        text += f" (failed: {', '.join(map(str, row.seeds_failed))})"
    return text


def verdict_cells(row: Row) -> list[tuple[str, str]]:
    """(text, outcome) per verdict of the row, in a fixed order."""
    cells = []
    for verdict in row.verdicts:
        name = "precision" if verdict.name == "precision-active" else verdict.name
        if verdict.name == "status":
            cells.append(("FAILED", FAILED) if verdict.enforced else ("FAILED (info)", "info"))
            continue
        text = f"{name} {verdict.outcome.upper()}"
        if not verdict.enforced:
            text += " (info)"
        cells.append((text, verdict.outcome if verdict.enforced else "info"))
    return cells


# --- verdict statistics ----------------------------------------------------------------------


def seeds_advice(verdict: Verdict, run_dir: str | None) -> str:
    """For an INCONCLUSIVE equivalence verdict: how many seeds would likely decide it and the
    command that adds them (``--resume`` reuses every finished job); "" otherwise."""
    eq = verdict.equivalence
    if verdict.outcome != INCONCLUSIVE or eq is None:
        return ""
    where = run_dir or "DIR"
    n_now = min(eq.n_candidate, eq.n_baseline)
    if eq.seeds_suggested is None:
        return (
            f"more than {MAX_SUGGESTED_SEEDS} seeds: the difference sits on the tolerance edge "
            "(widen parity.tolerance_pts or accept the uncertainty)"
        )
    if n_now < 2:
        seeds = "[" + ", ".join(map(str, range(eq.seeds_suggested))) + "]"
    else:
        seeds = f"{{min: {n_now}, max: {eq.seeds_suggested}}}"
    return (
        f"~{eq.seeds_suggested} seeds would likely decide it: "
        f"precision-suite run --resume {where} --set 'seeds={seeds}'"
    )


def equivalence_rows(comparison: Comparison, group: Group) -> list[tuple[str, Verdict]]:
    """(label, verdict) of every verdict of ``group`` with an equivalence test, rows first."""
    out = [(row.label, v) for row in group.rows for v in row.verdicts if v.equivalence is not None]
    out += [(v.subject.split(" ", 1)[-1], v) for v in group.verdicts if v.equivalence is not None]
    return out


_EQUIVALENCE_HEADER = ["verdict", "subject", "Δ pt", "CI", "tolerance", "outcome", "pairing", "more seeds"]


def _equivalence_cells(label: str, verdict: Verdict, run_dir: str | None) -> list[str]:
    eq = verdict.equivalence
    assert eq is not None
    interval = eq.interval
    outcome = verdict.outcome.upper() + ("" if verdict.enforced else " (info)")
    return [
        verdict.name,
        label,
        "—" if interval is None else _minus(f"{interval.mean:+.2f}"),
        "— (1 seed)"
        if interval is None
        else _minus(f"{100 * eq.ci_level:.4g}% [{interval.low:+.2f}, {interval.high:+.2f}]")
        + f" {eq.method} n={interval.n}",
        f"±{eq.tolerance_pts:g}",
        outcome,
        "—" if eq.pairing_gain is None else f"×{eq.pairing_gain:.2f}",
        seeds_advice(verdict, run_dir) or "—",
    ]


# --- terminal --------------------------------------------------------------------------------


def _rich_outcome(text: str, outcome: str) -> str:
    style = _STYLE.get(outcome, "dim")
    return f"[{style}]{text}[/]"


def _group_title(group: Group) -> str:
    where = f" — {group.device_name}" if group.device_name else ""
    return f"{group.model} · {group.dataset} · {group.device}{where}"


def render_terminal(comparison: Comparison, console: Console) -> None:
    """One table per (model, dataset, device), its headlines and cross-framework verdicts, then
    the unavailable and failed jobs."""
    # Messages keep one line each: wrapped, they break grep and CI logs.
    say = partial(console.print, soft_wrap=True)
    for group in comparison.groups:
        table = Table(title=_group_title(group), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column, justify, no_wrap in (
            ("backend", "left", True),
            ("policy", "left", True),
            ("seeds", "right", False),
            ("acc %", "right", False),
            ("Δ pt", "right", True),
            ("speedup", "right", False),
            ("memory", "right", False),
            ("skip", "right", False),
            ("verdict", "left", False),
        ):
            table.add_column(column, justify=justify, no_wrap=no_wrap, min_width=len(column))
        for row in group.rows:
            delta = "base" if row.is_baseline else fmt_delta(row)
            parity = row.verdict("parity")
            if parity is not None and parity.outcome == FAIL:
                delta = _rich_outcome(delta, FAIL if parity.enforced else NO_BASELINE)
            speed = "base" if row.is_baseline else fmt_speedup(row)
            memory = fmt_bytes(row.peak_memory_bytes)
            if row.memory_ratio is not None:
                memory += f" ×{row.memory_ratio:.2f}"
            table.add_row(
                row.backend,
                row.policy,
                fmt_seeds(row),
                fmt_accuracy(row).replace("(1 seed, no CI)", "(n=1)"),
                delta,
                speed.replace(" emulated", " [yellow]emulated[/]").replace(" noisy", " [yellow]noisy[/]"),
                memory,
                fmt_number(row.skipped_steps),
                _terminal_verdict(row),
            )
        console.print(table)
        say(
            f"  accuracy: mean ± 95% CI over seeds; Δ and speedup vs fp32 of the same framework;"
            f" tolerance ±{group.tolerance_pts:g} pt; {speed_explanation(group)}"
        )
        for headline in comparison.headlines:
            if headline.group == group.key:
                text = _escape_rich(headline.text)
                say("  " + _rich_outcome("●", headline.outcome) + " " + text)
        for row in group.rows:
            parity = row.verdict("parity")
            if parity is not None and parity.equivalence is not None:
                label = parity.outcome.upper() + ("" if parity.enforced else " (info)")
                say(
                    "  "
                    + _rich_outcome(f"parity {label}", parity.outcome if parity.enforced else "info")
                    + f" {row.label}: {_escape_rich(parity.detail)}"
                )
                if advice := seeds_advice(parity, comparison.run_dir):
                    say(f"    [yellow]{_escape_rich(advice)}[/]")
        for verdict in group.verdicts:
            say(
                "  "
                + _rich_outcome(f"cross-framework {verdict.outcome.upper()}", verdict.outcome)
                + f" {verdict.subject.split(' ', 1)[-1]}: {_escape_rich(verdict.detail)}"
            )
            if advice := seeds_advice(verdict, comparison.run_dir):
                say(f"    [yellow]{_escape_rich(advice)}[/]")
        emulated = [row for row in group.rows if row.emulated]
        for row in emulated:
            say(f"  [yellow]emulated[/] {row.label}: {_escape_rich(row.emulated_reason)} — kept out of speed claims")
        for note in speed_notes(group):
            say(f"  {_escape_rich(note)}")
        console.print()
    if comparison.scaling:
        table = Table(title="data-parallel weak scaling", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in SCALING_HEADER:
            left = column in ("model", "backend", "policy")
            table.add_column(column, justify="left" if left else "right", no_wrap=column == "model")
        for scaling_row in comparison.scaling:
            table.add_row(*scaling_cells(scaling_row))
        console.print(table)
        say(f"  {SCALING_NOTE}")
        console.print()
    _render_notes(comparison, console)


def _terminal_verdict(row: Row) -> str:
    """PASS when every enforced verdict passes; otherwise only the verdicts that did not (the
    details are in the headlines and in `check`)."""
    problems = [(t, o) for t, o in verdict_cells(row) if o != PASS]
    if not problems:
        return _rich_outcome("PASS", PASS)
    cells = [_rich_outcome(t, o) for t, o in problems]
    if not any(v.is_failure or v.outcome == NO_BASELINE for v in row.verdicts):
        cells.insert(0, _rich_outcome("PASS", PASS))
    return " ".join(cells)


def _escape_rich(text: str) -> str:
    return text.replace("[", r"\[")


def _render_notes(comparison: Comparison, console: Console) -> None:
    # Messages keep one line each: wrapped, they break grep and CI logs.
    say = partial(console.print, soft_wrap=True)
    if comparison.unavailable:
        say(f"[bold]unavailable[/] ({len(comparison.unavailable)}, not failures):")
        for note in comparison.unavailable:
            say(f"  [dim]{note.job_id}[/]: {_escape_rich(note.message)}")
    if comparison.failed_jobs:
        say(f"[bold red]failed jobs[/] ({len(comparison.failed_jobs)}):")
        for note in comparison.failed_jobs:
            say(f"  [red]{note.status}[/] {note.job_id}: {_escape_rich(note.message)}")


def print_verdicts(comparison: Comparison, console: Console, strict: bool = False) -> None:
    """Every verdict on one line, then the count and what `check` (``--strict``) will exit with."""
    verdicts = comparison.verdicts
    width = max((len(v.name) for v in verdicts), default=0)
    for verdict in verdicts:
        label = verdict.outcome.upper()
        if not verdict.enforced:
            label += " (info)"
        style = _STYLE.get(verdict.outcome, "dim") if verdict.enforced else "dim"
        console.print(
            f"[{style}]{label:<12}[/] {verdict.name:<{width}}  {verdict.subject}: {_escape_rich(verdict.detail)}"
        )
        if advice := seeds_advice(verdict, comparison.run_dir):
            console.print(f"{'':<12} {'':<{width}}  [yellow]{_escape_rich(advice)}[/]")
    _render_notes(comparison, console)
    failures = sum(v.is_failure for v in verdicts)
    passes = sum(v.outcome == PASS and v.enforced for v in verdicts)
    undecided = sum(v.is_inconclusive for v in verdicts)
    code = check_exit_code(comparison, strict=strict)
    colour = "red" if code else "green"
    why = " (--strict: inconclusive fails)" if strict and undecided else ""
    console.print(
        f"[bold {colour}]{'FAIL' if code else 'PASS'}[/]{why}: {passes} passed, {failures} failed, "
        f"{undecided} inconclusive (more seeds needed; fail only with --strict), "
        f"{len(verdicts) - passes - failures - undecided} informational or without baseline"
    )


# --- plots -----------------------------------------------------------------------------------


@dataclass
class Plot:
    name: str  # file stem
    title: str
    png: bytes


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _stack(curves: list[list[Any]]) -> np.ndarray | None:
    """Seed-mean of equal-length curves (the most common length wins; None becomes NaN)."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    lengths = [len(c) for c in curves]
    common = max(set(lengths), key=lengths.count)
    rows = [[np.nan if v is None else float(v) for v in c] for c in curves if len(c) == common]
    with np.errstate(all="ignore"):
        return np.nanmean(np.array(rows, dtype=np.float64), axis=0)


def _colours(group: Group) -> dict[str, str]:
    frameworks = sorted({row.framework for row in group.rows}, key=lambda f: (f != "torch", f))
    return {f: _FRAMEWORK_COLOURS[i % len(_FRAMEWORK_COLOURS)] for i, f in enumerate(frameworks)}


_LINESTYLES = {"fp32": "-", "tf32": (0, (1, 1)), "bf16-mixed": "--", "fp16-mixed": "-."}


def _plot_loss(group: Group, by_row: dict[str, list[dict[str, Any]]]) -> Plot | None:
    figure = _new_figure(8, 4.5)
    axes = figure.add_subplot()
    colours = _colours(group)
    plotted = 0
    for index, row in enumerate(group.rows):
        records = by_row.get(row.label, [])
        loss = _stack([(r.get("curves") or {}).get("train_loss") for r in records])
        if loss is None:
            continue
        steps = (records[0].get("curves") or {}).get("step") or list(range(loss.size))
        steps = steps if len(steps) == loss.size else list(range(loss.size))
        axes.plot(
            steps,
            loss,
            label=f"{row.label} (n={len(records)})",
            color=colours[row.framework],
            linestyle=_LINESTYLES.get(row.policy, ":"),
            marker="os^vDx"[index % 6],
            markevery=max(1, loss.size // 8),
            markersize=4,
            linewidth=1.2,
        )
        plotted += 1
    if not plotted:
        return None
    low, high = axes.get_ylim()
    # Log scale only pays off when the loss spans a decade; otherwise it just mangles the ticks.
    log = low > 0 and high / low > 10
    if log:
        axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("train loss (seed mean" + (", log)" if log else ")"))
    axes.set_title(f"Training loss — {group.key}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return Plot(f"loss_{_slug(group.key)}", f"Training loss — {group.key}", _png(figure))


def _plot_loss_scale(group: Group, by_row: dict[str, list[dict[str, Any]]]) -> Plot | None:
    figure = _new_figure(8, 3.8)
    axes = figure.add_subplot()
    colours = _colours(group)
    plotted = 0
    for row in group.rows:
        for record in by_row.get(row.label, [])[:1]:  # one seed: trajectories are per seed
            curves = record.get("curves") or {}
            scale = [np.nan if v is None else float(v) for v in curves.get("loss_scale") or []]
            if not scale or all(v == 1.0 for v in scale):
                continue
            steps = curves.get("step") or list(range(len(scale)))
            steps = steps if len(steps) == len(scale) else list(range(len(scale)))
            line = axes.step(
                steps,
                scale,
                where="post",
                label=f"{row.label} seed {record.get('seed')}",
                color=colours[row.framework],
                linestyle=_LINESTYLES.get(row.policy, ":"),
            )[0]
            skipped = curves.get("skipped") or []
            marks = [i for i, s in enumerate(skipped[: len(scale)]) if s]
            if marks:
                axes.scatter(
                    [steps[i] for i in marks],
                    [scale[i] for i in marks],
                    marker="x",
                    color="red",
                    zorder=3,
                    label=f"skipped steps ({len(marks)})",
                )
            plotted += 1 if line else 0
    if not plotted:
        return None
    axes.set_yscale("log", base=2)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss scale (log2)")
    axes.set_title(f"Loss scale — {group.key} (× = skipped step)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot(f"loss_scale_{_slug(group.key)}", f"Loss scale — {group.key}", _png(figure))


def _bar_labels(group: Group) -> list[str]:
    return [f"{row.backend}\n{row.policy}" for row in group.rows]


def _plot_speed_memory(group: Group) -> Plot | None:
    rows = group.rows
    if not any(r.samples_per_s for r in rows) and not any(r.peak_memory_bytes for r in rows):
        return None
    colours = _colours(group)
    figure = _new_figure(max(8, 1.1 * len(rows) + 2), 4.8)
    speed_axes, memory_axes = figure.subplots(1, 2)
    positions = np.arange(len(rows))
    for axes, values, note_of, ylabel in (
        (
            speed_axes,
            [r.samples_per_s or 0 for r in rows],
            lambda r: (
                "base"
                if r.is_baseline
                else (f"{r.speedup:.2f}×" + ("\nemul." if r.emulated else ""))
                if r.speedup is not None
                else ""
            ),
            "samples / s",
        ),
        (
            memory_axes,
            [(r.peak_memory_bytes or 0) / 2**20 for r in rows],
            lambda r: "base" if r.is_baseline else f"{r.memory_ratio:.2f}×" if r.memory_ratio is not None else "",
            "peak memory (MiB)",
        ),
    ):
        bars = axes.bar(
            positions,
            values,
            color=[colours[r.framework] for r in rows],
            hatch=None,
            edgecolor="black",
            linewidth=0.5,
        )
        for bar, row in zip(bars, rows, strict=True):
            if row.emulated:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
            axes.annotate(
                note_of(row),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        axes.set_xticks(positions, _bar_labels(group), fontsize=7, rotation=45, ha="right")
        axes.set_ylabel(ylabel)
        axes.grid(True, axis="y", alpha=0.3)
        axes.margins(y=0.15)
    speed_axes.set_title("Throughput (× = speedup vs fp32; hatched = emulated)", fontsize=9)
    source = " / ".join(sorted({r.memory_source for r in rows if r.memory_source})) or "?"
    memory_axes.set_title(f"Peak memory ({source})", fontsize=9)
    figure.suptitle(f"Speed and memory — {group.key}")
    return Plot(f"speed_memory_{_slug(group.key)}", f"Speed and memory — {group.key}", _png(figure))


def _plot_memory_breakdown(group: Group, by_row: dict[str, list[dict[str, Any]]]) -> Plot | None:
    """Stacked bar per row of the framework-neutral accounting (precision_suite.memory), so a
    ratio is explained: which component a policy shrinks."""
    from precision_suite.memory import COMPONENTS, breakdown_shares

    rows, stacks = [], []
    for row in group.rows:
        records = by_row.get(row.label) or []
        breakdown = next(((r.get("metrics") or {}).get("memory_breakdown") for r in records), None)
        if breakdown:
            rows.append(row)
            stacks.append(breakdown)
    if not rows:
        return None
    figure = _new_figure(max(6, 0.9 * len(rows) + 3), 4.8)
    axes = figure.subplots(1, 1)
    positions = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for component in COMPONENTS:
        values = np.array([float(b.get(component) or 0) / 2**20 for b in stacks])
        axes.bar(positions, values, bottom=bottom, label=component.replace("_", " "), edgecolor="black", linewidth=0.4)
        bottom += values
    for position, row, breakdown in zip(positions, rows, stacks, strict=True):
        share = breakdown_shares(breakdown)["activations"]
        ratio = "base" if row.is_baseline else f"{row.memory_ratio:.2f}×" if row.memory_ratio is not None else ""
        axes.annotate(f"{ratio}\nact. {share:.0%}", (position, bottom[position]), ha="center", va="bottom", fontsize=7)
    axes.set_xticks(positions, [f"{r.backend}\n{r.policy}" for r in rows], fontsize=7, rotation=45, ha="right")
    axes.set_ylabel("MiB (accounting)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(True, axis="y", alpha=0.3)
    axes.margins(y=0.2)
    title = f"Memory by component — {group.key}"
    axes.set_title("weights, gradients, optimizer state, master copies, saved activations", fontsize=9)
    figure.suptitle(title)
    return Plot(f"memory_breakdown_{_slug(group.key)}", title, _png(figure))


def _plot_accuracy(group: Group) -> Plot | None:
    rows = group.rows
    if not any(r.accuracy_mean is not None for r in rows):
        return None
    colours = _colours(group)
    figure = _new_figure(max(8, 1.1 * len(rows) + 2), 4.2)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    for position, row in zip(positions, rows, strict=True):
        if row.accuracy_mean is None:
            axes.annotate(
                "failed",
                (position, 0),
                ha="center",
                color="red",
                fontsize=8,
                xycoords=("data", "axes fraction"),
                xytext=(0, 4),
                textcoords="offset points",
            )
            continue
        axes.errorbar(
            position,
            100 * row.accuracy_mean,
            yerr=None if row.accuracy_ci95 is None else 100 * row.accuracy_ci95,
            fmt="o" if row.accuracy_ci95 is not None else "s",
            color=colours[row.framework],
            capsize=4,
        )
        for value in row.accuracy_values:
            axes.plot(position, 100 * value, ".", color="grey", markersize=3)
    for row in rows:
        if row.is_baseline and row.accuracy_mean is not None:
            level = 100 * row.accuracy_mean
            axes.axhspan(
                level - group.tolerance_pts,
                level + group.tolerance_pts,
                color=colours[row.framework],
                alpha=0.08,
            )
            axes.axhline(
                level,
                color=colours[row.framework],
                linestyle="--",
                linewidth=0.8,
                label=f"{row.label} ± {group.tolerance_pts:g} pt",
            )
    axes.set_xticks(positions, _bar_labels(group), fontsize=7, rotation=45, ha="right")
    axes.set_ylabel("test accuracy % (mean, 95% CI; dots = seeds)")
    axes.set_title(f"Accuracy — {group.key} (square = one seed, no CI)")
    axes.grid(True, axis="y", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot(f"accuracy_{_slug(group.key)}", f"Accuracy — {group.key}", _png(figure))


def _plot_forest(comparison: Comparison, group: Group) -> Plot | None:
    """One line per equivalence verdict: the interval of Δ the verdict was read from, against
    the ±tolerance band; colour = outcome."""
    entries = [(label, v) for label, v in equivalence_rows(comparison, group) if v.equivalence.interval is not None]
    if not entries:
        return None
    colours = {PASS: "#137333", FAIL: "#c5221f", INCONCLUSIVE: "#b06000"}
    figure = _new_figure(7, 1.4 + 0.35 * len(entries))
    axes = figure.add_subplot()
    tol = group.tolerance_pts
    axes.axvspan(-tol, tol, color="#137333", alpha=0.08, label=f"±{tol:g} pt tolerance")
    axes.axvline(0, color="grey", linewidth=0.8)
    for y, (_, verdict) in enumerate(reversed(entries)):
        eq = verdict.equivalence
        interval = eq.interval
        colour = colours.get(verdict.outcome, "grey") if verdict.enforced else "grey"
        axes.plot([interval.low, interval.high], [y, y], color=colour, linewidth=2.5, solid_capstyle="butt")
        axes.plot(interval.mean, y, "o", color=colour, markersize=5)
    axes.set_yticks(
        range(len(entries)),
        [f"{label} ({v.name}, {v.outcome.upper()})" for label, v in reversed(entries)],
        fontsize=7,
    )
    reach = max([tol] + [max(abs(v.equivalence.interval.low), abs(v.equivalence.interval.high)) for _, v in entries])
    axes.set_xlim(-1.15 * reach, 1.15 * reach)
    axes.set_xlabel("Δ accuracy vs baseline, pt (bar: the verdict's CI)", fontsize=8)
    axes.set_title(f"Equivalence — {group.key}", fontsize=9)
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return Plot(f"equivalence_{_slug(group.key)}", f"Equivalence (Δ, CI, ±tolerance) — {group.key}", _png(figure))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def make_plots(comparison: Comparison, records: list[dict[str, Any]]) -> list[Plot]:
    ok_records = [
        r
        for r in latest_by_job([r for r in records if "job_id" in r]).values()
        if r.get("status") == "ok" and not is_noise_floor_run(r)
    ]
    by_group: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in sorted(ok_records, key=lambda r: r.get("seed") or 0):
        key = (_model_name(record), _dataset_name(record), str(record.get("device")))
        by_group[key][f"{record.get('backend')} {record.get('policy')}"].append(record)
    plots = []
    for group in comparison.groups:
        by_row = by_group[(group.model, group.dataset, group.device)]
        for plot in (
            _plot_loss(group, by_row),
            _plot_loss_scale(group, by_row),
            _plot_speed_memory(group),
            _plot_memory_breakdown(group, by_row),
            _plot_accuracy(group),
            _plot_forest(comparison, group),
        ):
            if plot is not None:
                plots.append(plot)
    return plots


# --- environment -----------------------------------------------------------------------------


def _fmt_env_value(value: Any) -> str:
    if isinstance(value, dict):
        if value and all(isinstance(v, bool) for v in value.values()):
            on = [k for k, v in value.items() if v]
            return ", ".join(on) if on else "none"
        return ", ".join(f"{k}={_fmt_env_value(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return "—" if value is None else str(value)


def environment_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one column per (framework, device), one row per environment key."""
    first: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("status") != "ok" or not record.get("environ"):
            continue
        column = f"{_framework(record)} · {record.get('device')}"
        first.setdefault(column, record["environ"])
    columns = sorted(first, key=lambda c: (not c.startswith("torch"), c))
    keys: list[str] = []
    for column in columns:
        keys.extend(k for k in first[column] if k not in keys)
    rows = [[key] + [_fmt_env_value(first[c].get(key)) for c in columns] for key in keys]
    return ["key", *columns], rows


# --- files -----------------------------------------------------------------------------------


def _summary_row(group: Group, row: Row) -> dict[str, Any]:
    parity = row.verdict("parity")
    precision = row.verdict("precision-active")

    def num(value: float | None) -> Any:
        return "" if value is None or not math.isfinite(value) else value

    return {
        "model": row.model,
        "dataset": row.dataset,
        "device": row.device,
        "device_name": group.device_name,
        "backend": row.backend,
        "framework": row.framework,
        "policy": row.policy,
        "seeds_ok": len(row.seeds_ok),
        "seeds_failed": len(row.seeds_failed),
        "accuracy_mean": num(row.accuracy_mean),
        "accuracy_ci95": num(row.accuracy_ci95),
        "baseline": row.baseline or ("self" if row.is_baseline else ""),
        "delta_pts": num(row.delta_pts),
        "step_time_ms_p50": num(row.step_time_ms_p50),
        "samples_per_s": num(row.samples_per_s),
        "speedup": num(row.speedup),
        "speedup_min": num(row.speedup_min),
        "speedup_max": num(row.speedup_max),
        "emulated": row.emulated,
        "emulated_reason": row.emulated_reason,
        "peak_memory_bytes": num(row.peak_memory_bytes),
        "memory_source": row.memory_source or "",
        "memory_ratio": num(row.memory_ratio),
        "skipped_steps": num(row.skipped_steps),
        "loss_scale_final": num(row.loss_scale_final),
        "compute_dtype": row.observed.get("compute_dtype") or "",
        "param_dtype": row.observed.get("param_dtype") or "",
        "master_dtype": row.observed.get("master_dtype") or "",
        "loss_scaling": row.observed.get("loss_scaling") or "",
        "parity": "" if parity is None else parity.outcome,
        "precision_active": "" if precision is None else precision.outcome,
        "verdict": row.overall,
        "speed_source": row.speed_source,
        "noisy_reason": row.noisy_reason,
        "why_not_faster": "; ".join(row.why_not_faster),
    }


def write_summary_csv(path: Path, comparison: Comparison) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for group in comparison.groups:
            for row in group.rows:
                writer.writerow(_summary_row(group, row))


_TABLE_HEADER = [
    "backend",
    "policy",
    "seeds",
    "accuracy % (95% CI)",
    "Δ vs fp32 (pt)",
    "speedup",
    "peak memory (ratio)",
    "skipped",
    "final scale",
    "compute / updated dtype",
    "verdict",
]


def _table_cells(row: Row) -> list[str]:
    updated = row.observed.get("master_dtype") or row.observed.get("param_dtype") or "—"
    compute = row.observed.get("compute_dtype") or "—"
    return [
        row.backend,
        row.policy,
        fmt_seeds(row),
        fmt_accuracy(row),
        fmt_delta(row),
        fmt_speedup(row),
        fmt_memory(row),
        fmt_number(row.skipped_steps),
        fmt_number(row.loss_scale_final),
        f"{compute} / {updated}",
    ]


def _overall_line(comparison: Comparison) -> tuple[str, str]:
    code = check_exit_code(comparison)
    failures = sum(v.is_failure for v in comparison.verdicts)
    undecided = sum(v.is_inconclusive for v in comparison.verdicts)
    also = f"; {undecided} INCONCLUSIVE (more seeds needed; fails only `check --strict`)" if undecided else ""
    if code:
        return FAIL, f"check FAILS: {failures} verdict(s) failed{also}"
    return PASS, f"check passes: {len(comparison.verdicts)} verdict(s), none failed{also}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_md_escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _notes_lines(title: str, notes: list[JobNote]) -> list[str]:
    if not notes:
        return []
    lines = [f"## {title} ({len(notes)})", ""]
    lines += [f"- `{n.job_id}` — **{n.status}**: {_md_escape(n.message)}" for n in notes]
    return lines + [""]


def _verdict_text(verdict: Verdict, run_dir: str | None = None) -> str:
    label = verdict.outcome.upper() + ("" if verdict.enforced else " (info)")
    advice = seeds_advice(verdict, run_dir)
    return f"{label} {verdict.name} — {verdict.subject}: {verdict.detail}" + (f" — {advice}" if advice else "")


def render_markdown(comparison: Comparison, records: list[dict[str, Any]], plots: list[Plot]) -> str:
    _, overall = _overall_line(comparison)
    lines = ["# precision-suite report", "", f"**{overall}**", ""]
    for group in comparison.groups:
        lines += [f"## {_group_title(group)}", ""]
        lines += [f"- {h.text}" for h in comparison.headlines if h.group == group.key]
        lines += [f"- cross-framework {v.outcome.upper()}: {v.detail}" for v in group.verdicts]
        lines += [
            f"- **emulated** {r.label}: {r.emulated_reason} — kept out of speed claims"
            for r in group.rows
            if r.emulated
        ]
        lines += [f"- {note}" for note in speed_notes(group)]
        lines.append("")
        rows = [_table_cells(r) + [" ".join(t for t, _ in verdict_cells(r))] for r in group.rows]
        lines += _md_table(_TABLE_HEADER, rows)
        equivalences = equivalence_rows(comparison, group)
        if equivalences:
            lines += ["", "Equivalence tests (TOST: PASS = CI inside ±tolerance, FAIL = CI outside it):", ""]
            lines += _md_table(
                _EQUIVALENCE_HEADER, [_equivalence_cells(label, v, comparison.run_dir) for label, v in equivalences]
            )
        lines += [
            "",
            f"Tolerance ±{group.tolerance_pts:g} pt. {speed_explanation(group).capitalize()}.",
            "",
        ]
        for plot in plots:
            if plot.name.endswith(_slug(group.key)):
                lines += [f"![{plot.title}](plots/{plot.name}.png)", ""]
    if comparison.scaling:
        lines += ["## Data-parallel weak scaling", ""]
        lines += _md_table(SCALING_HEADER, [scaling_cells(r) for r in comparison.scaling]) + ["", SCALING_NOTE, ""]
    lines += ["## Verdicts", ""]
    lines += [f"- {_md_escape(_verdict_text(v, comparison.run_dir))}" for v in comparison.verdicts] + [""]
    lines += _notes_lines("Failed jobs", comparison.failed_jobs)
    lines += _notes_lines("Unavailable jobs (not failures)", comparison.unavailable)
    header, env_rows = environment_table(records)
    if env_rows:
        lines += ["## Environment", ""] + _md_table(header, env_rows) + [""]
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2), td:last-child { text-align: left; white-space: nowrap; }
.pass { color: #137333; font-weight: 600; } .fail { color: #c5221f; font-weight: 600; }
.warn { color: #b06000; } .info { color: #777; } .emulated { color: #b06000; }
.banner { padding: 0.6em 1em; border-radius: 4px; display: inline-block; }
.banner.pass { background: #e6f4ea; } .banner.fail { background: #fce8e6; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _html_table(header: list[str], rows: list[list[str]], raw_last: bool = False) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [html.escape(c) for c in (row[:-1] if raw_last else row)]
        if raw_last:
            cells.append(row[-1])
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _html_outcome(text: str, outcome: str) -> str:
    return f'<span class="{_CSS_CLASS.get(outcome, "info")}">{html.escape(text)}</span>'


def render_html(comparison: Comparison, records: list[dict[str, Any]], plots: list[Plot]) -> str:
    outcome, overall = _overall_line(comparison)
    body = [
        "<h1>precision-suite report</h1>",
        f'<p class="banner {_CSS_CLASS[outcome]}">{html.escape(overall)}</p>',
    ]
    for group in comparison.groups:
        body.append(f"<h2>{html.escape(_group_title(group))}</h2><ul>")
        for headline in comparison.headlines:
            if headline.group == group.key:
                body.append(f"<li>{_html_outcome(headline.text, headline.outcome)}</li>")
        for verdict in group.verdicts:
            text = f"cross-framework {verdict.outcome.upper()}: {verdict.detail}"
            body.append(f"<li>{_html_outcome(text, verdict.outcome)}</li>")
        for row in group.rows:
            if row.emulated:
                body.append(
                    f'<li><span class="emulated">emulated</span> {html.escape(row.label)}: '
                    f"{html.escape(row.emulated_reason)} — kept out of speed claims</li>"
                )
        body += [f"<li>{html.escape(note)}</li>" for note in speed_notes(group)]
        body.append("</ul>")
        rows = []
        for row in group.rows:
            verdicts = " ".join(_html_outcome(t, o) for t, o in verdict_cells(row))
            rows.append(_table_cells(row) + [verdicts])
        body.append(_html_table(_TABLE_HEADER, rows, raw_last=True))
        equivalences = equivalence_rows(comparison, group)
        if equivalences:
            body.append("<p>Equivalence tests (TOST: PASS = CI inside ±tolerance, FAIL = CI outside it):</p>")
            body.append(
                _html_table(
                    _EQUIVALENCE_HEADER,
                    [_equivalence_cells(label, v, comparison.run_dir) for label, v in equivalences],
                )
            )
        body.append(
            f"<p class='info'>Tolerance ±{group.tolerance_pts:g} pt. "
            f"{html.escape(speed_explanation(group).capitalize())}.</p>"
        )
        for plot in plots:
            if plot.name.endswith(_slug(group.key)):
                data = base64.b64encode(plot.png).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(plot.title)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>'
                    f"{html.escape(plot.title)}</figcaption></figure>"
                )
    if comparison.scaling:
        body.append("<h2>Data-parallel weak scaling</h2>")
        body.append(_html_table(SCALING_HEADER, [scaling_cells(r) for r in comparison.scaling]))
        body.append(f"<p>{html.escape(SCALING_NOTE)}</p>")
    body.append("<h2>Verdicts</h2><ul>")
    for verdict in comparison.verdicts:
        outcome_key = verdict.outcome if verdict.enforced else "info"
        body.append(f"<li>{_html_outcome(_verdict_text(verdict, comparison.run_dir), outcome_key)}</li>")
    body.append("</ul>")
    for title, notes in (
        ("Failed jobs", comparison.failed_jobs),
        ("Unavailable jobs (not failures)", comparison.unavailable),
    ):
        if notes:
            body.append(f"<h2>{title} ({len(notes)})</h2><ul>")
            body += [
                f"<li><code>{html.escape(n.job_id)}</code> <b>{html.escape(n.status)}</b>: "
                f"{html.escape(n.message)}</li>"
                for n in notes
            ]
            body.append("</ul>")
    header, env_rows = environment_table(records)
    if env_rows:
        body.append("<h2>Environment</h2>" + _html_table(header, env_rows))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>precision-suite report</title>"
        f"<style>{_HTML_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_reports(out_dir: Path, comparison: Comparison, records: list[dict[str, Any]]) -> list[Path]:
    """Write report.md, report.html (self-contained), summary.csv and plots/*.png into
    ``out_dir``; returns the paths written, reports first."""
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(comparison, records)
    plot_paths = []
    for plot in plots:
        path = plot_dir / f"{plot.name}.png"
        path.write_bytes(plot.png)
        plot_paths.append(path)
    md_path, html_path, csv_path = (
        out_dir / "report.md",
        out_dir / "report.html",
        out_dir / "summary.csv",
    )
    md_path.write_text(render_markdown(comparison, records, plots), encoding="utf-8")
    html_path.write_text(render_html(comparison, records, plots), encoding="utf-8")
    write_summary_csv(csv_path, comparison)
    return [md_path, html_path, csv_path, *plot_paths]
