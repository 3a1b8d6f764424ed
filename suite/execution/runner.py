"""Runs a job matrix and appends one record per job to results.jsonl.

A job's crash, hang or OOM cannot take the run down: each job runs in a worker subprocess in
its own process session (``precision_suite.execution.process``).

The dispatch goes through an executor (``JobExecutor``): ``precision_suite.execution.local``
runs jobs in local worker processes; ``runner.executor: ray`` fans them out over a Ray cluster
(``precision_suite.execution.ray_executor``), ``slurm`` over Slurm job arrays
(``precision_suite.execution.slurm``). All take a list of jobs and stream records back as
jobs finish; the runner is the only writer of results.jsonl. Rounds of seeds on demand come from
``precision_suite.execution.seeds_on_demand``.
"""

from __future__ import annotations

import importlib.metadata
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml
from precision_suite.backends import get_backend_class
from precision_suite.config import SuiteConfig
from precision_suite.execution.local import Executor, JobProgressFn
from precision_suite.execution.seeds_on_demand import rounds_on_demand
from precision_suite.jobs import Job
from precision_suite.measure.speed_phase import SpeedTask
from precision_suite.measure.timing import busy_warning
from precision_suite.plan import expand_jobs, speed_tasks
from precision_suite.results import (
    CONFIG_FILE,
    RESULTS_FILE,
    append_record,
    failed_record,
    is_job_failure,
    is_noise_floor_run,
    read_run,
)
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class RunSummary:
    out_dir: Path
    total_jobs: int
    skipped_ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)


class JobExecutor(Protocol):
    """The seam between the runner and where jobs run. ``run_jobs`` may be called more than once
    (jobs can be added in rounds); ``kill_all`` stops everything outstanding (Ctrl-C)."""

    warnings: list[str]

    def run_jobs(self, jobs: list[Job], progress: JobProgressFn) -> Iterator[dict[str, Any]]: ...

    def kill_all(self) -> None: ...

    def close(self) -> None: ...


def make_executor(config: SuiteConfig, out_dir: Path) -> JobExecutor:
    """The executor ``runner.executor`` names; raises ConfigError when it cannot be used."""
    if config.runner.executor == "ray":
        from precision_suite.execution.ray_executor import RayExecutor

        return RayExecutor(config, out_dir)
    if config.runner.executor == "slurm":
        from precision_suite.execution.slurm import SlurmExecutor

        return SlurmExecutor(config, out_dir)
    return Executor(config, out_dir)


CONFIG_TITLE = "# The resolved config of this run (precision-suite run --resume uses it).\n"


def save_config(config: SuiteConfig, out_dir: Path) -> None:
    """The run's config.yaml: a title, the config's origin as comments (``read_origin``), then the
    resolved config."""
    path = out_dir / CONFIG_FILE
    text = CONFIG_TITLE + "".join(f"# {line}\n" for line in config.origin)
    text += yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    path.write_text(text)


def read_origin(path: Path) -> list[str]:
    """The origin lines ``save_config`` wrote into the config file at ``path``."""
    lines = path.read_text().splitlines()
    return [line[2:] for line in lines[1:] if line.startswith("# ")]


def _status_line(record: dict[str, Any]) -> str:
    status = record["status"]
    metrics = record.get("metrics") or {}
    if status == "ok" and is_noise_floor_run(record):
        return f"[green]ok[/] {record['job_id']}  [dim](noise floor: fp32 one ulp off, short; not a result)[/]"
    if status == "ok" and record.get("kind") == "speed":
        parts = [
            f"{c['backend']} {c['policy']} {c['speedup']:.2f}×" + (" (noisy)" if c.get("noisy_reason") else "")
            for c in record["speed"]["candidates"]
        ]
        return f"[green]ok[/] {record['job_id']}  " + ", ".join(parts)
    if status == "ok":
        acc = metrics.get("test_accuracy")
        ms = metrics.get("step_time_ms_p50")
        parts = [f"acc {acc * 100:.1f}%" if acc is not None else "", f"{ms:.2f} ms/step" if ms else ""]
        return f"[green]ok[/] {record['job_id']}  " + "  ".join(p for p in parts if p)
    colour = "yellow" if status == "unavailable" else "red"
    return f"[{colour}]{status}[/] {record['job_id']}: {escape(str(record.get('error')))}"


def install_command(runtime: str) -> str | None:
    """``pip install "precision-suite[RUNTIME]"`` where the distribution has an extra named for
    the runtime (pyproject's optional-dependencies: torch, tensorflow, jax), else None."""
    try:
        extras = importlib.metadata.metadata("precision-suite").get_all("Provides-Extra") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return None
    return f'pip install "precision-suite[{runtime}]"' if runtime in extras else None


def unavailable_lines(jobs: list[Job | SpeedTask], availability: dict[str, Any]) -> list[str]:
    """One line per backend whose framework is missing here: how many of ``jobs`` (speed phases
    included) it cannot run, why, and the command that installs it — never a line per job."""
    counts = Counter(job.backend for job in jobs if not availability[job.backend].ok)
    lines = []
    for backend, count in counts.items():
        hint = install_command(get_backend_class(backend).runtime)
        reason = availability[backend].reason + (f"; {hint}" if hint else "")
        lines.append(f"[yellow]unavailable[/] {backend}: {count} job(s) — {escape(reason)}")
    return lines


def run_suite(config: SuiteConfig, out_dir: Path, console: Console, resume: bool = False) -> RunSummary:
    executor = make_executor(config, out_dir)  # before anything is written: may be a config error
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    all_jobs = expand_jobs(config, config.device)
    jobs = [] if config.speed.speed_only else all_jobs
    tasks = speed_tasks(config, all_jobs) if config.speed.enabled or config.speed.speed_only else []
    summary = RunSummary(out_dir, len(jobs) + len(tasks))
    done: set[str] = set()
    if resume:
        read = read_run(out_dir)
        summary.warnings.extend(read.warnings)
        done = {r.job_id for r in read.all_records if r.ok}
    save_config(config, out_dir)
    pending: list[Job | SpeedTask] = [job for job in [*jobs, *tasks] if job.job_id not in done]
    summary.skipped_ok = len(jobs) + len(tasks) - len(pending)
    if tasks and config.device != "cuda":
        warning = busy_warning()
        if warning:
            console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)

    # Backends whose framework is missing never start a worker: their jobs are recorded
    # `unavailable` with the reason.
    availability = {name: get_backend_class(name).is_available() for name in config.backends.names}
    for line in unavailable_lines(pending, availability):
        console.print(line, highlight=False, soft_wrap=True)
    # Jobs a worker finds it cannot run (tf32 on a CPU) are listed once per backend and reason.
    unavailable_said: set[tuple[str, str]] = set()
    # SIGTERM stops the run as Ctrl-C does. Only the main thread may set a handler; the Python API
    # may run this from another thread, where SIGTERM keeps its disposition.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if on_main_thread else None
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("starting", total=len(pending))

            def on_step(job: Job, step: int, total: int) -> None:
                progress.update(task, description=f"{job.job_id}  step {step}/{total}")

            def write(record: dict[str, Any], final: bool = True, echo: bool = True) -> None:
                append_record(results_path, record)
                if record["status"] == "unavailable":
                    reason = (record.get("backend") or record.get("framework") or "", str(record.get("error")))
                    echo = echo and reason not in unavailable_said
                    unavailable_said.add(reason)
                if echo:
                    progress.console.print(_status_line(record), highlight=False, soft_wrap=True)
                if final:
                    summary.statuses[record["status"]] += 1
                    summary.failed += is_job_failure(record, config.parity.check_pure)
                    progress.advance(task)

            def more_seeds(added: list[Job]) -> None:
                summary.total_jobs += len(added)
                progress.update(task, total=progress.tasks[task].total + len(added))
                if added:
                    progress.console.print(f"more seeds for undecided verdicts: {len(added)} job(s)", highlight=False)

            # Round by round: the matrix, then (seeds on demand) the jobs of each later look;
            # then the timed speed phases, when no training job is left to compete with them.
            training = [job for job in pending if not isinstance(job, SpeedTask)]
            phases = [task for task in pending if isinstance(task, SpeedTask)]
            if training and isinstance(executor, Executor):
                executor.warm([task for task in phases if availability[task.backend].ok])
            for round_jobs in rounds_on_demand(
                config, config.device, training, results_path, lambda j: j.job_id in done, more_seeds
            ):
                _run_round(config, executor, round_jobs, availability, write, on_step)
            _run_round(config, executor, phases, availability, write, on_step)
    except KeyboardInterrupt:
        summary.interrupted = True
        executor.kill_all()
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
        executor.close()
    summary.warnings.extend(executor.warnings)
    return summary


def _run_round(
    config: SuiteConfig,
    executor: JobExecutor,
    jobs: list[Job],
    availability: dict[str, Any],
    write: Callable[..., None],
    on_step: JobProgressFn,
) -> None:
    """Run ``jobs`` to the end, writing each record as it comes: jobs whose framework is missing
    are recorded ``unavailable``; the rest go to the executor in batches — the jobs, then the
    half-batch retries of those that ran out of memory (each retried once)."""
    batch = []
    for job in jobs:
        available = availability[job.backend]
        if available.ok:
            batch.append(job)
        else:
            write(failed_record(job, "unavailable", available.reason), echo=False)  # said once, up front
    retried: dict[str, Job] = {}
    while batch:
        by_id = {job.job_id: job for job in batch}
        next_batch = []
        for record in executor.run_jobs(batch, on_step):
            job = by_id[record["job_id"]]
            original = retried.get(job.job_id)
            if original is not None:
                record["retry"] = {
                    "after": "oom",
                    "batch_size": job.train.batch_size,
                    "original_batch_size": original.train.batch_size,
                }
            elif (retry := _half_batch_retry(config, job, record)) is not None:
                write(record, final=False)
                retried[job.job_id] = job
                next_batch.append(retry)
                continue
            write(record)
        batch = next_batch


def _half_batch_retry(config: SuiteConfig, job: Job | SpeedTask, record: dict[str, Any]) -> Job | None:
    """The same job with half the batch size, if it ran out of memory and the config asks for
    a retry (and the halved batch still splits into the configured micro-batches)."""
    if record["status"] != "oom" or not config.runner.oom_retry_half_batch or isinstance(job, SpeedTask):
        return None
    half = job.train.batch_size // 2
    if half < 1 or half % job.train.grad_accumulation:
        return None
    return replace(job, train=job.train.model_copy(update={"batch_size": half}))


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
