"""report.md, a self-contained report.html (plots embedded as base64 PNG, opens offline),
summary.csv and the environment table; ``write_reports`` writes them all."""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from precision_suite.compare import (
    FAIL,
    PASS,
    Comparison,
    Group,
    JobNote,
    Row,
    Verdict,
    check_exit_code,
)
from precision_suite.report.cells import (
    CSS_CLASS,
    EQUIVALENCE_HEADER,
    equivalence_cells,
    equivalence_rows,
    fmt_accuracy,
    fmt_delta,
    fmt_memory,
    fmt_number,
    fmt_seeds,
    fmt_speedup,
    seeds_advice,
    speed_explanation,
    speed_notes,
    verdict_cells,
)
from precision_suite.report.plots import Plot, make_plots, slug
from precision_suite.report.terminal import group_title
from precision_suite.results import Record
from precision_suite.scaling import SCALING_HEADER, SCALING_NOTE, scaling_cells

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
    for record in map(Record, records):
        if not record.ok or not record.environ:
            continue
        column = f"{record.framework} · {record.device}"
        first.setdefault(column, record["environ"])
    columns = sorted(first, key=lambda c: (not c.startswith("torch"), c))
    keys: list[str] = []
    for column in columns:
        keys.extend(k for k in first[column] if k not in keys)
    rows = [[key] + [_fmt_env_value(first[c].get(key)) for c in columns] for key in keys]
    return ["key", *columns], rows


# --- files -----------------------------------------------------------------------------------


def _num(value: float | None) -> Any:
    return "" if value is None or not math.isfinite(value) else value


def _outcome(row: Row, name: str) -> str:
    verdict = row.verdict(name)
    return "" if verdict is None else verdict.outcome


# summary.csv, one definition: each column's name and how a row's value is read.
SUMMARY_COLUMNS: dict[str, Callable[[Group, Row], Any]] = {
    "model": lambda g, r: r.model,
    "dataset": lambda g, r: r.dataset,
    "device": lambda g, r: r.device,
    "device_name": lambda g, r: g.device_name,
    "backend": lambda g, r: r.backend,
    "framework": lambda g, r: r.framework,
    "policy": lambda g, r: r.policy,
    "seeds_ok": lambda g, r: len(r.seeds_ok),
    "seeds_failed": lambda g, r: len(r.seeds_failed),
    "accuracy_mean": lambda g, r: _num(r.accuracy_mean),
    "accuracy_ci95": lambda g, r: _num(r.accuracy_ci95),
    "baseline": lambda g, r: r.baseline or ("self" if r.is_baseline else ""),
    "delta_pts": lambda g, r: _num(r.delta_pts),
    "step_time_ms_p50": lambda g, r: _num(r.step_time_ms_p50),
    "samples_per_s": lambda g, r: _num(r.samples_per_s),
    "speedup": lambda g, r: _num(r.speedup),
    "speedup_min": lambda g, r: _num(r.speedup_min),
    "speedup_max": lambda g, r: _num(r.speedup_max),
    "emulated": lambda g, r: r.emulated,
    "emulated_reason": lambda g, r: r.emulated_reason,
    "peak_memory_bytes": lambda g, r: _num(r.peak_memory_bytes),
    "memory_source": lambda g, r: r.memory_source or "",
    "memory_ratio": lambda g, r: _num(r.memory_ratio),
    "skipped_steps": lambda g, r: _num(r.skipped_steps),
    "loss_scale_final": lambda g, r: _num(r.loss_scale_final),
    "compute_dtype": lambda g, r: r.observed.get("compute_dtype") or "",
    "param_dtype": lambda g, r: r.observed.get("param_dtype") or "",
    "master_dtype": lambda g, r: r.observed.get("master_dtype") or "",
    "loss_scaling": lambda g, r: r.observed.get("loss_scaling") or "",
    "parity": lambda g, r: _outcome(r, "parity"),
    "precision_active": lambda g, r: _outcome(r, "precision-active"),
    "verdict": lambda g, r: r.overall,
    "speed_source": lambda g, r: r.speed_source,
    "noisy_reason": lambda g, r: r.noisy_reason,
    "why_not_faster": lambda g, r: "; ".join(r.why_not_faster),
}


def summary_row(group: Group, row: Row) -> dict[str, Any]:
    return {name: value(group, row) for name, value in SUMMARY_COLUMNS.items()}


def write_summary_csv(path: Path, comparison: Comparison) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        for group in comparison.groups:
            for row in group.rows:
                writer.writerow(summary_row(group, row))


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
        lines += [f"## {group_title(group)}", ""]
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
                EQUIVALENCE_HEADER, [equivalence_cells(label, v, comparison.run_dir) for label, v in equivalences]
            )
        lines += [
            "",
            f"Tolerance ±{group.tolerance_pts:g} pt. {speed_explanation(group).capitalize()}.",
            "",
        ]
        for plot in plots:
            if plot.name.endswith(slug(group.key)):
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
    return f'<span class="{CSS_CLASS.get(outcome, "info")}">{html.escape(text)}</span>'


def render_html(comparison: Comparison, records: list[dict[str, Any]], plots: list[Plot]) -> str:
    outcome, overall = _overall_line(comparison)
    body = [
        "<h1>precision-suite report</h1>",
        f'<p class="banner {CSS_CLASS[outcome]}">{html.escape(overall)}</p>',
    ]
    for group in comparison.groups:
        body.append(f"<h2>{html.escape(group_title(group))}</h2><ul>")
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
                    EQUIVALENCE_HEADER,
                    [equivalence_cells(label, v, comparison.run_dir) for label, v in equivalences],
                )
            )
        body.append(
            f"<p class='info'>Tolerance ±{group.tolerance_pts:g} pt. "
            f"{html.escape(speed_explanation(group).capitalize())}.</p>"
        )
        for plot in plots:
            if plot.name.endswith(slug(group.key)):
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
