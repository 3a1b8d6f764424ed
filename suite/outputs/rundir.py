"""A finished run directory, read once: its records (newest per job) and their comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precision_suite.errors import UserError
from precision_suite.results import RESULTS_FILE, Record, latest_by_job, read_records
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


def load_run(path: Path | str, tolerance_pts: float | None = None) -> RunDir:
    path = Path(path)
    results = path / RESULTS_FILE
    if not results.exists():
        raise RunDirError(f"{results}: no such file (is {path} a run directory?)")
    read = read_records(results)
    records = list(latest_by_job(read.records).values())
    speed = list(latest_by_job(read.speed).values())
    if not records and not speed:
        raise RunDirError(f"{results}: no valid records")
    comparison = compare(records, tolerance_pts=tolerance_pts, speed_records=speed)
    comparison.run_dir = str(path)
    return RunDir(path, records, read.warnings, comparison, speed)


def versions(environ: dict[str, Any]) -> dict[str, str]:
    """Software versions a record's environment names (``torch_version``, ``python``, ...)."""
    out = {"python": environ.get("python"), "numpy": environ.get("numpy")}
    out.update({key.removesuffix("_version"): value for key, value in environ.items() if key.endswith("_version")})
    out.update(environ.get("framework_versions") or {})
    return {key: str(value) for key, value in out.items() if value is not None}


RowKey = tuple[str, str, str, str, str]  # model, dataset, device, backend, policy


def row_key(row: Row) -> RowKey:
    return (row.model, row.dataset, row.device, row.backend, row.policy)


def baseline_key(row: Row) -> RowKey | None:
    """The key of the row's fp32 baseline (``Row.baseline`` is "backend policy")."""
    if row.baseline is None:
        return None
    backend, policy = row.baseline.split(" ", 1)
    return (row.model, row.dataset, row.device, backend, policy)


def ok_records_by_row(records: list[dict[str, Any]]) -> dict[RowKey, list[dict[str, Any]]]:
    """The ``ok`` records of each row, keyed as ``row_key`` keys a comparison row."""
    out: dict[RowKey, list[dict[str, Any]]] = {}
    for record in map(Record, records):
        if record.ok:
            key = (record.model_name, record.dataset_name, record.device, record.backend, record.policy)
            out.setdefault(key, []).append(record)
    return out
