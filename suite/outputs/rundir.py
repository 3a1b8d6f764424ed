"""A finished run directory, read once (``precision_suite.results.read_run``, the one reader of
a run directory's files): its records (newest per job), the resolved config, and their
comparison. Every output (report, check, diff, advise, export, serve) starts from ``load_run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precision_suite.errors import UserError
from precision_suite.results import RESULTS_FILE, RowKey, read_run
from precision_suite.verdicts.compare import Comparison, Row, compare


class RunDirError(UserError):
    """A directory that is not a readable run (the user's input): one line, exit 2."""


@dataclass
class RunDir:
    path: Path
    records: list[dict[str, Any]]  # the newest record of each job
    warnings: list[str]  # damaged lines skipped while reading
    # Rows, verdicts and speedups (the speed phase's where it ran: ``compare.row_speed``); every
    # output reads its figures from here, never again from the records.
    comparison: Comparison
    speed_records: list[dict[str, Any]] = field(default_factory=list)  # the speed phases' (newest per id)
    config: dict[str, Any] | None = None  # the resolved config the run was started with (config.yaml)


def load_run(path: Path | str, tolerance_pts: float | None = None) -> RunDir:
    """The run at ``path`` and its comparison (``tolerance_pts`` overrides the recorded parity
    tolerance); ``RunDirError`` when it is no run directory or holds no valid record."""
    read = read_run(path)
    results = read.path / RESULTS_FILE
    if not read.found:
        raise RunDirError(f"{results}: no such file (is {read.path} a run directory?)")
    if not read.records and not read.speed:
        raise RunDirError(f"{results}: no valid records")
    comparison = compare(read.records, tolerance_pts=tolerance_pts, speed_records=read.speed)
    comparison.run_dir = str(read.path)
    return RunDir(read.path, read.records, read.warnings, comparison, read.speed, read.config)


def versions(environ: dict[str, Any]) -> dict[str, str]:
    """Software versions a record's environment names (``torch_version``, ``python``, ...)."""
    out = {"python": environ.get("python"), "numpy": environ.get("numpy")}
    out.update({key.removesuffix("_version"): value for key, value in environ.items() if key.endswith("_version")})
    out.update(environ.get("framework_versions") or {})
    return {key: str(value) for key, value in out.items() if value is not None}


def row_key(row: Row) -> RowKey:
    return RowKey.of(row)


def baseline_key(row: Row) -> RowKey | None:
    """The key of the row's fp32 baseline (``Row.baseline`` is "backend policy")."""
    if row.baseline is None:
        return None
    backend, policy = row.baseline.split(" ", 1)
    return RowKey(row.model, row.dataset, row.device, backend, policy)


def ok_records_by_row(records: list[dict[str, Any]]) -> dict[RowKey, list[dict[str, Any]]]:
    """The ``ok`` records of each row, keyed as ``row_key`` keys a comparison row (records that
    are no row's result, noise-floor runs and data-parallel references, left out)."""
    out: dict[RowKey, list[dict[str, Any]]] = {}
    for record in records:
        key = RowKey.of_record(record)
        if key is not None and record.get("status") == "ok":
            out.setdefault(key, []).append(record)
    return out
