"""The comparison in the terminal: one rich table per group, notes and verdict lines."""

from __future__ import annotations

from functools import partial

from precision_suite.compare import (
    FAIL,
    NO_BASELINE,
    PASS,
    Comparison,
    Group,
    Row,
    check_exit_code,
)
from precision_suite.report.cells import (
    STYLE,
    fmt_accuracy,
    fmt_bytes,
    fmt_delta,
    fmt_number,
    fmt_seeds,
    fmt_speedup,
    seeds_advice,
    speed_explanation,
    speed_notes,
    verdict_cells,
)
from precision_suite.scaling import SCALING_HEADER, SCALING_NOTE, scaling_cells
from rich import box
from rich.console import Console
from rich.table import Table

# --- terminal --------------------------------------------------------------------------------


def _rich_outcome(text: str, outcome: str) -> str:
    style = STYLE.get(outcome, "dim")
    return f"[{style}]{text}[/]"


def group_title(group: Group) -> str:
    where = f" — {group.device_name}" if group.device_name else ""
    return f"{group.model} · {group.dataset} · {group.device}{where}"


def render_terminal(comparison: Comparison, console: Console) -> None:
    """One table per (model, dataset, device), its headlines and cross-framework verdicts, then
    the unavailable and failed jobs."""
    # Messages keep one line each: wrapped, they break grep and CI logs.
    say = partial(console.print, soft_wrap=True)
    for group in comparison.groups:
        table = Table(title=group_title(group), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
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
        style = STYLE.get(verdict.outcome, "dim") if verdict.enforced else "dim"
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
