"""Runs a job matrix in worker processes and appends one record per job to results.jsonl.

A job's crash, hang or OOM cannot take the run down: each job runs in a worker subprocess in
its own process session. By default one worker per framework is reused across jobs (import
and start-up cost paid once; frameworks never share a process, so their import-order conflicts
cannot arise); ``runner.isolation: per-job`` starts a fresh process for every job.

The dispatch goes through an executor: ``Executor`` runs jobs one at a time in local worker
processes; ``runner.executor: ray`` fans them out over a Ray cluster
(``precision_suite.ray_executor``), ``slurm`` over Slurm job arrays (``precision_suite.slurm_executor``).
All take a list of jobs and stream records back as jobs
finish; the runner is the only writer of results.jsonl.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml
from precision_suite.backends import get_backend_class
from precision_suite.config import SuiteConfig
from precision_suite.jobs import Job
from precision_suite.loop import ProgressFn, new_record
from precision_suite.measure import available_cores
from precision_suite.placement import local_placement
from precision_suite.plan import expand_jobs
from precision_suite.results import (
    RESULTS_FILE,
    append_record,
    is_job_failure,
    is_noise_floor_run,
    latest_by_job,
    read_records,
)
from precision_suite.sequential import rounds_on_demand
from precision_suite.speed import WARM_KIND, SpeedTask, busy_warning, new_speed_record, speed_tasks
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

CONFIG_FILE = "config.yaml"
STDERR_TAIL_LINES = 15
WORKER_START_TIMEOUT_S = 300.0

# Progress of one job of a batch: (job, step, total steps).
JobProgressFn = Callable[[Job, int, int], None]


def worker_environment(config: SuiteConfig, threads: int | None = None) -> dict[str, str]:
    """The same thread count for every framework (docs/architecture.md, "Measurement rules"): by default the
    cores this process may run on (``threads``: a side-by-side worker's share of them)."""
    count = str(threads or config.runner.threads or available_cores())
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": count,
            "MKL_NUM_THREADS": count,
            "TF_NUM_INTRAOP_THREADS": count,
            "PRECISION_SUITE_THREADS": count,
            "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class WorkerDied(RuntimeError):
    pass


class Worker:
    """One ``python -m precision_suite.worker`` process and the pipe it answers on."""

    def __init__(self, log_path: Path, env: dict[str, str], wait: bool = True) -> None:
        """Start the worker; with ``wait`` (default) return once it said it is ready. Without,
        messages may be sent at once (they wait in its stdin); a worker that never starts shows
        as a WorkerDied on its first job."""
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "precision_suite.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if not wait:
            return
        ready = self._next(time.monotonic() + WORKER_START_TIMEOUT_S)
        if ready is None or ready.get("type") != "ready":
            self.kill()
            raise WorkerDied(f"worker did not start: {self.describe_exit()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next message, None at EOF; raises TimeoutError past the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                return None
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_offset(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def stderr_tail(self, since: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-STDERR_TAIL_LINES:])

    def describe_exit(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"worker killed by {name}"
        return f"worker exited with code {code}"

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self.describe_exit()) from None

    def run(self, job: Job, timeout_s: float, progress: ProgressFn) -> dict[str, Any]:
        self.send({"type": job.kind, "job": job.to_dict()})
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._next(deadline)
            if message is None:
                raise WorkerDied(self.describe_exit())
            if message.get("type") == "progress":
                progress(message["step"], message["total"])
            elif message.get("type") == "result":
                return message["record"]

    def kill(self) -> None:
        """Kill the worker's whole process group (no orphans)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def stop(self) -> None:
        if self.alive:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"type": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


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


class Executor:
    """Local executor. Timed jobs run one at a time (timings must not share the machine), each in
    the worker of its framework. With ``runner.parallel_jobs`` above 1, the jobs that claim no
    timing (``Job.timed`` false) run that many at a time in side-by-side workers ("lanes"), each
    with its share of the cores; timed work (the speed phases) and data-parallel jobs still run
    alone, in workers that have every core."""

    def __init__(self, config: SuiteConfig, out_dir: Path, log_dir: Path | None = None) -> None:
        self.config = config
        self.out_dir = out_dir
        self.log_dir = log_dir or out_dir / "logs"
        self.lanes = config.parallel_jobs()
        self.env = worker_environment(config)
        self.lane_env = worker_environment(config, config.runner.threads or max(1, available_cores() // self.lanes))
        # One XLA compilation cache for the run's workers (keras-jax): a program one worker
        # compiled, another loads instead of compiling it again (the same executable, so the same
        # numbers). A user's own JAX_COMPILATION_CACHE_DIR is kept; this one is removed at close.
        self._xla_cache: str | None = None
        if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
            self._xla_cache = tempfile.mkdtemp(prefix="precision-suite-xla-")
            for env in (self.env, self.lane_env):
                env.update(
                    {
                        "JAX_COMPILATION_CACHE_DIR": self._xla_cache,
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                    }
                )
        # (lane, framework) → worker; lane None: the workers with every core.
        self.workers: dict[tuple[int | None, str], Worker] = {}
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def _worker(self, framework: str, lane: int | None = None, wait: bool = True) -> Worker:
        """The live worker of ``framework`` in ``lane`` (None: the every-core one), started if
        needed (``wait``: see ``Worker``)."""
        key = (lane, framework)
        with self._lock:
            worker = self.workers.get(key)
        if worker is None or not worker.alive:
            worker = Worker(self._log_path(framework, lane), self.env if lane is None else self.lane_env, wait)
            with self._lock:
                if self._closing.is_set():
                    worker.kill()
                    raise WorkerDied("the run is stopping")
                self.workers[key] = worker
        return worker

    def _log_path(self, framework: str, lane: int | None) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"worker-{framework}.log" if lane is None else f"worker-{framework}-lane{lane}.log"
        return self.log_dir / name

    def _drop(self, framework: str, lane: int | None) -> None:
        with self._lock:
            self.workers.pop((lane, framework), None)

    def warm(self, tasks: list[SpeedTask]) -> None:
        """Start the every-core workers of the speed phases ``tasks`` now and have them set the
        phases up (``precision_suite.speed.warm_speed_task``) while side-by-side jobs still run:
        the phases then do not wait for imports and compiles. Started from this (the runner's)
        thread: a worker dies with the thread that started it (PR_SET_PDEATHSIG)."""
        if self.lanes == 1:
            return
        for task in tasks:
            try:
                self._worker(task.framework, wait=False).send({"type": WARM_KIND, "job": task.to_dict()})
            except (WorkerDied, OSError):
                pass  # started again, with its error, when a phase needs it

    def _shareable(self, job: Job | SpeedTask) -> bool:
        return self.lanes > 1 and isinstance(job, Job) and not job.timed and job.world_size == 1

    def run_jobs(self, jobs: list[Job], progress: JobProgressFn) -> Iterator[dict[str, Any]]:
        """Run ``jobs`` (the shareable ones side by side first, then the rest in order) and yield
        each one's record as it finishes."""
        shared = [job for job in jobs if self._shareable(job)]
        if shared:
            yield from self._run_side_by_side(shared, progress)
        for job in jobs:
            if self._shareable(job):
                continue
            started_at = time.time()
            record = self.run(job, lambda step, total, job=job: progress(job, step, total))
            record["placement"] = local_placement(job.timed, started_at, time.time()).to_dict()
            yield record

    def _run_side_by_side(self, jobs: list[Job], progress: JobProgressFn) -> Iterator[dict[str, Any]]:
        pending = list(jobs)
        current: dict[int, tuple[str, ...]] = {}  # lane → the kind of job it runs or ran last
        finished: queue.Queue[tuple[Job, dict[str, Any]]] = queue.Queue()
        spans: dict[str, list[float]] = {}  # job id → [started, finished or inf]

        def lane(number: int) -> None:
            while not self._closing.is_set():
                with self._lock:
                    if not pending:
                        return
                    job = pending.pop(next_for_lane(pending, current.get(number), set(current.values())))
                    current[number] = job_kind(job)
                    spans[job.job_id] = [time.time(), float("inf")]
                record = self.run(job, lambda step, total, job=job: progress(job, step, total), lane=number)
                with self._lock:
                    spans[job.job_id][1] = time.time()
                finished.put((job, record))

        for number in range(min(self.lanes, len(jobs))):
            threading.Thread(target=lane, args=(number,), daemon=True, name=f"lane-{number}").start()
        for _ in jobs:
            while True:
                try:
                    job, record = finished.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            with self._lock:
                started_at, finished_at = spans[job.job_id]
                together = most_at_once(list(spans.values()), started_at, finished_at)
            record["placement"] = local_placement(job.timed, started_at, finished_at, together).to_dict()
            yield record

    def run(self, job: Job, progress: ProgressFn, lane: int | None = None) -> dict[str, Any]:
        timeout_s = self.config.runner.job_timeout_s
        if job.world_size > 1:
            from precision_suite.distributed import run_distributed

            return run_distributed(job, timeout_s, self.out_dir / "logs", self.env)
        try:
            worker = self._worker(job.framework, lane)
        except WorkerDied as exc:
            return failed_record(job, "crashed", str(exc))
        since = worker.log_offset()
        last_step = [0, 0]

        def track(step: int, total: int) -> None:
            last_step[:] = [step, total]
            progress(step, total)

        try:
            record = worker.run(job, timeout_s, track)
        except TimeoutError:
            worker.kill()
            self._drop(job.framework, lane)
            where = f" (last report: step {last_step[0]}/{last_step[1]})" if last_step[1] else ""
            return failed_record(job, "timeout", f"exceeded runner.job_timeout_s={timeout_s:g}s{where}; worker killed")
        except WorkerDied as exc:
            tail = worker.stderr_tail(since)
            worker.kill()
            self._drop(job.framework, lane)
            where = f" at step {last_step[0]}/{last_step[1]}" if last_step[1] else ""
            record = failed_record(job, "crashed", f"{exc}{where}")
            record["stderr_tail"] = tail
            return record
        if self.config.runner.isolation == "per-job":
            worker.stop()
            self._drop(job.framework, lane)
        return record

    def _take_workers(self) -> list[Worker]:
        with self._lock:
            workers = list(self.workers.values())
            self.workers.clear()
        return workers

    def close(self) -> None:
        self._closing.set()
        for worker in self._take_workers():
            worker.stop()
        self._remove_xla_cache()

    def kill_all(self) -> None:
        self._closing.set()
        for worker in self._take_workers():
            worker.kill()
        self._remove_xla_cache()

    def _remove_xla_cache(self) -> None:
        if self._xla_cache is not None:
            shutil.rmtree(self._xla_cache, ignore_errors=True)
            self._xla_cache = None


def job_kind(job: Job) -> tuple[str, ...]:
    """Jobs of one kind differ only in seed (or are its noise-floor runs): a worker that just ran
    one can reuse what it built for it (compiled steps, caches), so a lane keeps to one kind."""
    return (job.backend, job.model.name, job.policy, job.data.name, str(job.train.batch_size))


def next_for_lane(pending: list[Job], last: tuple[str, ...] | None, busy: set[tuple[str, ...]]) -> int:
    """Index in ``pending`` of the job a free lane takes: one of the kind it ran last, else the
    first of a kind no other lane is on, else the first."""
    kinds = [job_kind(job) for job in pending]
    if last is not None and last in kinds:
        return kinds.index(last)
    return next((i for i, kind in enumerate(kinds) if kind not in busy), 0)


def most_at_once(spans: list[list[float]], start: float, end: float) -> int:
    """The most of ``spans`` ([start, end], end may be inf) running at one moment within
    [``start``, ``end``]: how many jobs shared the machine with one that ran then, itself included."""
    inside = [(max(a, start), min(b, end)) for a, b in spans if a <= end and b >= start]
    events = sorted([(a, 1) for a, _ in inside] + [(b, -1) for _, b in inside], key=lambda e: (e[0], -e[1]))
    most = running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return max(most, 1)


def failed_record(job: Job | SpeedTask, status: str, message: str) -> dict[str, Any]:
    """The record of a job (or timed phase) that produced no result of its own (it never ran,
    or its worker died)."""
    record = new_speed_record(job) if isinstance(job, SpeedTask) else new_record(job)
    record.update(status=status, error=message)
    return record


def make_executor(config: SuiteConfig, out_dir: Path) -> JobExecutor:
    """The executor ``runner.executor`` names; raises ConfigError when it cannot be used."""
    if config.runner.executor == "ray":
        from precision_suite.ray_executor import RayExecutor

        return RayExecutor(config, out_dir)
    if config.runner.executor == "slurm":
        from precision_suite.slurm_executor import SlurmExecutor

        return SlurmExecutor(config, out_dir)
    return Executor(config, out_dir)


def save_config(config: SuiteConfig, out_dir: Path) -> None:
    path = out_dir / CONFIG_FILE
    text = "# The resolved config of this run (precision-suite run --resume uses it).\n"
    text += yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    path.write_text(text)


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
    return f"[{colour}]{status}[/] {record['job_id']}: {record.get('error')}"


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
        read = read_records(results_path)
        summary.warnings.extend(read.warnings)
        done = {jid for jid, r in latest_by_job(read.records + read.speed).items() if r["status"] == "ok"}
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
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
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

            def write(record: dict[str, Any], final: bool = True) -> None:
                append_record(results_path, record)
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
            write(failed_record(job, "unavailable", available.reason))
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
