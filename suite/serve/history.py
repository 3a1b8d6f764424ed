"""The history of one row (model, dataset, device, backend, policy) across the served runs: its
accuracy Δ, speedup and memory ratio, each with its interval, in time order — one series per
machine, never one line through two machines — drawn as SVG whose every point links to its run."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from precision_suite.outputs.intervals import memory_ratio_of, speedup_of
from precision_suite.outputs.rundir import RunDir, ok_records_by_row, row_key
from precision_suite.report.plots import Plot
from precision_suite.results import RowKey
from precision_suite.serve.runs import RunSummary, machine_of
from precision_suite.verdicts.stats import Interval

# (attribute of a HistoryPoint, plot title, y-axis label, the value that means "no change")
QUANTITIES = (
    ("delta_pts", "accuracy Δ vs fp32 (pt, 95% CI)", "Δ accuracy (pt)", 0.0),
    ("speedup", "speedup vs fp32 (95% CI)", "speedup (×)", 1.0),
    ("memory_ratio", "peak memory / fp32 (95% CI)", "memory ratio", 1.0),
)
SERIES_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#ff7f0e"]
# Sections of a job's config that say what a row trained: a row whose model, data or training
# changed between runs (the same name, another width) is another series, never the same line.
TRAINED_KEYS = ("model", "data", "train")
_PLOT_LOCK = threading.Lock()  # matplotlib's rcParams are global: one figure at a time


@dataclass(frozen=True)
class HistoryPoint:
    run: str
    started: datetime
    machine: str  # host and device name
    trained: str  # a short hash of what the row trained (model, data, train sections of its job config)
    delta_pts: Interval
    speedup: Interval
    memory_ratio: Interval


def row_id(key: RowKey) -> str:
    return "/".join(key)


def parse_row_id(text: str) -> RowKey | None:
    parts = text.split("/")
    return RowKey(*parts) if len(parts) == 5 and all(parts) else None


def _delta(row: Any) -> Interval:
    parity = row.verdict("parity")
    interval = None if parity is None or parity.equivalence is None else parity.equivalence.interval
    if interval is not None:
        return Interval(interval.estimate, interval.low, interval.high)
    return Interval(row.delta_pts)


def history(runs: list[tuple[RunSummary, RunDir]], key: RowKey) -> list[HistoryPoint]:
    """The row's figures in every run that has it, oldest first."""
    points = []
    for summary, run in sorted(runs, key=lambda pair: pair[0].started):
        row = next((r for r in run.comparison.rows if row_key(r) == key), None)
        if row is None or row.is_baseline:
            continue
        by_row = ok_records_by_row(run.records)
        records = by_row.get(key, [])
        memory = memory_ratio_of(row, by_row)
        first = records[0] if records else run.records[0]
        host, device = machine_of(first)
        trained = {k: (first.get("config") or {}).get(k) for k in TRAINED_KEYS}
        digest = hashlib.sha256(json.dumps(trained, sort_keys=True, default=str).encode()).hexdigest()[:6]
        points.append(
            HistoryPoint(
                summary.name, summary.started, f"{host} · {device}", digest, _delta(row), speedup_of(row), memory
            )
        )
    return points


def row_keys(runs: list[RunDir]) -> list[RowKey]:
    """Every non-baseline row of any run (the rows a history can be drawn for)."""
    return sorted({row_key(r) for run in runs for r in run.comparison.rows if not r.is_baseline})


def _svg(figure: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text: small files
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    # Inline (no XML prolog or doctype); a point opens its run in the same tab, as any link here.
    return text[text.index("<svg") :].replace(' target="_blank"', "")


def _clip_to_estimates(axes: Any, values: list[Interval], neutral: float) -> None:
    """Keep the estimates readable: an interval far wider than the spread of the estimates (a
    token speed phase of three rounds) runs off the plot rather than flattening every point."""
    estimates = [v.estimate for v in values if v.estimate is not None]
    if not estimates:
        return
    low, high = min(*estimates, neutral), max(*estimates, neutral)
    span = max(high - low, 0.05 * max(abs(high), abs(low), 1e-9))
    bottom, top = axes.get_ylim()
    axes.set_ylim(max(bottom, low - span), min(top, high + span))


def plot_history(points: list[HistoryPoint], key: RowKey, run_url: str = "/run/") -> list[Plot]:
    """One plot per quantity; one series (colour, line) per machine (and per trained config, where
    the row's model, data or training differ between runs); each point a link to its run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    several = len({p.trained for p in points}) > 1
    series = {p: p.machine + (f" · config {p.trained}" if several else "") for p in points}
    machines = list(dict.fromkeys(series.values()))
    plots = []
    with _PLOT_LOCK:
        for attribute, title, label, neutral in QUANTITIES:
            figure = Figure(figsize=(7.5, 2.8), dpi=100, layout="constrained")
            FigureCanvasAgg(figure)
            axes = figure.add_subplot()
            axes.axhline(neutral, color="#999", linewidth=0.8, linestyle=":")
            for index, machine in enumerate(machines):
                colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
                shown = [p for p in points if series[p] == machine and getattr(p, attribute).estimate is not None]
                if not shown:
                    continue
                x = [p.started for p in shown]
                values = [getattr(p, attribute) for p in shown]
                y = [v.estimate for v in values]
                low = [v.estimate - v.low if v.defined else 0.0 for v in values]
                high = [v.high - v.estimate if v.defined else 0.0 for v in values]
                axes.errorbar(x, y, yerr=[low, high], color=colour, linewidth=1, capsize=3, label=machine)
                dots = axes.scatter(x, y, color=colour, s=30, zorder=3)
                dots.set_urls([run_url + quote(p.run) for p in shown])
            _clip_to_estimates(axes, [getattr(p, attribute) for p in points], neutral)
            axes.set_ylabel(label)
            locator = AutoDateLocator()
            axes.xaxis.set_major_locator(locator)
            axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            axes.grid(alpha=0.3)
            if machines:
                axes.legend(fontsize=8, loc="best")
            name = f"history-{attribute}"
            plots.append(Plot(name, f"{title} — {' '.join(key[3:])}", b"", svg=_svg(figure)))
    return plots
