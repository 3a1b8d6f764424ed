"""``precision_suite.run``: a comparison from Python — what ``precision-suite run`` does, in this
process, returning the records, the verdicts and the report paths.

This module is the one implementation of a run: the CLI's ``run`` (and ``report``/``check``'s
reading and rendering of a run directory) call it and only turn its result into an exit code.
Jobs still run in worker processes (a crash, hang or OOM of one is a record, not a crash of the
caller); the caller's process plans, writes ``results.jsonl`` and renders the report.

Bad input raises a ``precision_suite.errors.UserError`` (``ConfigError``, ``DataError``,
``RegistryError``, ...: one line naming the key and what was expected), before anything runs;
never ``SystemExit``. Ctrl-C (or SIGTERM) stops the jobs, keeps the finished records and raises
``RunInterrupted``, a ``KeyboardInterrupt``: continue with ``run(out=DIR, resume=True)``.
"""

from __future__ import annotations

import io
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precision_suite.errors import UsageError
from rich.console import Console

if TYPE_CHECKING:
    from precision_suite.config import SuiteConfig
    from precision_suite.outputs.rundir import RunDir
    from precision_suite.verdicts.compare import Comparison, Verdict

ConfigSource = str | os.PathLike | Mapping[str, Any] | None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run: the finished records are kept in ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(f"interrupted; finished records kept in {out_dir}")
        self.out_dir = out_dir


@dataclass(repr=False)
class RunResult:
    """One finished run: its records (the newest of each job, as in ``results.jsonl``), the
    comparison with its verdicts, the reports written, and whether it passed."""

    out_dir: Path
    config: SuiteConfig
    records: list[dict[str, Any]]  # training jobs, newest record per job
    speed_records: list[dict[str, Any]]  # the timed speed phases' records
    comparison: Comparison  # rows, verdicts, speedups: what every report draws
    report_paths: list[Path]  # report.md, report.html, summary.csv, junit.xml, benchmark.json, plots
    failed_jobs: int  # jobs that crashed, timed out, ran out of memory, diverged or raised (exit 3)
    warnings: list[str] = field(default_factory=list)  # damaged records skipped, executor warnings

    @property
    def verdicts(self) -> list[Verdict]:
        return self.comparison.verdicts

    def failed_verdicts(self, strict: bool = False) -> list[Verdict]:
        """The enforced verdicts that fail (with ``strict``, also those INCONCLUSIVE)."""
        return [v for v in self.verdicts if v.is_failure or (strict and v.is_inconclusive)]

    @property
    def passed(self) -> bool:
        """Every job ran and no enforced verdict failed: ``precision-suite run`` would exit 0.
        An INCONCLUSIVE verdict (more seeds needed) does not fail (``failed_verdicts(strict=True)``)."""
        return not self.failed_jobs and not self.failed_verdicts()

    def __repr__(self) -> str:  # the records and the comparison are far too long to print
        outcomes = Counter(str(v.outcome) for v in self.verdicts)
        verdicts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())) or "none"
        return (
            f"RunResult(out_dir={str(self.out_dir)!r}, passed={self.passed}, records={len(self.records)}, "
            f"failed_jobs={self.failed_jobs}, verdicts: {verdicts})"
        )

    def verdict_table(self, strict: bool = False) -> str:
        """The verdicts as ``precision-suite check`` prints them, as plain text."""
        from precision_suite.report import print_verdicts

        buffer = io.StringIO()
        console = Console(file=buffer, width=160, color_system=None, force_terminal=False, soft_wrap=True)
        print_verdicts(self.comparison, console, strict=strict)
        return buffer.getvalue().rstrip("\n")


def run(
    config: ConfigSource | SuiteConfig = None,
    out: str | os.PathLike | None = None,
    *,
    set: Sequence[str] = (),  # the CLI's --set, by its name
    resume: bool = False,
    console: Console | None = None,
    **overrides: Any,
) -> RunResult:
    """Run a comparison and return its result; ``precision-suite run`` in this process.

    ``config``: a YAML file, a mapping of the same shape, a ``SuiteConfig``, or None for the
    packaged default. ``overrides``: top-level sections as keywords, deep-merged into the config
    (``train={"steps": 50}`` changes only ``train.steps``; a list such as ``seeds=[0, 1]`` or
    ``models=[...]`` replaces); then ``set``: the CLI's ``--set`` strings (``["train.steps=50"]``).
    ``out``: the run directory; None makes a new one, ``<runner.out_dir>/<timestamp>/`` (``runs/``
    under the current directory by default), as the CLI does. ``resume``: continue the run in
    ``out`` (its saved config unless ``config`` is given); jobs already ``ok`` are not run again.
    ``console``: where progress, the table and warnings go (default: stdout, like the CLI;
    ``rich.console.Console(quiet=True)`` for none).
    """
    console = console or default_console()
    if resume and out is None:
        raise UsageError("resume: needs out=, the run directory to continue")
    from precision_suite.config import SuiteConfig

    if isinstance(config, SuiteConfig):
        config = config.model_dump(mode="json")
    set_overrides = [set] if isinstance(set, str) else list(set)  # one KEY=VALUE string is a list of one
    suite_config = load_run_config(config, set_overrides, overrides, Path(out) if resume else None)
    out_dir = Path(out) if out is not None else default_out_dir(suite_config)
    return execute(suite_config, out_dir, console, resume=resume)


def default_console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped to a file or a CI log: wide enough that tables keep one row per line.
        console = Console(width=140)
    return console


def _origin(config: ConfigSource, set_overrides: list[str], overrides: Mapping[str, Any]) -> list[str]:
    """Where a run's config came from: its file (absolute), or the packaged default, or a mapping
    from Python; then the overrides, as given."""
    if config is None:
        lines = ["config: the packaged default.yaml"]
    elif isinstance(config, Mapping):
        lines = ["config: a mapping passed from Python"]
    else:
        lines = [f"config: {Path(config).resolve()}"]
    lines += [f"keyword override: {key}={value!r}" for key, value in overrides.items()]
    return lines + [f"--set {item}" for item in set_overrides]


def load_run_config(
    config: ConfigSource,
    set_overrides: list[str],
    overrides: Mapping[str, Any],
    resume_dir: Path | None = None,
) -> SuiteConfig:
    """The validated config of a run, checked against the registry, the data and the models
    before any job starts; ``resume_dir``'s saved config when ``config`` is None."""
    from precision_suite.config import load_config, source_name
    from precision_suite.plan import check_backends
    from precision_suite.results import CONFIG_FILE

    origin = _origin(config, set_overrides, overrides)
    if resume_dir is not None and config is None:
        config = resume_dir / CONFIG_FILE
        if not config.exists():
            raise UsageError(f"--resume {resume_dir}: no {CONFIG_FILE} there (not a run directory)")
        from precision_suite.execution.runner import read_origin

        # The run's own origin (its config.yaml header), then this resume's overrides.
        origin = [*read_origin(config), f"--resume {resume_dir}", *origin[1:]]
    suite_config = load_config(config, set_overrides, overrides)
    from precision_suite.models import add_python_path

    add_python_path(suite_config.python_path)  # a custom model's or a python loader's code, imported below
    for notice in suite_config.notices:
        print(f"warning: {notice}", file=sys.stderr)
    source = source_name(config)
    suite_config.origin[:] = origin
    check_backends(suite_config, source)
    # The data is checked here, once, so a missing or malformed file is a usage error before
    # any job starts rather than the same failure recorded for every job.
    from precision_suite.data import DataError, load_dataset

    try:
        data = load_dataset(suite_config.data)
    except DataError as exc:
        raise DataError(f"{source}: data: {exc}") from None
    from precision_suite.models import UserCodeError, check_custom_model, init_weights

    implementations = _implementations(suite_config)
    for i, model in enumerate(suite_config.models):
        if model.kind == "custom":
            try:  # a forward pass on one batch per family, before any job
                for warning in check_custom_model(model, data, implementations):
                    print(f"warning: {warning} (each job of it will record the error)", file=sys.stderr)
            except UserCodeError as exc:
                raise UsageError(f"{source}: " + str(exc).replace("models (", f"models.{i} (", 1)) from None
            continue
        try:  # the shape checks every job would otherwise fail on, once, before any job
            init_weights(model, data.input_shape, data.num_classes, seed=0)
        except ValueError as exc:
            raise UsageError(
                f"{source}: models.{i} ({model.name}) does not fit data {suite_config.data.name} "
                f"(rows of shape {data.input_shape}): {exc}"
            ) from None
    return suite_config


def _implementations(config: SuiteConfig) -> list[tuple[str, str]]:
    """(API family, runtime) of the config's available backends, in their order."""
    from precision_suite.backends import get_backend_class

    classes = [get_backend_class(name) for name in config.backends.names]
    return [(cls.family, cls.runtime) for cls in classes if cls.is_available().ok]


def default_out_dir(config: SuiteConfig, now: datetime | None = None) -> Path:
    """``<runner.out_dir>/<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... when a run started in the
    same second already has it (two runs never share a results.jsonl)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = Path(config.runner.out_dir)
    candidate, n = base / stamp, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{stamp}-{n}"
    return candidate


def execute(config: SuiteConfig, out_dir: Path, console: Console, resume: bool = False) -> RunResult:
    """Run the job matrix of ``config`` into ``out_dir``, then read it back and write the reports."""
    from precision_suite.execution.runner import run_suite

    console.print(f"precision-suite: writing to [bold]{out_dir}[/]", soft_wrap=True)
    summary = run_suite(config, out_dir, console, resume=resume)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if summary.skipped_ok:
        console.print(f"resume: {summary.skipped_ok} job(s) already ok, not run again")
    if summary.interrupted:
        console.print(
            f"[yellow]interrupted[/]: {sum(summary.statuses.values())} finished job(s) kept in "
            f"{out_dir / 'results.jsonl'}; continue with: precision-suite run --resume {out_dir}",
            soft_wrap=True,
        )
        raise RunInterrupted(out_dir)
    run_dir, paths = report_run(out_dir, console)
    return RunResult(
        out_dir=out_dir,
        config=config,
        records=run_dir.records,
        speed_records=run_dir.speed_records,
        comparison=run_dir.comparison,
        report_paths=paths,
        failed_jobs=summary.failed,
        warnings=[*summary.warnings, *run_dir.warnings],
    )


# ``report_run(plot_groups=...)`` when the run's own config says how many groups get plots.
PLOT_GROUPS_FROM_CONFIG = "config"


def _plot_groups(run_config: dict[str, Any] | None) -> int | None:
    """``report.plot_groups`` of a run's recorded config (the default where it has none)."""
    from precision_suite.config import ReportConfig

    recorded = run_config.get("report") if isinstance(run_config, dict) else None
    try:
        return ReportConfig.model_validate(recorded or {}).plot_groups
    except ValueError:  # a config.yaml edited by hand: the default, not a crash
        return ReportConfig().plot_groups


def report_run(
    out_dir: Path,
    console: Console,
    tolerance_pts: float | None = None,
    write: bool = True,
    strict: bool = False,
    plot_groups: int | None | str = PLOT_GROUPS_FROM_CONFIG,
) -> tuple[RunDir, list[Path]]:
    """Read the run in ``out_dir`` and show it: with ``write``, the table in the terminal and
    every report file (returned); without, the verdicts only (``check``). ``plot_groups``: the
    most model groups whose plots the reports show (None: every group); by default the run's
    ``report.plot_groups``."""
    from precision_suite import report
    from precision_suite.outputs import write_ci_files
    from precision_suite.outputs.rundir import load_run

    run_dir = load_run(out_dir, tolerance_pts)
    for warning in run_dir.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    comparison, records = run_dir.comparison, run_dir.records
    if not write:
        report.print_verdicts(comparison, console, strict=strict)
        return run_dir, []
    # The plots are nearly all of the cost: drawn in worker processes while this one prints
    # the table and writes the CI files.
    limit = _plot_groups(run_dir.config) if plot_groups == PLOT_GROUPS_FROM_CONFIG else plot_groups
    plots = report.start_plots(comparison, records, plot_dir=out_dir / "plots", limit=limit)
    report.render_terminal(comparison, console)
    ci_paths = write_ci_files(out_dir, comparison, records)
    paths = report.write_reports(out_dir, comparison, records, plots)
    paths[3:3] = ci_paths
    console.print("reports: " + ", ".join(str(p) for p in paths), soft_wrap=True)
    if plots.left_out:
        shown = len(comparison.groups) - len(plots.left_out)
        console.print(
            f"plots: {shown} of {len(comparison.groups)} model groups (report.plot_groups: {limit}; failing and"
            f" inconclusive groups first); every group's: precision-suite report {out_dir} --plot-groups all",
            soft_wrap=True,
            highlight=False,
        )
    return run_dir, paths
