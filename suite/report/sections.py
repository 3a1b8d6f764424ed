"""What a report shows, said once: a comparison becomes a list of sections of plain blocks
(tables, paragraphs, bullet lists, plots), which the terminal, report.md and report.html only
draw (``terminal``, ``documents``).

Every rendering shows the same sections in the same order. The terminal is the short form: a
block, column, item or section marked ``only=DOCUMENTS`` (the verdict list, the equivalence
tables, the environment, the plots, the dtype columns) is left out of it, one marked
``only=TERMINAL`` (the per-policy parity lines and the seeds advice, which the documents carry in
their equivalence tables) is left out of the documents, and a cell's or header's ``brief`` form,
where it has one, is what the terminal shows. ``view`` applies those rules for one medium.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from precision_suite.report.cells import (
    CAVEAT,
    CODE,
    EQUIVALENCE_HEADER,
    equivalence_cells,
    equivalence_rows,
    fmt_accuracy,
    fmt_bytes,
    fmt_delta,
    fmt_memory,
    fmt_number,
    fmt_seeds,
    seeds_advice,
    speed_explanation,
    speed_notes,
    speedup_caveat,
    speedup_figure,
    verdict_cells,
    verdict_label,
    verdict_style,
)
from precision_suite.report.plots import Plot
from precision_suite.results import Record
from precision_suite.verdicts.compare import (
    FAIL,
    FAILED,
    INFO,
    NO_BASELINE,
    PASS,
    Comparison,
    Group,
    JobNote,
    Row,
    Verdict,
    check_exit_code,
)
from precision_suite.verdicts.cross_framework import fp8_scaling_note
from precision_suite.verdicts.data_parallel import SCALING_HEADER, SCALING_NOTE, scaling_cells
from precision_suite.verdicts.diagnose import is_hardware_cause

TERMINAL = "terminal"
DOCUMENTS = "documents"  # report.md and report.html, which always show the same content

# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A piece of text and the style it is drawn in: an outcome, INFO, CAVEAT, CODE, or "" (plain)."""

    text: str
    style: str = ""
    href: str = ""  # a link (report.html and serve's pages draw it; the terminal and report.md do not)


Spans = tuple[Span, ...]


def plain(text: str) -> Spans:
    return (Span(text),)


@dataclass
class Cell:
    spans: Spans
    brief: Spans | None = None  # the terminal's shorter form


@dataclass
class Column:
    header: str
    brief: str = ""  # the terminal's shorter header
    align: str = "right"
    no_wrap: bool = False
    only: str | None = None


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[Cell]]
    caption: str = ""  # a line that introduces the table
    only: str | None = None


@dataclass
class Paragraph:
    spans: Spans
    style: str = ""  # of the whole paragraph
    only: str | None = None


@dataclass
class Item:
    """One line of a bullet list. ``marker``: the style of the bullet itself (a headline's
    outcome); ``level`` 1 is a line that belongs to the one above it."""

    spans: Spans
    marker: str = ""
    level: int = 0
    only: str | None = None


@dataclass
class Bullets:
    items: list[Item]
    only: str | None = None


@dataclass
class Image:
    plot: Plot
    only: str | None = DOCUMENTS  # a terminal cannot show one


Block = Table | Paragraph | Bullets | Image


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    style: str = ""  # of the title
    only: str | None = None


@dataclass
class Report:
    title: str
    verdict: Span  # what `check` will say, with its outcome
    sections: list[Section]


# --- one medium's view -----------------------------------------------------------------------


def _shown(node: Any, medium: str) -> bool:
    return node.only in (None, medium)


def _view_block(block: Block, medium: str) -> Block | None:
    if isinstance(block, Table):
        keep = [i for i, column in enumerate(block.columns) if _shown(column, medium)]
        brief = medium == TERMINAL
        columns = [block.columns[i] for i in keep]
        columns = [replace(column, header=(brief and column.brief) or column.header) for column in columns]
        rows = [[Cell((brief and row[i].brief) or row[i].spans) for i in keep] for row in block.rows]
        return replace(block, columns=columns, rows=rows)
    if isinstance(block, Bullets):
        items = [item for item in block.items if _shown(item, medium)]
        return replace(block, items=items) if items else None
    return block


def view(sections: Sequence[Section], medium: str) -> list[Section]:
    """The sections, blocks, columns and items ``medium`` (TERMINAL or DOCUMENTS) shows, each
    cell and header in the form it shows; empty bullet lists dropped."""
    out = []
    for section in sections:
        if not _shown(section, medium):
            continue
        blocks = [_view_block(block, medium) for block in section.blocks if _shown(block, medium)]
        out.append(replace(section, blocks=[block for block in blocks if block is not None]))
    return out


# --- the comparison as sections --------------------------------------------------------------


def group_title(group: Group) -> str:
    where = f" — {group.device_name}" if group.device_name else ""
    return f"{group.model} · {group.dataset} · {group.device}{where}"


def overall_verdict(comparison: Comparison) -> Span:
    code = check_exit_code(comparison)
    failures = sum(v.is_failure for v in comparison.verdicts)
    undecided = sum(v.is_inconclusive for v in comparison.verdicts)
    also = f"; {undecided} INCONCLUSIVE (more seeds needed; fails only `check --strict`)" if undecided else ""
    if code:
        return Span(f"check FAILS: {failures} verdict(s) failed{also}", FAIL)
    return Span(f"check passes: {len(comparison.verdicts)} verdict(s), none failed{also}", PASS)


def _joined(cells: list[tuple[str, str]]) -> Spans:
    spans: list[Span] = []
    for text, style in cells:
        spans += [Span(" ")] * bool(spans) + [Span(text, style)]
    return tuple(spans)


def _terminal_verdict(row: Row) -> Spans:
    """PASS when every enforced verdict passes; otherwise only the verdicts that did not (the
    details are in the headlines and in `check`)."""
    problems = [(text, style) for text, style in verdict_cells(row) if style != PASS]
    if not problems or not any(v.is_failure or v.outcome == NO_BASELINE for v in row.verdicts):
        problems.insert(0, ("PASS", PASS))
    return _joined(problems)


def _delta_cell(row: Row) -> Cell:
    parity = row.verdict("parity")
    failed = parity is not None and parity.outcome == FAIL
    style = (FAIL if parity.enforced else CAVEAT) if failed else ""
    return Cell((Span(fmt_delta(row), style),), brief=plain("base") if row.is_baseline else None)


def _speedup_cell(row: Row) -> Cell:
    caveat = speedup_caveat(row)
    spans = (Span(f"{speedup_figure(row)} "), Span(caveat, CAVEAT)) if caveat else plain(speedup_figure(row))
    return Cell(spans, brief=plain("base") if row.is_baseline else None)


def _memory_cell(row: Row) -> Cell:
    ratio = "" if row.memory_ratio is None else f" ×{row.memory_ratio:.2f}"
    return Cell(plain(fmt_memory(row)), brief=plain(fmt_bytes(row.peak_memory_bytes) + ratio))


def _dtypes(row: Row) -> str:
    updated = row.observed.get("master_dtype") or row.observed.get("param_dtype") or "—"
    return f"{row.observed.get('compute_dtype') or '—'} / {updated}"


# The table of a group, one definition: each column and how a row's cell is read.
RESULT_COLUMNS: list[tuple[Column, Callable[[Row], Cell]]] = [
    (Column("backend", align="left", no_wrap=True), lambda r: Cell(plain(r.backend))),
    (Column("policy", align="left", no_wrap=True), lambda r: Cell(plain(r.policy))),
    (Column("seeds"), lambda r: Cell(plain(fmt_seeds(r)))),
    (
        Column("accuracy % (95% CI)", brief="acc %"),
        lambda r: Cell(plain(fmt_accuracy(r)), brief=plain(fmt_accuracy(r).replace("(1 seed, no CI)", "(n=1)"))),
    ),
    (Column("Δ vs fp32 (pt)", brief="Δ pt", no_wrap=True), _delta_cell),
    (Column("speedup"), _speedup_cell),
    (Column("peak memory (ratio)", brief="memory"), _memory_cell),
    (Column("skipped", brief="skip"), lambda r: Cell(plain(fmt_number(r.skipped_steps)))),
    (Column("final scale", only=DOCUMENTS), lambda r: Cell(plain(fmt_number(r.loss_scale_final)))),
    (Column("compute / updated dtype", only=DOCUMENTS), lambda r: Cell(plain(_dtypes(r)))),
    (Column("verdict", align="left"), lambda r: Cell(_joined(verdict_cells(r)), brief=_terminal_verdict(r))),
]


def _verdict_items(comparison: Comparison, name: str, subject: str, verdict: Verdict, only: str | None) -> list[Item]:
    """A verdict's line, and in the terminal the seeds that would decide an inconclusive one."""
    line = (Span(f"{name} {verdict_label(verdict)}", verdict_style(verdict)), Span(f" {subject}: {verdict.detail}"))
    items = [Item(line, only=only)]
    if advice := seeds_advice(verdict, comparison.run_dir):
        items.append(Item((Span(advice, CAVEAT),), level=1, only=TERMINAL))
    return items


def _group_items(comparison: Comparison, group: Group) -> list[Item]:
    items = [Item(plain(h.text), marker=h.outcome) for h in comparison.headlines if h.group == group.key]
    for row in group.rows:
        parity = row.verdict("parity")
        if parity is not None and parity.equivalence is not None:
            items += _verdict_items(comparison, "parity", row.label, parity, only=TERMINAL)
    for verdict in group.verdicts:
        items += _verdict_items(comparison, "cross-framework", verdict.subject.split(" ", 1)[-1], verdict, only=None)
    if fp8_note := fp8_scaling_note(group.rows):
        items.append(Item(plain(fp8_note)))
    return items + [Item(plain(note)) for note in speed_notes(group)]


def hardware_notes(comparison: Comparison) -> list[Spans]:
    """What the device does to a half type, said once per run rather than on every row: each
    emulated half type (kept out of speed claims) and each device-level cause of "why not
    faster" (``diagnose.is_hardware_cause``), with the policies it concerns."""
    policies: dict[tuple[str, str], list[str]] = {}
    for group in comparison.groups:
        where = f"{group.device} ({group.device_name})" if group.device_name else group.device
        for row in group.rows:
            causes = [f"emulated: {row.emulated_reason}"] if row.emulated else []
            causes += [cause for cause in row.why_not_faster if is_hardware_cause(cause) and cause not in causes]
            for cause in causes:
                names = policies.setdefault((where, cause), [])
                names += [row.policy] * (row.policy not in names)
    lines = []
    for (where, cause), names in policies.items():
        emulated = cause.removeprefix("emulated: ")
        head = Span(f"{', '.join(names)} on {where}: ")
        if emulated != cause:
            lines.append((head, Span("emulated", CAVEAT), Span(f" ({emulated}): speedups shown, never claimed")))
        else:
            lines.append((head, Span(cause)))
    return lines


def _plain_table(header: list[str], rows: list[list[str]], **kwargs: Any) -> Table:
    left = {"model", "backend", "policy"}
    columns = [Column(h, align="left" if h in left else "right", no_wrap=h == "model") for h in header]
    return Table(columns, [[Cell(plain(text)) for text in row] for row in rows], **kwargs)


def _group_section(comparison: Comparison, group: Group, plots: Sequence[Plot], plotted: bool = True) -> Section:
    legend = (
        f"accuracy: mean ± 95% CI over seeds; Δ and speedup vs fp32 of the same framework;"
        f" tolerance {group.tolerance_text}; {speed_explanation(group)}"
    )
    blocks: list[Block] = [
        Table(
            [column for column, _ in RESULT_COLUMNS], [[cell(row) for _, cell in RESULT_COLUMNS] for row in group.rows]
        ),
        Paragraph(plain(legend), style=INFO),
        Bullets(_group_items(comparison, group)),
    ]
    if equivalences := equivalence_rows(comparison, group):
        blocks.append(
            _plain_table(
                EQUIVALENCE_HEADER,
                [equivalence_cells(label, v, comparison.run_dir) for label, v in equivalences],
                caption="Equivalence tests (TOST: PASS = CI inside ±tolerance, FAIL = CI outside it):",
                only=DOCUMENTS,
            )
        )
    blocks += [Image(plot) for plot in plots if plot.group == group.key]
    if not plotted:
        blocks.append(Paragraph(plain("No plots drawn for this group (see Plots above)."), style=INFO, only=DOCUMENTS))
    return Section(group_title(group), blocks)


def _plots_note(comparison: Comparison, left_out: int) -> Section:
    """Why some groups have no plots, and the command that draws them all."""
    total = len(comparison.groups)
    spans = (
        Span(
            f"Plots are drawn for {total - left_out} of {total} model groups (report.plot_groups): groups with a"
            " failing verdict or job first, then inconclusive ones, then in table order. "
        ),
        Span(f"precision-suite report {comparison.run_dir or 'DIR'} --plot-groups all", CODE),
        Span(" draws every group's."),
    )
    return Section("Plots", [Paragraph(spans, style=INFO)], only=DOCUMENTS)


def _verdict_text(verdict: Verdict, run_dir: str | None) -> str:
    advice = seeds_advice(verdict, run_dir)
    text = f"{verdict_label(verdict)} {verdict.name} — {verdict.subject}: {verdict.detail}"
    return text + (f" — {advice}" if advice else "")


def _notes_section(title: str, notes: list[JobNote], style: str) -> list[Section]:
    items = [Item((Span(n.job_id, CODE), Span(" — "), Span(n.status, style), Span(f": {n.message}"))) for n in notes]
    return [Section(f"{title} ({len(notes)})", [Bullets(items)], style=style)] if notes else []


def _unavailable_section(notes: list[JobNote]) -> list[Section]:
    """One line per backend and reason (a sweep's thousand jobs of a missing framework are one
    line), naming the job where there is only one."""
    by_reason: dict[tuple[str, str], list[JobNote]] = {}
    for note in notes:
        by_reason.setdefault((note.backend, note.message), []).append(note)
    items = [
        Item(
            (Span(same[0].job_id if len(same) == 1 else backend, CODE), Span(" — "), Span("unavailable", INFO))
            + (Span(f": {message}" + (f" ({len(same)} jobs)" if len(same) > 1 else "")),)
        )
        for (backend, message), same in by_reason.items()
    ]
    return [Section(f"Unavailable jobs (not failures) ({len(notes)})", [Bullets(items)], style=INFO)] if notes else []


def job_note_sections(comparison: Comparison) -> list[Section]:
    """The jobs that produced no result: failed ones first (each), then the unavailable ones."""
    return _notes_section("Failed jobs", comparison.failed_jobs, FAILED) + _unavailable_section(comparison.unavailable)


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


def build_report(
    comparison: Comparison,
    records: Sequence[dict[str, Any]] = (),
    plots: Sequence[Plot] = (),
    plots_left_out: Sequence[str] = (),
) -> Report:
    """The whole report: a section per (model, dataset, device), the weak-scaling table, the
    verdicts, the jobs without a result, the environment (from ``records``; none without them).
    ``plots_left_out``: the keys of the groups whose plots were not drawn (``report.plot_groups``);
    a note says so and how to draw them."""
    left_out = set(plots_left_out)
    sections = [_plots_note(comparison, len(left_out))] if left_out else []
    sections += [_group_section(comparison, group, plots, group.key not in left_out) for group in comparison.groups]
    if comparison.scaling:
        table = _plain_table(SCALING_HEADER, [scaling_cells(r) for r in comparison.scaling])
        sections.append(Section("Data-parallel weak scaling", [table, Paragraph(plain(SCALING_NOTE), style=INFO)]))
    if hardware := hardware_notes(comparison):
        sections.append(Section("Half precision on this hardware", [Bullets([Item(line) for line in hardware])]))
    verdicts = [Item(plain(_verdict_text(v, comparison.run_dir)), marker=verdict_style(v)) for v in comparison.verdicts]
    sections.append(Section("Verdicts", [Bullets(verdicts)], only=DOCUMENTS))
    sections += job_note_sections(comparison)
    header, env_rows = environment_table(list(records))
    if env_rows:
        sections.append(Section("Environment", [_plain_table(header, env_rows)], only=DOCUMENTS))
    return Report("precision-suite report", overall_verdict(comparison), sections)
