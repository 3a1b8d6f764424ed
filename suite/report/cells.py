"""Cell formatting shared by every rendering: accuracy, deltas, speedups, memory, verdict
cells and the equivalence-table cells; the styles a rendering draws them in."""

from __future__ import annotations

from precision_suite.verdicts.compare import (
    FAIL,
    FAILED,
    INCONCLUSIVE,
    INFO,
    NO_BASELINE,
    PAIRED,
    PASS,
    TIMED_JOBS,
    Comparison,
    Group,
    Row,
    Verdict,
)
from precision_suite.verdicts.diagnose import is_hardware_cause
from precision_suite.verdicts.stats import MAX_SUGGESTED_SEEDS, PARITY_METRICS

# Styles a piece of text may carry besides an outcome: a caveat on a number (emulated, noisy,
# the seeds advice) and a name to be read literally (a job id).
CAVEAT = "caveat"
CODE = "code"
# How each style is drawn: rich styles in the terminal, CSS classes in report.html (a CODE piece
# is a <code> element there); report.md has no colour.
STYLE = {
    PASS: "green",
    FAIL: "red",
    FAILED: "red",
    NO_BASELINE: "yellow",
    INCONCLUSIVE: "bold yellow",
    INFO: "dim",
    CAVEAT: "yellow",
    CODE: "dim",
}
CSS_CLASS = {
    PASS: "pass",
    FAIL: "fail",
    FAILED: "fail",
    NO_BASELINE: "warn",
    INCONCLUSIVE: "warn",
    INFO: "info",
    CAVEAT: "warn",
}
FRAMEWORK_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]

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


def speedup_figure(row: Row) -> str:
    """The speedup and its 95 % CI, without the caveat (``speedup_caveat``)."""
    if row.is_baseline:
        return "1.00× (baseline)"
    if row.speed is None:
        return "not measured" if row.speed_unmeasured else "—"
    spread = f" (CI {row.speed.ci_low:.2f}–{row.speed.ci_high:.2f})" if row.speed.defined else ""
    return f"{row.speed.estimate:.2f}×{spread}"


def speedup_caveat(row: Row) -> str:
    """Why a shown speedup is not claimed: "emulated", "noisy", or "" when it is."""
    if row.is_baseline or row.speedup is None:
        return ""
    return "emulated" if row.emulated else "noisy" if row.noisy_reason else ""


def fmt_speedup(row: Row) -> str:
    caveat = speedup_caveat(row)
    return f"{speedup_figure(row)} {caveat}" if caveat else speedup_figure(row)


SPEED_EXPLANATIONS = {
    PAIRED: (
        "speedup = paired, interleaved timing (fp32 and each policy in rotation in one worker): median of "
        "per-round fp32/policy step-time ratios, 95% CI in parentheses; noisy = shown, not claimed"
    ),
    TIMED_JOBS: (
        "speedup = fp32 step time / policy step time of training jobs each timed alone: geometric mean over "
        "seeds, 95% CI in parentheses; noisy = shown, not claimed"
    ),
}


def speed_explanation(group: Group) -> str:
    """How the group's speedups were measured (``precision_suite.verdicts.compare.row_speed``)."""
    sources = dict.fromkeys(row.speed_source for row in group.rows if row.speed is not None)
    parts = [SPEED_EXPLANATIONS[source] for source in sources if source in SPEED_EXPLANATIONS]
    if any(row.speed is None and row.speed_unmeasured for row in group.rows):
        parts.append(
            "speedup not measured where the training jobs ran side by side and no speed phase ran "
            "(enable speed, or set runner.parallel_jobs: 1)"
        )
    return "; ".join(parts) or "speedup: no timed measurement"


def speed_notes(group: Group) -> list[str]:
    """One line per row that is not claimed faster and has measured causes of its own; the
    device's (emulation, no AMX) are said once per run (``sections.hardware_notes``)."""
    own = {row.label: [cause for cause in row.why_not_faster if not is_hardware_cause(cause)] for row in group.rows}
    return [f"why not faster — {label}: " + "; ".join(causes) for label, causes in own.items() if causes]


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


def verdict_label(verdict: Verdict) -> str:
    """The outcome as a verdict is shown: "PASS", or "FAIL (info)" when it is information only."""
    return verdict.outcome.upper() + ("" if verdict.enforced else " (info)")


def verdict_style(verdict: Verdict) -> str:
    """The style a verdict is drawn in: its outcome, or INFO when it is information only."""
    return verdict.outcome if verdict.enforced else INFO


def verdict_cells(row: Row) -> list[tuple[str, str]]:
    """(text, style) per verdict of the row, in a fixed order."""
    cells = []
    for verdict in row.verdicts:
        name = "precision" if verdict.name == "precision-active" else verdict.name
        # A failed status is the whole row's story; its name would only repeat it.
        text = verdict_label(verdict) if verdict.name == "status" else f"{name} {verdict_label(verdict)}"
        cells.append((text, verdict_style(verdict)))
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


EQUIVALENCE_HEADER = ["verdict", "subject", "Δ pt", "CI", "tolerance", "outcome", "pairing", "more seeds"]


def equivalence_cells(label: str, verdict: Verdict, run_dir: str | None) -> list[str]:
    eq = verdict.equivalence
    assert eq is not None
    interval = eq.interval
    fmt = PARITY_METRICS[eq.metric].fmt
    return [
        verdict.name,
        label,
        "—" if interval is None else _minus(fmt(interval.mean)),
        "— (1 seed)"
        if interval is None
        else _minus(f"{100 * eq.ci_level:.4g}% [{fmt(interval.low)}, {fmt(interval.high)}]")
        + f" {eq.method} n={interval.n}",
        f"±{eq.tolerance_pts:g}" + ("" if eq.metric == "accuracy" else f" {eq.unit}"),
        verdict_label(verdict),
        "—" if eq.pairing_gain is None else f"×{eq.pairing_gain:.2f}",
        seeds_advice(verdict, run_dir) or "—",
    ]
