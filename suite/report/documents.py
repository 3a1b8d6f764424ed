"""report.md and a self-contained report.html (plots embedded as base64 PNG, opens offline),
both drawn from the report's sections (``sections``), and summary.csv; ``write_reports`` writes
them all."""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from precision_suite.report.cells import CODE, CSS_CLASS
from precision_suite.report.plots import DRAWN_FROM_FILE, PendingPlots, Plot, start_plots
from precision_suite.report.sections import (
    DOCUMENTS,
    Block,
    Bullets,
    Image,
    Paragraph,
    Report,
    Spans,
    Table,
    build_report,
    view,
)
from precision_suite.verdicts.compare import Comparison, Group, Row

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


# --- report.md -------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_text(spans: Spans, in_table: bool = False) -> str:
    """Markdown has no colour: a styled piece outside a table is bold (a table of bold cells
    would only be harder to read), a CODE piece is code."""
    out = []
    for span in spans:
        text = _md_escape(span.text)
        if span.style == CODE:
            text = f"`{span.text}`"
        elif span.style and not in_table:
            text = f"**{text}**"
        out.append(text)
    return "".join(out)


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Table):
        lines = [block.caption, ""] if block.caption else []
        lines += [
            "| " + " | ".join(_md_escape(c.header) for c in block.columns) + " |",
            "|" + "---|" * len(block.columns),
        ]
        return lines + ["| " + " | ".join(_md_text(c.spans, in_table=True) for c in row) + " |" for row in block.rows]
    if isinstance(block, Paragraph):
        return [_md_text(block.spans)]
    if isinstance(block, Bullets):
        return ["  " * item.level + "- " + _md_text(item.spans) for item in block.items]
    assert isinstance(block, Image)
    return [f"![{block.plot.title}](plots/{block.plot.name}.png)"]


def render_markdown(
    comparison: Comparison, records: list[dict[str, Any]], plots: list[Plot], plots_left_out: Sequence[str] = ()
) -> str:
    return markdown_of(build_report(comparison, records, plots, plots_left_out))


def markdown_of(report: Report) -> str:
    lines = [f"# {report.title}", "", f"**{report.verdict.text}**", ""]
    for section in view(report.sections, DOCUMENTS):
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _md_block(block) + [""]
    return "\n".join(lines)


# --- report.html -----------------------------------------------------------------------------

HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2), td:last-child { text-align: left; white-space: nowrap; }
.pass { color: #137333; font-weight: 600; } .fail { color: #c5221f; font-weight: 600; }
.warn { color: #b06000; } .info { color: #777; }
.banner { padding: 0.6em 1em; border-radius: 4px; display: inline-block; }
.banner.pass { background: #e6f4ea; } .banner.fail { background: #fce8e6; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _css(style: str) -> str:
    return f' class="{CSS_CLASS.get(style, "info")}"' if style else ""


def html_text(spans: Spans) -> str:
    out = []
    for span in spans:
        text = html.escape(span.text)
        if span.style == CODE:
            text = f"<code>{text}</code>"
        elif span.style:
            text = f"<span{_css(span.style)}>{text}</span>"
        if span.href:
            text = f'<a href="{html.escape(span.href)}">{text}</a>'
        out.append(text)
    return "".join(out)


def html_block(block: Block) -> str:
    if isinstance(block, Table):
        caption = f"<p>{html.escape(block.caption)}</p>\n" if block.caption else ""
        rows = ["<tr>" + "".join(f"<th>{html.escape(c.header)}</th>" for c in block.columns) + "</tr>"]
        rows += ["<tr>" + "".join(f"<td>{html_text(c.spans)}</td>" for c in row) + "</tr>" for row in block.rows]
        return caption + "\n".join(["<table>", *rows, "</table>"])
    if isinstance(block, Paragraph):
        return f"<p{_css(block.style)}>{html_text(block.spans)}</p>"
    if isinstance(block, Bullets):
        items = [
            f"<li><span{_css(item.marker)}>{html_text(item.spans)}</span></li>"
            if item.marker
            else f"<li>{html_text(item.spans)}</li>"
            for item in block.items
        ]
        return "\n".join(["<ul>", *items, "</ul>"])
    assert isinstance(block, Image)
    title = html.escape(block.plot.title)
    if block.plot.svg:
        return f'<figure>{block.plot.svg}<figcaption>{title}</figcaption></figure>'
    data = base64.b64encode(block.plot.png).decode("ascii")
    return f'<figure><img alt="{title}" src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'


def render_html(
    comparison: Comparison, records: list[dict[str, Any]], plots: list[Plot], plots_left_out: Sequence[str] = ()
) -> str:
    return html_of(build_report(comparison, records, plots, plots_left_out))


def html_of(report: Report) -> str:
    body = [
        f"<h1>{html.escape(report.title)}</h1>",
        f'<p class="banner {CSS_CLASS[report.verdict.style]}">{html.escape(report.verdict.text)}</p>',
    ]
    for section in view(report.sections, DOCUMENTS):
        body.append(f"<h2{_css(section.style)}>{html.escape(section.title)}</h2>")
        body += [html_block(block) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title>"
        f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_reports(
    out_dir: Path, comparison: Comparison, records: list[dict[str, Any]], plots: PendingPlots | None = None
) -> list[Path]:
    """Write report.md, report.html (self-contained), summary.csv and plots/*.png into
    ``out_dir``; returns the paths written, reports first. ``plots``: the plots already being
    drawn (``plots.start_plots``, so a caller can do other work meanwhile, and chooses the groups
    shown); else every group's, drawn here, reading back the groups drawn in ``out_dir/plots``
    before from the same inputs. A PNG there that is neither shown nor current is removed."""
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    pending = plots or start_plots(comparison, records, plot_dir=plot_dir)
    plots = pending.result()
    # Not valid while the PNGs are being replaced: written again once they are.
    (plot_dir / DRAWN_FROM_FILE).unlink(missing_ok=True)
    plot_paths = []
    for plot in plots:
        path = plot_dir / f"{plot.name}.png"
        path.write_bytes(plot.png)
        plot_paths.append(path)
    current = {path.name for path in plot_paths} | {f"{plot.name}.png" for plot in pending.kept()}
    for stale in plot_dir.glob("*.png"):
        if stale.name not in current:
            stale.unlink(missing_ok=True)
    pending.write_drawn_from(plot_dir)
    md_path, html_path, csv_path = (
        out_dir / "report.md",
        out_dir / "report.html",
        out_dir / "summary.csv",
    )
    built = build_report(comparison, records, plots, pending.left_out)
    md_path.write_text(markdown_of(built), encoding="utf-8")
    html_path.write_text(html_of(built), encoding="utf-8")
    write_summary_csv(csv_path, comparison)
    return [md_path, html_path, csv_path, *plot_paths]
