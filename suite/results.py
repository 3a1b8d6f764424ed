"""results.jsonl: one JSON object per job, the source of truth of a run.

This module is the record's home: its schema, its one builder (``new_record``, ``failed_record``,
``set_placement``), its typed reader (``Record``), the key of the comparison row it belongs to
(``RowKey``), and the one reader of a run directory (``read_run``).

Records are appended one at a time with flush + fsync, so a kill at any moment loses at most
the record being written, never one already written. Readers skip a damaged line (and say
which) instead of failing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from precision_suite.jobs import DP_REFERENCE

if TYPE_CHECKING:
    from precision_suite.jobs import Job
    from precision_suite.measure.speed_phase import SpeedTask

SCHEMA = "precision-suite/result/v1"
RESULTS_FILE = "results.jsonl"
# The run's resolved config, written by the runner when a run starts (``run --resume`` reads it).
CONFIG_FILE = "config.yaml"
# The ``kind`` of a speed phase's record (a job's record has none).
SPEED_KIND = "speed"
# record["distributed"]["batchnorm"]: what the replicas' BatchNorm layers normalise with.
BATCHNORM_NONE = "none"
BATCHNORM_PER_REPLICA = "per-replica statistics"

STATUSES = ("ok", "diverged", "oom", "crashed", "timeout", "unavailable", "error")
# Statuses that mean the job could not produce a result for reasons that are not failures.
NOT_FAILURES = frozenset({"ok", "unavailable"})
# Statuses of a job that ran and failed (exit code 3, subject to ``is_job_failure``).
FAILURE_STATUSES = frozenset(STATUSES) - NOT_FAILURES


class Outcome(str, Enum):
    """The outcome of a verdict. A ``str`` so records and reports compare and print it as text."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"  # neither equivalent nor different yet: more seeds needed
    FAILED = "failed"  # every seed of the policy failed to produce a result
    NO_BASELINE = "no baseline"
    NOT_COMPARABLE = "n/a"
    INFO = "info"  # a headline whose only failure is information-only

    def __str__(self) -> str:
        return self.value


class Record(dict):
    """One result record (a line of ``results.jsonl``): still the mapping that is written as
    JSON, with typed accessors so the comparison and reports never dig through nested dicts."""

    @property
    def job_id(self) -> str:
        return str(self.get("job_id"))

    @property
    def backend(self) -> str:
        return str(self.get("backend"))

    @property
    def policy(self) -> str:
        return str(self.get("policy", ""))

    @property
    def seed(self) -> Any:
        return self.get("seed")

    @property
    def device(self) -> str:
        return str(self.get("device"))

    @property
    def status(self) -> str:
        return str(self.get("status"))

    @property
    def error(self) -> str | None:
        return self.get("error")

    @property
    def ok(self) -> bool:
        return self.get("status") == "ok"

    @property
    def model_name(self) -> str:
        model = self.get("model")
        return str(model.get("name", "?")) if isinstance(model, dict) else str(model)

    @property
    def dataset_name(self) -> str:
        dataset = self.get("dataset")
        return str(dataset.get("name", "?")) if isinstance(dataset, dict) else str(dataset)

    @property
    def framework(self) -> str:
        """The runtime the job ran on: the record's ``framework`` key (its name since before
        family and runtime were apart), else the first framework whose version it recorded."""
        if self.get("framework"):
            return str(self["framework"])
        return next(iter(self.environ.get("framework_versions") or {}), "unknown")

    @property
    def runtime(self) -> str:
        return self.framework

    @property
    def family(self) -> str:
        """The API family the job belongs to; a record written before families existed names
        only its runtime, whose built-in backends' family it takes."""
        from precision_suite.backends.base import family_of

        return str(self.get("family") or family_of(self.runtime))

    @property
    def metrics(self) -> dict[str, Any]:
        return self.get("metrics") or {}

    @property
    def curves(self) -> dict[str, Any]:
        return self.get("curves") or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.get("config") or {}

    @property
    def environ(self) -> dict[str, Any]:
        return self.get("environ") or {}

    @property
    def observed(self) -> dict[str, Any]:
        return self.get("observed") or {}

    def metric(self, key: str) -> float | None:
        """A metric as a finite float, or None when it is missing, not a number or not finite."""
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    def curve(self, key: str = "train_loss") -> np.ndarray | None:
        """A per-step curve as float64 (missing values NaN), or None when it is absent."""
        values = self.curves.get(key)
        if not values:
            return None
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def setting(self, section: str, key: str, default: Any = None) -> Any:
        """``config[section][key]`` of the resolved config the job ran with."""
        value = (self.config.get(section) or {}).get(key)
        return default if value is None else value


# ---------------------------------------------------------------- building a record
def new_record(job: Job | SpeedTask) -> dict[str, Any]:
    """The one builder of a record: a training job's (``Job``) or a timed speed phase's
    (``SpeedTask``, told apart by ``kind``), with no outcome yet (``status`` None). Every record
    the suite writes starts here, whoever fills it: the training loop, the speed phase, an
    executor recording a job that produced none of its own (``failed_record``)."""
    if job.kind == SPEED_KIND:
        first = job.jobs[0]  # type: ignore[union-attr]
        return {
            "schema": SCHEMA,
            "kind": SPEED_KIND,
            "job_id": job.job_id,
            "framework": job.runtime,
            "family": job.family,
            "model": first.model.name,
            "dataset": first.data.name,
            "device": first.device,
            "status": None,
            "error": None,
            "config": job.to_dict(),
            "environ": {},
            "speed": {},
        }
    return {
        "schema": SCHEMA,
        "job_id": job.job_id,
        "backend": job.backend,
        "framework": job.runtime,  # the runtime, under the name records have always given it
        "family": job.family,
        "policy": job.policy,  # type: ignore[union-attr]
        "model": job.model.name,
        "dataset": job.data.name,  # type: ignore[union-attr]
        "seed": job.seed,  # type: ignore[union-attr]
        "device": job.device,
        "status": None,
        "error": None,
        "config": job.to_dict(),
        "environ": {},
        "observed": {},
        "metrics": {},
        "curves": {},
    }


def failed_record(
    job: Job | SpeedTask, status: str, message: str, stderr_tail: str | None = None, **fields: Any
) -> dict[str, Any]:
    """The record of a job (or timed phase) that produced no result of its own: it never ran, its
    worker or a rank died, it ran out of time. ``fields`` (e.g. ``world_size``) follow the
    outcome; ``stderr_tail`` (the dead process's last log lines) comes last when given."""
    record = new_record(job)
    record.update(status=status, error=message, **fields)
    if stderr_tail is not None:
        record["stderr_tail"] = stderr_tail
    return record


def set_placement(record: dict[str, Any], placement: dict[str, Any]) -> dict[str, Any]:
    """Where and when a job ran (``precision_suite.execution.placement.Placement.to_dict``), added
    by the executor that ran it, after the record came back: ``record["placement"]``."""
    record["placement"] = placement
    return record


# ---------------------------------------------------------------- reading a record
def is_job_failure(record: dict[str, Any], check_pure: bool = False) -> bool:
    """Whether a record counts as a failed job (exit code 3). A ``-pure`` policy diverging is
    what those policies exist to show — information, like their accuracy cost — unless the
    config holds them to account (``parity.check_pure``)."""
    status = record.get("status")
    if status in NOT_FAILURES:
        return False
    if status == "diverged" and not check_pure:
        from precision_suite.backends.policy import find_policy

        policy = find_policy(record.get("policy", ""))
        return not (policy is not None and policy.pure)
    return True


def is_noise_floor_run(record: dict[str, Any]) -> bool:
    """A short fp32 run with its initial weights nudged by one ulp (``Job.perturb_ulp``): it
    measures the run's own chaos for the cross-framework verdict and is no result of its own."""
    return bool((record.get("config") or {}).get("perturb_ulp"))


def world_size(record: dict[str, Any]) -> int:
    return int(record.get("world_size") or (record.get("config") or {}).get("world_size") or 1)


def is_dp_reference(record: dict[str, Any]) -> bool:
    return (record.get("config") or {}).get("role") == DP_REFERENCE


def device_label(record: dict[str, Any]) -> str:
    """The comparison group's device: ``cpu`` for one process, ``cpu×2`` for two replicas."""
    size = world_size(record)
    device = str(record.get("device"))
    return f"{device}×{size}" if size > 1 else device


class RowKey(NamedTuple):
    """The identity of a comparison row (``precision_suite.verdicts.compare.Row`` has these five
    fields), and so of the records that are its results: every reader that pairs records with
    rows (diff, advise, history, seeds on demand) keys them with this, the way the comparison
    groups them."""

    model: str
    dataset: str
    device: str  # the group's device label: ``cpu×2`` for two replicas (``device_label``)
    backend: str
    policy: str

    @classmethod
    def of(cls, row: Any) -> RowKey:
        """The key of a comparison row (anything with the five fields)."""
        return cls(row.model, row.dataset, row.device, row.backend, row.policy)

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> RowKey | None:
        """The row a record is a result of; None for a record that is no row's result: a
        noise-floor run (``is_noise_floor_run``) or a data-parallel job's one-process reference
        (``is_dp_reference``), which only feed verdicts."""
        if is_noise_floor_run(record) or is_dp_reference(record):
            return None
        r = record if isinstance(record, Record) else Record(record)
        return cls(r.model_name, r.dataset_name, device_label(r), r.backend, r.policy)


def jsonable(value: Any) -> Any:
    # JSON has no NaN/inf; a non-finite metric is written as null rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return jsonable(value.item())
    return value


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line with a single write(2) on an O_APPEND descriptor, then
    fsync: a kill at any moment leaves every earlier record intact."""
    line = json.dumps(jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        # A writer killed mid-line leaves no newline: start a fresh line so this record is
        # not glued to the damaged one.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        data = line.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Records of the timed speed phase (``"kind": "speed"``, precision_suite.measure.speed_phase); kept apart
    # so readers of job records see only those.
    speed: list[Record] = field(default_factory=list)


def read_records(path: Path) -> ReadResult:
    """Every valid record of ``path``; a damaged line becomes a warning naming its number."""
    out = ReadResult()
    if not path.exists():
        return out
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                out.warnings.append(f"{path}: line {number}: damaged record skipped")
                continue
            if not isinstance(record, dict) or "job_id" not in record or "status" not in record:
                out.warnings.append(f"{path}: line {number}: not a result record, skipped")
                continue
            (out.speed if record.get("kind") == SPEED_KIND else out.records).append(Record(record))
    return out


def latest_by_job(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each job id (a resumed run appends newer records after older ones)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["job_id"]] = record
    return latest


# ---------------------------------------------------------------- reading a run directory
@dataclass
class RunRecords:
    """A run directory as its files say, read by ``read_run``: the newest record of each job and
    of each speed phase, the damaged lines skipped, and the resolved config it ran with."""

    path: Path
    found: bool  # results.jsonl exists
    records: list[Record]  # the newest record of each job, in the order first written
    speed: list[Record]  # the speed phases' records, newest per phase
    warnings: list[str]  # damaged lines skipped while reading

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """The run's resolved config (``CONFIG_FILE``), None when it has none or it is unreadable."""
        import yaml

        try:
            config = yaml.safe_load((self.path / CONFIG_FILE).read_text())
        except (OSError, yaml.YAMLError):
            return None
        return config if isinstance(config, dict) else None

    @property
    def all_records(self) -> list[Record]:
        """Job and speed records together."""
        return [*self.records, *self.speed]


def read_run(path: Path | str) -> RunRecords:
    """The one reader of a run directory: the runner (``--resume``, seeds on demand), the
    report, ``check``, ``diff``, ``advise``, ``export`` and ``serve`` all read through it (the
    outputs through ``precision_suite.outputs.rundir.load_run``, which adds the comparison).
    Never raises for a missing or damaged file: ``found`` and ``warnings`` say."""
    path = Path(path)
    results = path / RESULTS_FILE
    read = read_records(results)
    records: list[Any] = list(latest_by_job(read.records).values())  # Records, as read_records made them
    speed: list[Any] = list(latest_by_job(read.speed).values())
    return RunRecords(path, results.exists(), records, speed, read.warnings)
