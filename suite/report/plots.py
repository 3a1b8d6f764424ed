"""The report's plots: matplotlib's object-oriented API on Agg canvases, so writing a report never
touches pyplot's global state or needs a display.

Drawing is nearly all of a report's cost (a few tenths of a second per plot, five or six plots per
model group), so a run with several groups draws them in worker processes, one group per task:
``start_plots`` starts them and returns at once, so the caller can do its other work meanwhile.
A worker draws from the same inputs with the same code as the serial path, so the PNGs are
byte-identical either way."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import sys
from collections import defaultdict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from precision_suite.backends.policy import POLICIES
from precision_suite.measure.environment import available_cores
from precision_suite.report.cells import FRAMEWORK_COLOURS, equivalence_rows
from precision_suite.results import Record, is_noise_floor_run, latest_by_job
from precision_suite.verdicts.compare import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Comparison,
    Group,
    Verdict,
)
from precision_suite.verdicts.stats import PARITY_METRICS

# --- plots -----------------------------------------------------------------------------------


@dataclass
class Plot:
    name: str  # file stem
    title: str
    png: bytes
    group: str = ""  # the key of the group it shows (a name's suffix is not: "big_mlp" ends in "mlp")
    svg: str = ""  # drawn inline instead of the PNG where set (serve's history plots: each point a link)


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    # The canvas's own print_png, not figure.savefig: savefig draws a constrained-layout figure
    # twice (a dry-run draw for the layout, then the real one); print_png lays it out within its
    # one draw. Same pixels, same bytes (tested), a tenth less time per plot.
    buffer = io.BytesIO()
    figure.canvas.print_png(buffer)
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
    """One colour per API family (torch first); rows are looked up by ``row.family``."""
    families = sorted({row.family for row in group.rows}, key=lambda f: (f != "torch", f))
    return {f: FRAMEWORK_COLOURS[i % len(FRAMEWORK_COLOURS)] for i, f in enumerate(families)}


# Line styles by the order policies are declared in (fp32 solid); later ones dotted.
_LINESTYLES: tuple[Any, ...] = ("-", (0, (1, 1)), "-.", "--")


def _linestyle(policy: str) -> Any:
    names = list(POLICIES)
    index = names.index(policy) if policy in names else len(_LINESTYLES)
    return _LINESTYLES[index] if index < len(_LINESTYLES) else ":"


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
            color=colours[row.family],
            linestyle=_linestyle(row.policy),
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
    return Plot(f"loss_{slug(group.key)}", f"Training loss — {group.key}", _png(figure), group.key)


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
                color=colours[row.family],
                linestyle=_linestyle(row.policy),
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
    return Plot(f"loss_scale_{slug(group.key)}", f"Loss scale — {group.key}", _png(figure), group.key)


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
            color=[colours[r.family] for r in rows],
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
    return Plot(f"speed_memory_{slug(group.key)}", f"Speed and memory — {group.key}", _png(figure), group.key)


def _plot_memory_breakdown(group: Group, by_row: dict[str, list[dict[str, Any]]]) -> Plot | None:
    """Stacked bar per row of the framework-neutral accounting (precision_suite.measure.memory), so a
    ratio is explained: which component a policy shrinks."""
    from precision_suite.measure.memory import COMPONENTS, breakdown_shares

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
    return Plot(f"memory_breakdown_{slug(group.key)}", title, _png(figure), group.key)


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
            color=colours[row.family],
            capsize=4,
        )
        for value in row.accuracy_values:
            axes.plot(position, 100 * value, ".", color="grey", markersize=3)
    for row in rows:
        # The parity band is in accuracy points only when parity compares accuracy.
        if row.is_baseline and row.accuracy_mean is not None and group.parity_metric == "accuracy":
            level = 100 * row.accuracy_mean
            axes.axhspan(
                level - group.tolerance_pts,
                level + group.tolerance_pts,
                color=colours[row.family],
                alpha=0.08,
            )
            axes.axhline(
                level,
                color=colours[row.family],
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
    return Plot(f"accuracy_{slug(group.key)}", f"Accuracy — {group.key}", _png(figure), group.key)


def _plot_forest(group: Group, equivalences: list[tuple[str, Verdict]]) -> Plot | None:
    """One line per equivalence verdict (``cells.equivalence_rows``): the interval of Δ the
    verdict was read from, against the ±tolerance band; colour = outcome."""
    entries = [(label, v) for label, v in equivalences if v.equivalence.interval is not None]
    if not entries:
        return None
    colours = {PASS: "#137333", FAIL: "#c5221f", INCONCLUSIVE: "#b06000"}
    figure = _new_figure(7, 1.4 + 0.35 * len(entries))
    axes = figure.add_subplot()
    tol = group.tolerance_pts
    unit = PARITY_METRICS[group.parity_metric].unit
    axes.axvspan(-tol, tol, color="#137333", alpha=0.08, label=f"±{tol:g} {unit} tolerance")
    axes.axvline(0, color="grey", linewidth=0.8)
    for y, (_, verdict) in enumerate(reversed(entries)):
        eq = verdict.equivalence
        interval = eq.interval
        colour = colours.get(verdict.outcome, "grey") if verdict.enforced else "grey"
        axes.plot([interval.low, interval.high], [y, y], color=colour, linewidth=2.5, solid_capstyle="butt")
        axes.plot(interval.estimate, y, "o", color=colour, markersize=5)
    axes.set_yticks(
        range(len(entries)),
        [f"{label} ({v.name}, {v.outcome.upper()})" for label, v in reversed(entries)],
        fontsize=7,
    )
    reach = max([tol] + [max(abs(v.equivalence.interval.low), abs(v.equivalence.interval.high)) for _, v in entries])
    axes.set_xlim(-1.15 * reach, 1.15 * reach)
    what = "accuracy" if group.parity_metric == "accuracy" else "test loss"
    axes.set_xlabel(f"Δ {what} vs baseline, {unit} (bar: the verdict's CI)", fontsize=8)
    axes.set_title(f"Equivalence — {group.key}", fontsize=9)
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return Plot(
        f"equivalence_{slug(group.key)}", f"Equivalence (Δ, CI, ±tolerance) — {group.key}", _png(figure), group.key
    )


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


# --- which plots, drawn where ----------------------------------------------------------------


@dataclass
class GroupPlots:
    """What one group's plots are drawn from; small and picklable, so a worker process can draw
    them: the group, per row label the parts of its ok records the plots read (seed order), and
    its equivalence verdicts with their labels."""

    group: Group
    by_row: dict[str, list[dict[str, Any]]]
    equivalences: list[tuple[str, Verdict]]


def _plotted(record: Record) -> dict[str, Any]:
    """The parts of a record the plots read (the rest of a record stays in the parent)."""
    curves = record.get("curves") or {}
    return {
        "seed": record.get("seed"),
        "curves": {key: curves.get(key) for key in ("step", "train_loss", "loss_scale", "skipped")},
        "metrics": {"memory_breakdown": (record.get("metrics") or {}).get("memory_breakdown")},
    }


def _attention(group: Group) -> int:
    """0: a failing verdict or a failed job in the group; 1: an inconclusive verdict; 2: neither."""
    verdicts = [*group.verdicts, *(v for row in group.rows for v in row.verdicts)]
    if any(v.is_failure for v in verdicts) or any(row.seeds_failed for row in group.rows):
        return 0
    return 1 if any(v.is_inconclusive for v in verdicts) else 2


def shown_groups(comparison: Comparison, limit: int | None) -> list[Group]:
    """The groups whose plots the report shows (``report.plot_groups``), in table order: every
    group when ``limit`` is None or not exceeded; else ``limit`` of them, those with a failing
    verdict or job first, then those with an inconclusive one, then the first in table order."""
    groups = comparison.groups
    if limit is None or len(groups) <= limit:
        return list(groups)
    ranked = sorted(range(len(groups)), key=lambda index: (_attention(groups[index]), index))
    return [groups[index] for index in sorted(ranked[:limit])]


def plot_inputs(comparison: Comparison, records: list[dict[str, Any]]) -> list[GroupPlots]:
    """One ``GroupPlots`` per group of ``comparison``, in its order: the latest ok record of
    each job (noise-floor runs left out) under its row."""
    ok_records = [
        Record(r)
        for r in latest_by_job([r for r in records if "job_id" in r]).values()
        if r.get("status") == "ok" and not is_noise_floor_run(r)
    ]
    by_group: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in sorted(ok_records, key=lambda r: r.get("seed") or 0):
        key = (record.model_name, record.dataset_name, record.device)
        by_group[key][f"{record.get('backend')} {record.get('policy')}"].append(_plotted(record))
    return [
        GroupPlots(group, dict(by_group.get(group.key_tuple, {})), equivalence_rows(comparison, group))
        for group in comparison.groups
    ]


def draw_group(inputs: GroupPlots) -> list[Plot]:
    """Every plot of one group that has something to show, in the report's order."""
    group, by_row = inputs.group, inputs.by_row
    drawn = (
        _plot_loss(group, by_row),
        _plot_loss_scale(group, by_row),
        _plot_speed_memory(group),
        _plot_memory_breakdown(group, by_row),
        _plot_accuracy(group),
        _plot_forest(group, inputs.equivalences),
    )
    return [plot for plot in drawn if plot is not None]


# Starting a worker (a fresh interpreter importing the suite and matplotlib) costs about as much
# as drawing this many groups, so a worker is only worth it with at least this many to draw.
GROUPS_PER_WORKER = 2


def plot_workers(groups: int) -> int:
    """Worker processes for ``groups`` groups: one per available core and per
    ``GROUPS_PER_WORKER`` groups; 1 means drawn in this process (a small run, or one core)."""
    return max(1, min(available_cores(), groups // GROUPS_PER_WORKER))


# --- plots drawn before: a group whose inputs have not changed keeps its PNGs ---------------------

DRAWN_FROM_FILE = ".drawn-from.json"  # in the plot folder: per group, what its plots were drawn from


def drawing_version() -> str:
    """What a plot's pixels depend on besides its group's inputs: the drawing code (this module
    and the ones it draws with), numpy's and matplotlib's versions and matplotlib's settings."""
    import matplotlib
    from precision_suite.backends import policy
    from precision_suite.measure import memory
    from precision_suite.report import cells

    digest = hashlib.sha256()
    for module in (sys.modules[__name__], cells, memory, policy):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(f"{np.__version__} {matplotlib.__version__} {sorted(matplotlib.rcParams.items())!r}".encode())
    return digest.hexdigest()


def inputs_digest(inputs: GroupPlots, version: str) -> str:
    """A group's plots are a function of this: its inputs (their repr, every field) and the
    drawing version."""
    return hashlib.sha256(f"{version}\n{inputs!r}".encode()).hexdigest()


def drawn_before(plot_dir: Path, inputs: list[GroupPlots], digests: list[str]) -> dict[int, list[Plot]]:
    """The plots in ``plot_dir`` of each group (by index) drawn from the inputs it has now, as
    ``plot_dir/.drawn-from.json`` records them; a group with a file missing is not among them."""
    try:
        groups = json.loads((plot_dir / DRAWN_FROM_FILE).read_text(encoding="utf-8"))["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    kept = {}
    for index, (group_inputs, digest) in enumerate(zip(inputs, digests, strict=True)):
        key = group_inputs.group.key
        entry = groups.get(key) if isinstance(groups, dict) else None
        if not isinstance(entry, dict) or entry.get("inputs") != digest:
            continue
        try:
            kept[index] = [
                Plot(name, title, (plot_dir / f"{name}.png").read_bytes(), key) for name, title in entry["plots"]
            ]
        except (OSError, KeyError, TypeError, ValueError):
            continue
    return kept


class PendingPlots:
    """Plots being drawn: by worker processes when ``workers`` > 1 (started at construction),
    otherwise here when ``result`` is called. ``result`` returns them in the report's order.
    ``shown``: the keys of the groups whose plots the report shows (default every group's;
    ``shown_groups``); the others are not drawn. With ``plot_dir``, a group drawn there before
    from the same inputs (``drawn_before``) is read back, not drawn again: a sweep that grows
    redraws only the groups whose records changed."""

    def __init__(
        self,
        inputs: list[GroupPlots],
        workers: int | None = None,
        plot_dir: Path | None = None,
        shown: set[str] | None = None,
    ) -> None:
        self._inputs = inputs
        self._shown = [i for i, group_inputs in enumerate(inputs) if shown is None or group_inputs.group.key in shown]
        version = drawing_version()
        self._digests = [inputs_digest(group_inputs, version) for group_inputs in inputs]
        self._drawn = drawn_before(plot_dir, inputs, self._digests) if plot_dir is not None else {}
        self._to_draw = [index for index in self._shown if index not in self._drawn]
        workers = plot_workers(len(self._to_draw)) if workers is None else workers
        self._executor: ProcessPoolExecutor | None = None
        self._futures: list[Future[list[Plot]]] = []
        if workers > 1 and self._to_draw:
            # spawn, not fork: the parent may hold threads (Ray's driver, a server) that a
            # forked child would inherit mid-operation.
            self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            self._futures = [self._executor.submit(draw_group, inputs[index]) for index in self._to_draw]

    @property
    def left_out(self) -> list[str]:
        """The keys of the groups whose plots the report does not show, in table order."""
        shown = set(self._shown)
        return [group_inputs.group.key for i, group_inputs in enumerate(self._inputs) if i not in shown]

    def result(self) -> list[Plot]:
        """The shown groups' plots, in the report's order."""
        if self._executor is None:
            self._drawn.update((index, draw_group(self._inputs[index])) for index in self._to_draw)
        else:
            try:
                for index, future in zip(self._to_draw, self._futures, strict=True):
                    self._drawn[index] = future.result()
            finally:
                self._executor.shutdown(cancel_futures=True)
        self._to_draw, self._executor = [], None
        return [plot for index in self._shown for plot in self._drawn[index]]

    def kept(self) -> list[Plot]:
        """The plots in the plot folder of groups not shown that are still current (drawn before
        from the inputs they have now): left on disk for a later report that shows them."""
        shown = set(self._shown)
        return [plot for index, plots in sorted(self._drawn.items()) if index not in shown for plot in plots]

    def write_drawn_from(self, plot_dir: Path) -> None:
        """Record in ``plot_dir`` what each group's plots there (``result``, written there, and
        ``kept``) were drawn from."""
        groups = {
            self._inputs[index].group.key: {
                "inputs": self._digests[index],
                "plots": [[plot.name, plot.title] for plot in self._drawn[index]],
            }
            for index in sorted(self._drawn)
        }
        (plot_dir / DRAWN_FROM_FILE).write_text(json.dumps({"groups": groups}, indent=1), encoding="utf-8")


def start_plots(
    comparison: Comparison,
    records: list[dict[str, Any]],
    workers: int | None = None,
    plot_dir: Path | None = None,
    limit: int | None = None,
) -> PendingPlots:
    """Start drawing the report's plots: those of ``shown_groups(comparison, limit)`` (default
    every group), in ``workers`` processes (default ``plot_workers`` of the groups to draw),
    reading back those ``plot_dir`` holds from the same inputs."""
    shown = {group.key for group in shown_groups(comparison, limit)}
    return PendingPlots(plot_inputs(comparison, records), workers, plot_dir, shown)
