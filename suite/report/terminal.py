"""The comparison in the terminal: the report's sections (``sections``) as rich tables and
one-line notes, and the verdict list of `check`."""

from __future__ import annotations

from collections.abc import Sequence

from precision_suite.report.cells import CAVEAT, STYLE, seeds_advice, verdict_label, verdict_style
from precision_suite.report.sections import (
    TERMINAL,
    Bullets,
    Paragraph,
    Section,
    Spans,
    Table,
    build_report,
    job_note_sections,
    view,
)
from precision_suite.verdicts.compare import PASS, Comparison, check_exit_code
from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text


def _style(style: str) -> str:
    return STYLE.get(style, "dim") if style else ""


def _text(spans: Spans, indent: str = "") -> Text:
    # Text, not markup: a message with "[...]" in it is printed as it is.
    return Text.assemble(indent, *((span.text, _style(span.style)) for span in spans))


def _print_table(table: Table, console: Console) -> None:
    rich_table = RichTable(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in table.columns:
        rich_table.add_column(column.header, justify=column.align, no_wrap=column.no_wrap, min_width=len(column.header))
    for row in table.rows:
        rich_table.add_row(*(_text(cell.spans) for cell in row))
    console.print(rich_table)


def _print_bullets(bullets: Bullets, console: Console) -> None:
    for item in bullets.items:
        marker = (("●", _style(item.marker)), " ") if item.marker else ()
        # Messages keep one line each: wrapped, they break grep and CI logs.
        console.print(Text.assemble("  " * (item.level + 1), *marker, _text(item.spans)), soft_wrap=True)


def print_sections(sections: Sequence[Section], console: Console) -> None:
    """Sections already in their terminal ``view``: a bold title, then each block."""
    for section in sections:
        console.print(Text(section.title, style=f"bold {_style(section.style)}".strip()), soft_wrap=True)
        for block in section.blocks:
            if isinstance(block, Table):
                _print_table(block, console)
            elif isinstance(block, Paragraph):
                console.print(_text(block.spans, indent="  "), style=_style(block.style), soft_wrap=True)
            elif isinstance(block, Bullets):
                _print_bullets(block, console)
        console.print()


def render_terminal(comparison: Comparison, console: Console) -> None:
    """One table per (model, dataset, device) with its notes, headlines and verdicts, the
    weak-scaling table, then the failed and unavailable jobs."""
    print_sections(view(build_report(comparison).sections, TERMINAL), console)


def _escape_rich(text: str) -> str:
    return text.replace("[", r"\[")


def print_verdicts(comparison: Comparison, console: Console, strict: bool = False) -> None:
    """Every verdict on one line, the jobs without a result, then the count and what `check`
    (``--strict``) will exit with."""
    verdicts = comparison.verdicts
    width = max((len(v.name) for v in verdicts), default=0)
    for verdict in verdicts:
        label = verdict_label(verdict)
        style = _style(verdict_style(verdict))
        console.print(
            f"[{style}]{label:<12}[/] {verdict.name:<{width}}  {verdict.subject}: {_escape_rich(verdict.detail)}"
        )
        if advice := seeds_advice(verdict, comparison.run_dir):
            console.print(f"{'':<12} {'':<{width}}  [{_style(CAVEAT)}]{_escape_rich(advice)}[/]")
    print_sections(view(job_note_sections(comparison), TERMINAL), console)
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
