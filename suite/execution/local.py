"""The local executor: jobs run in worker processes on this machine, timed work alone, untimed
training jobs side by side in "lanes" when ``runner.parallel_jobs`` > 1.

By default one worker per framework is reused across jobs (import and start-up cost paid once;
frameworks never share a process, so their import-order conflicts cannot arise);
``runner.isolation: per-job`` starts a fresh process for every job. Data-parallel jobs go to the
launcher (``precision_suite.execution.data_parallel``).
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from precision_suite.config import SuiteConfig
from precision_suite.execution.placement import local_placement
from precision_suite.execution.process import Worker, WorkerDied
from precision_suite.jobs import Job
from precision_suite.measure.environment import available_cores
from precision_suite.measure.loop import ProgressFn
from precision_suite.measure.speed_phase import WARM_KIND, SpeedTask
from precision_suite.results import failed_record, set_placement

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
    from precision_suite.models import set_python_path_env

    set_python_path_env(env, config.python_path)
    return env


class Executor:
    """Local executor. Timed jobs run one at a time (timings must not share the machine), each in
    the worker of its runtime. With ``runner.parallel_jobs`` above 1, the jobs that claim no
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
        # (lane, runtime) → worker; lane None: the workers with every core.
        self.workers: dict[tuple[int | None, str], Worker] = {}
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def _worker(self, runtime: str, lane: int | None = None, wait: bool = True) -> Worker:
        """The live worker of ``runtime`` in ``lane`` (None: the every-core one), started if
        needed (``wait``: see ``Worker``)."""
        key = (lane, runtime)
        with self._lock:
            worker = self.workers.get(key)
        if worker is None or not worker.alive:
            worker = Worker(self._log_path(runtime, lane), self.env if lane is None else self.lane_env, wait)
            with self._lock:
                if self._closing.is_set():
                    worker.kill()
                    raise WorkerDied("the run is stopping")
                self.workers[key] = worker
        return worker

    def _log_path(self, runtime: str, lane: int | None) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"worker-{runtime}.log" if lane is None else f"worker-{runtime}-lane{lane}.log"
        return self.log_dir / name

    def _drop(self, runtime: str, lane: int | None) -> None:
        with self._lock:
            self.workers.pop((lane, runtime), None)

    def warm(self, tasks: list[SpeedTask]) -> None:
        """Start the every-core workers of the speed phases ``tasks`` now and have them set the
        phases up (``precision_suite.measure.speed_phase.warm_speed_task``) while side-by-side jobs still run:
        the phases then do not wait for imports and compiles. Started from this (the runner's)
        thread: a worker dies with the thread that started it (PR_SET_PDEATHSIG)."""
        if self.lanes == 1:
            return
        for task in tasks:
            try:
                self._worker(task.runtime, wait=False).send({"type": WARM_KIND, "job": task.to_dict()})
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
            yield set_placement(record, local_placement(job.timed, started_at, time.time()).to_dict())

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
            yield set_placement(record, local_placement(job.timed, started_at, finished_at, together).to_dict())

    def run(self, job: Job, progress: ProgressFn, lane: int | None = None) -> dict[str, Any]:
        timeout_s = self.config.runner.job_timeout_s
        if job.world_size > 1:
            from precision_suite.execution.data_parallel import run_distributed

            return run_distributed(job, timeout_s, self.out_dir / "logs", self.env)
        try:
            worker = self._worker(job.runtime, lane)
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
            self._drop(job.runtime, lane)
            where = f" (last report: step {last_step[0]}/{last_step[1]})" if last_step[1] else ""
            return failed_record(job, "timeout", f"exceeded runner.job_timeout_s={timeout_s:g}s{where}; worker killed")
        except WorkerDied as exc:
            tail = worker.stderr_tail(since)
            worker.kill()
            self._drop(job.runtime, lane)
            where = f" at step {last_step[0]}/{last_step[1]}" if last_step[1] else ""
            return failed_record(job, "crashed", f"{exc}{where}", stderr_tail=tail)
        if self.config.runner.isolation == "per-job":
            worker.stop()
            self._drop(job.runtime, lane)
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
