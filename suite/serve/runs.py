"""The runs under the served folder, read from their records only (``load_run``): where they are,
what each one is (a ``RunSummary``), and the path rules that keep every request inside the folder."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from precision_suite.outputs.rundir import RunDir, RunDirError, load_run
from precision_suite.results import CONFIG_FILE, RESULTS_FILE

REPORT_FILE = "report.html"
# Written by the server beside a run it starts: the config's name and the overrides it was given.
SERVE_FILE = "serve.json"
MAX_DEPTH = 4  # folders below the served one searched for runs
# Files of a run the run page links to, when present (logs/ is listed file by file).
RUN_FILES = ("results.jsonl", "junit.xml", "benchmark.json", "report.md", "summary.csv", CONFIG_FILE, "serve.log")


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` when it names something that is really inside ``root`` (after every
    symlink is followed), else None: no ``..``, no absolute path, no link out of the folder."""
    if "\x00" in relative or relative.startswith(("/", "\\")) or ".." in relative.replace("\\", "/").split("/"):
        return None
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, relative))
    if target != base and not target.startswith(base + os.sep):
        return None
    return Path(target)


def find_runs(root: Path) -> list[str]:
    """Every run directory (one holding ``results.jsonl``, or a run the server started that has
    no record yet) under ``root``, as paths relative to it, never following a link out of it."""
    found = []
    base = os.path.realpath(root)
    for folder, dirs, files in os.walk(base):
        depth = os.path.relpath(folder, base).count(os.sep) + (folder != base)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < MAX_DEPTH)
        marker = RESULTS_FILE if RESULTS_FILE in files else SERVE_FILE if SERVE_FILE in files else None
        if marker:
            relative = os.path.relpath(folder, base)
            if relative != "." and inside(root, os.path.join(relative, marker)):
                found.append(relative.replace(os.sep, "/"))
    return found


def stamp(path: Path) -> tuple[int, int]:
    """What changes when a run writes a record: its results file's size and mtime."""
    try:
        stat = (path / RESULTS_FILE).stat()
    except OSError:
        return (0, 0)
    return (stat.st_size, stat.st_mtime_ns)


@dataclass
class RunSummary:
    """One line of the runs list."""

    name: str  # the path relative to the served folder
    started: datetime
    config: str  # the config file it was started from, where known
    machine: str  # host name
    device: str  # "cpu · AMD EPYC ..." / "cuda · NVIDIA H200"
    git_commit: str
    jobs_ok: int
    jobs_failed: int
    jobs_unavailable: int
    verdicts_passed: int
    verdicts_failed: int
    verdicts_inconclusive: int
    wall_s: float | None
    wall_source: str  # "span" (first start to last end) | "sum" (of the jobs' own wall times) | ""
    has_report: bool
    models: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    backends: set[str] = field(default_factory=set)
    error: str = ""  # a run that cannot be read (no valid record yet): the reason


def _started(path: Path, records: list[dict[str, Any]]) -> datetime:
    starts = [p["started_at"] for r in records if isinstance(p := r.get("placement"), dict) and p.get("started_at")]
    if starts:
        return datetime.fromtimestamp(min(starts))
    for name in (CONFIG_FILE, RESULTS_FILE):
        if (path / name).exists():
            return datetime.fromtimestamp((path / name).stat().st_mtime)
    return datetime.fromtimestamp(0)


def _wall(records: list[dict[str, Any]]) -> tuple[float | None, str]:
    placements = [p for r in records if isinstance(p := r.get("placement"), dict)]
    starts = [p["started_at"] for p in placements if p.get("started_at")]
    ends = [p["finished_at"] for p in placements if p.get("finished_at")]
    if starts and ends:
        return max(ends) - min(starts), "span"
    walls = [w for r in records if isinstance(w := (r.get("metrics") or {}).get("wall_s"), int | float)]
    walls += [w for r in records if isinstance(w := (r.get("speed") or {}).get("wall_s"), int | float)]
    return (float(sum(walls)), "sum") if walls else (None, "")


def config_name(path: Path) -> str:
    try:
        return str(json.loads((path / SERVE_FILE).read_text()).get("config", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def machine_of(record: dict[str, Any]) -> tuple[str, str]:
    """Host name, and "device · device name", of a record."""
    environ = record.get("environ") or {}
    placement = record.get("placement") or {}
    host = str(environ.get("hostname") or placement.get("hostname") or "?")
    device = str(record.get("device", "?"))
    name = environ.get("device_name") or (environ.get("cpu_model") if device == "cpu" else None)
    return host, f"{device} · {name}" if name else device


def summarize(name: str, run: RunDir) -> RunSummary:
    records = run.records + run.speed_records
    first = next((r for r in run.records if r.get("status") == "ok"), records[0])
    host, device = machine_of(first)
    verdicts = run.comparison.verdicts
    wall_s, wall_source = _wall(records)
    failed = {note.job_id for note in run.comparison.failed_jobs}
    return RunSummary(
        name=name,
        started=_started(run.path, records),
        config=config_name(run.path),
        machine=host,
        device=device,
        git_commit=str((first.get("environ") or {}).get("git_commit") or "—"),
        jobs_ok=sum(r.get("status") == "ok" for r in run.records),
        jobs_failed=len(failed),
        jobs_unavailable=len(run.comparison.unavailable),
        verdicts_passed=sum(v.outcome == "pass" for v in verdicts if v.enforced),
        verdicts_failed=sum(v.is_failure for v in verdicts),
        verdicts_inconclusive=sum(v.is_inconclusive for v in verdicts),
        wall_s=wall_s,
        wall_source=wall_source,
        has_report=(run.path / REPORT_FILE).exists(),
        models={str(r.get("model")) for r in run.records},
        devices={str(r.get("device")) for r in run.records},
        backends={str(r.get("backend")) for r in run.records},
    )


def unreadable(name: str, path: Path, error: str) -> RunSummary:
    return RunSummary(
        name, _started(path, []), config_name(path), "?", "?", "—", 0, 0, 0, 0, 0, 0, None, "", False, error=error
    )


class RunCache:
    """Each run read once per change of its results file: the list, a run's page and a history
    read the same ``RunDir`` until a new record arrives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[tuple[int, int], RunDir | str]] = {}

    def get(self, name: str) -> RunDir | str:
        """The run, or why it cannot be read (one line)."""
        path = inside(self.root, name)
        if path is None or not path.is_dir():
            return f"{name}: no such run"
        if not (path / RESULTS_FILE).is_file():
            return "no record yet"
        key = stamp(path)
        with self._lock:
            cached = self._runs.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            run: RunDir | str = load_run(path)
        except (RunDirError, OSError) as exc:
            run = str(exc)
        with self._lock:
            self._runs[name] = (key, run)
        return run

    def summaries(self) -> list[RunSummary]:
        """Every run, newest first."""
        out = []
        for name in find_runs(self.root):
            run = self.get(name)
            path = self.root / name
            out.append(unreadable(name, path, run) if isinstance(run, str) else summarize(name, run))
        return sorted(out, key=lambda s: (s.started, s.name), reverse=True)
