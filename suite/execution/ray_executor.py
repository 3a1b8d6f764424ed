"""``runner.executor: ray``: the job matrix fanned out over a Ray cluster, one Ray task per job.

Each task runs the suite's own worker (``python -m precision_suite.execution.worker``, through the local
``Executor`` with a fresh process per job), so a job keeps its process isolation and writes the
same record as on one machine. Resources per job: its CPUs (``runner.ray.num_cpus_per_job`` times
its world size) and, on CUDA, one whole GPU per replica; Ray sets ``CUDA_VISIBLE_DEVICES``.

Timing fairness is enforced with one custom resource, ``timing_slot: 1`` on every node. A timed
job (``Job.timed``) takes the whole slot; an accuracy-only job takes ``SHARED_SLOT`` of it. So any
number of accuracy-only jobs may share a node (one per device), but a timed job runs only when
no other job of the run is on its node, and none starts there until it ends: a reader-writer
lock made of a Ray resource. A ``JobBoard`` actor sees every job start and end, and each record
says how many jobs (timed, and of any kind) shared its node while it ran.

The driver is the only writer of results.jsonl: records come back through ``ray.wait`` and are
yielded in completion order. A job past ``runner.job_timeout_s`` (counted from its task's start,
so the fresh worker's start-up is included) is cancelled with ``ray.cancel(force=True)`` and
recorded ``timeout``; a task that dies is recorded ``crashed`` with Ray's error in one line.

Loopback: a private instance (``runner.ray.address: null``) and a cluster addressed on the
loopback interface keep every Ray connection on 127.0.0.1. Ray otherwise replaces 127.0.0.1 with
the machine's "reachable" address (``services.resolve_ip_for_localhost``); on Linux,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes ``services.get_node_ip_address`` answer the loopback
address instead. Usage statistics are off.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precision_suite.config import ConfigError, SuiteConfig
from precision_suite.execution.local import Executor, JobProgressFn
from precision_suite.execution.placement import Placement, visible_gpus
from precision_suite.jobs import Job
from precision_suite.measure.loop import one_line
from precision_suite.results import failed_record, set_placement

RAY_EXTRA = 'pip install "precision-suite[ray]"'
TIMING_RESOURCE = "timing_slot"
# What an accuracy-only job holds of its node's timing slot: up to 1/SHARED_SLOT of them may
# share a node, and a timed job (which needs the whole slot) waits until none is left there.
SHARED_SLOT = 0.001
LOOPBACK_IP = "127.0.0.1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Only records travel through the object store: the private instance keeps it small.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
POLL_S = 0.5
CONNECT_PROBE_TIMEOUT_S = 10.0
# A task's own worker timeout, beyond the driver's: the driver cancels first; this only frees the
# node if the driver is gone.
TASK_TIMEOUT_BACKSTOP_S = 60.0
# How long a force-cancelled task may take to report back before its record is written anyway.
CANCEL_WAIT_S = 30.0


def import_ray() -> Any:
    """Ray, or a ConfigError naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f'runner.executor: "ray" needs Ray, which is not installed: {RAY_EXTRA}') from None
    return ray


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (null, "auto" or "host:port") keeps Ray on this machine's loopback
    interface: null (a private instance) or a loopback host. "auto" is whatever `ray start`
    was told, so it is left to Ray."""
    if address is None:
        return True
    if address == "auto":
        return False
    return address.rpartition(":")[0] in LOOPBACK_HOSTS


def keep_ray_on_loopback() -> None:
    """Make Ray use 127.0.0.1 as this node's address (see the module docstring). Ray reads the
    variable when it is first imported; a Ray imported earlier gets the same setting directly."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def start_local_instance(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """A private Ray instance on this machine, on the loopback interface only, with one timing
    slot. ``num_gpus`` may be logical (Ray then assigns GPU ids on a machine without GPUs)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    keep_ray_on_loopback()
    ray = import_ray()
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources={TIMING_RESOURCE: 1},
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        namespace="precision-suite",
        log_to_driver=False,
        logging_level=logging.WARNING,
        _node_ip_address=LOOPBACK_IP,
    )


def connect(address: str) -> None:
    """Join the cluster at ``address`` ("auto" or the head's "host:port") as its driver."""
    if address != "auto":
        # Ray keeps retrying an address nothing listens on for minutes: look first.
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_PROBE_TIMEOUT_S).close()
        except OSError as exc:
            raise ConfigError(f"runner.ray.address: no Ray cluster answers at {address} ({exc})") from None
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    kwargs: dict[str, Any] = {}
    if is_loopback(address):
        keep_ray_on_loopback()
        kwargs["_node_ip_address"] = LOOPBACK_IP
    ray = import_ray()
    try:
        ray.init(
            address=address,
            namespace="precision-suite",
            log_to_driver=False,
            logging_level=logging.WARNING,
            **kwargs,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        message = f"runner.ray.address: cannot connect to the Ray cluster at {address}: {one_line(exc)}"
        raise ConfigError(message) from None


def job_world_size(job: Job) -> int:
    """Replicas of a data-parallel job (``distributed.world_size``), 1 for everything else."""
    distributed = getattr(job, "distributed", None)
    size = getattr(distributed, "world_size", None) or getattr(job, "world_size", None) or 1
    return int(size)


@dataclass(frozen=True)
class JobResources:
    """What one job reserves on one node. A job of world size N takes N whole GPUs in one
    task: Ray never splits one task's resources across nodes, and the job's own launcher
    (torchrun-style) starts its N replicas on that node."""

    num_cpus: int
    num_gpus: int
    timing_slot: float

    @classmethod
    def of(cls, job: Job, cpus_per_job: int, cluster_has_gpus: bool) -> JobResources:
        world = job_world_size(job)
        on_gpu = job.device == "cuda" or (job.device == "auto" and cluster_has_gpus)
        return cls(cpus_per_job * world, world if on_gpu else 0, 1.0 if job.timed else SHARED_SLOT)

    def ray_options(self) -> dict[str, Any]:
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": {TIMING_RESOURCE: self.timing_slot},
        }

    def fits(self, node_resources: dict[str, float]) -> bool:
        return (
            node_resources.get("CPU", 0) >= self.num_cpus
            and node_resources.get("GPU", 0) >= self.num_gpus
            and node_resources.get(TIMING_RESOURCE, 0) >= 1
        )

    def describe(self) -> str:
        gpus = f"{self.num_gpus} GPU(s), " if self.num_gpus else ""
        return f"{gpus}{self.num_cpus} CPU(s) and the {TIMING_RESOURCE} resource on one node"


@dataclass
class _OnNode:
    node_id: str
    timed: bool
    placement: dict[str, Any]
    step: int = 0
    total: int = 0
    most_timed: int = 0
    most_jobs: int = 0


class JobBoard:
    """Runs as one Ray actor: which jobs run on which node, their last progress report, and the
    most jobs (timed, and of any kind) that shared a node while each one ran."""

    def __init__(self) -> None:
        self.running: dict[str, _OnNode] = {}

    def started(self, job_id: str, node_id: str, timed: bool, placement: dict[str, Any]) -> None:
        self.running[job_id] = _OnNode(node_id, timed, placement)
        on_node = [r for r in self.running.values() if r.node_id == node_id]
        timed_now = sum(r.timed for r in on_node)
        for entry in on_node:
            entry.most_timed = max(entry.most_timed, timed_now)
            entry.most_jobs = max(entry.most_jobs, len(on_node))

    def progress(self, job_id: str, step: int, total: int) -> None:
        if job_id in self.running:
            self.running[job_id].step, self.running[job_id].total = step, total

    def finished(self, job_id: str) -> tuple[int, int, dict[str, Any] | None]:
        """Take the job off the board: the most timed jobs and jobs that shared its node, and
        where it ran (None if it never started or was taken off already)."""
        entry = self.running.pop(job_id, None)
        return (entry.most_timed, entry.most_jobs, entry.placement) if entry else (0, 0, None)

    def snapshot(self) -> dict[str, tuple[int, int, dict[str, Any]]]:
        return {job_id: (r.step, r.total, r.placement) for job_id, r in self.running.items()}


def _log_dir(run_log_dir: str, job_id: str) -> Path:
    """The job's log folder: under the run's folder where this node can write it (one machine, or
    a shared file system), else in the node's temporary folder."""
    name = job_id.replace("/", "__")
    for base in (Path(run_log_dir), Path(tempfile.gettempdir()) / "precision-suite-logs"):
        try:
            (base / name).mkdir(parents=True, exist_ok=True)
            return base / name
        except OSError:
            continue
    raise OSError(f"no writable log folder for {job_id}")


def run_job_on_node(job: Job, config: SuiteConfig, run_log_dir: str, board: Any) -> dict[str, Any]:
    """The body of a job's Ray task: run the job in a fresh worker process on this node and
    return its record, with where it ran."""
    import ray

    context = ray.get_runtime_context()
    gpu_ids = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
    # Ray sets CUDA_VISIBLE_DEVICES only for tasks that hold GPUs; a CPU job must not see (and
    # with device "auto", pick) a GPU another job holds.
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES") if gpu_ids else ""
    placement = Placement(
        executor="ray",
        node_id=context.get_node_id(),
        hostname=platform.node(),
        timed=job.timed,
        cuda_visible_devices=cuda_visible,
        gpus=list(visible_gpus(cuda_visible)),
        node_ip=ray.util.get_node_ip_address(),
        gpu_ids=gpu_ids,
    )
    # Started before the board hears of it: the board's copy is the record's if the task dies.
    placement.started_at = time.time()
    ray.get(board.started.remote(job.job_id, placement.node_id, job.timed, placement.to_dict()))
    executor = Executor(config, Path(run_log_dir), log_dir=_log_dir(run_log_dir, job.job_id))
    executor.env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    try:
        record = executor.run(job, lambda step, total: board.progress.remote(job.job_id, step, total))
    finally:
        executor.close()
        placement.finished_at = time.time()
        most_timed, most_jobs, _ = ray.get(board.finished.remote(job.job_id))
    placement.concurrent_timed_jobs_on_node = most_timed
    placement.concurrent_jobs_on_node = most_jobs
    return set_placement(record, placement.to_dict())


@dataclass
class _Outstanding:
    job: Job
    seen_running_at: float | None = None  # driver clock
    step: int = 0
    total: int = 0
    placement: dict[str, Any] | None = None
    cancelled_at: float | None = None
    timeout_message: str | None = None


@dataclass
class RayExecutor:
    """Runs jobs as Ray tasks; see the module docstring."""

    config: SuiteConfig
    out_dir: Path
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ray = import_ray()
        self.out_dir = self.out_dir.resolve()
        settings = self.config.runner.ray
        # Already connected (a test session, a notebook): use that connection and leave it open.
        self.owns_connection = not self.ray.is_initialized()
        if self.owns_connection:
            if settings.address is None:
                start_local_instance(settings.num_cpus, settings.num_gpus)
            else:
                connect(settings.address)
        self.outstanding: dict[Any, _Outstanding] = {}
        self._board: Any = None
        self._task: Any = None
        self._check_timing_slots()

    def _nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def _check_timing_slots(self) -> None:
        for node in self._nodes():
            slots = node["Resources"].get(TIMING_RESOURCE)
            name = f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
            if slots is None:
                self.warnings.append(
                    f"{name} has no {TIMING_RESOURCE} resource, so no job runs there: start it with "
                    f"ray start ... --resources='{{\"{TIMING_RESOURCE}\": 1}}'"
                )
            elif slots != 1:
                self.warnings.append(
                    f"{name} offers {TIMING_RESOURCE}={slots:g}: up to {slots:g} timed jobs may share it "
                    f"(start it with {TIMING_RESOURCE}: 1 for exclusive timing)"
                )

    def _ensure_started(self) -> None:
        if self._board is None:
            self._board = self.ray.remote(num_cpus=0)(JobBoard).remote()
            self._task = self.ray.remote(max_retries=0)(run_job_on_node)

    def _task_config(self, resources: JobResources) -> SuiteConfig:
        runner = self.config.runner
        task_runner = runner.model_copy(
            update={
                "isolation": "per-job",
                "threads": runner.threads or resources.num_cpus,
                "job_timeout_s": runner.job_timeout_s + TASK_TIMEOUT_BACKSTOP_S,
            }
        )
        return self.config.model_copy(update={"runner": task_runner})

    def run_jobs(self, jobs: list[Job], progress: JobProgressFn) -> Iterator[dict[str, Any]]:
        """Submit every job, then yield records in the order the jobs finish."""
        self._ensure_started()
        nodes = self._nodes()
        cluster_has_gpus = any(n["Resources"].get("GPU", 0) > 0 for n in nodes)
        cpus_per_job = self.config.runner.ray.num_cpus_per_job
        log_dir = str(self.out_dir / "logs" / "ray")
        for job in jobs:
            resources = JobResources.of(job, cpus_per_job, cluster_has_gpus)
            if not any(resources.fits(n["Resources"]) for n in nodes):
                yield failed_record(
                    job, "unavailable", f"needs {resources.describe()}; no node of the Ray cluster offers that"
                )
                continue
            ref = self._task.options(name=f"precision-suite {job.job_id}", **resources.ray_options()).remote(
                job, self._task_config(resources), log_dir, self._board
            )
            self.outstanding[ref] = _Outstanding(job)
        while self.outstanding:
            ready, _ = self.ray.wait(list(self.outstanding), num_returns=1, timeout=POLL_S)
            for ref in ready:
                yield self._record(ref, self.outstanding.pop(ref))
            for out in self._watch(progress):
                yield self._timeout_record(out)

    def _watch(self, progress: JobProgressFn) -> list[_Outstanding]:
        """Progress reports, and the timeout of every running job. Returns the cancelled jobs
        whose tasks never reported back: their records are written anyway; Ray owns the rest."""
        board = self.ray.get(self._board.snapshot.remote())
        now = time.monotonic()
        timeout_s = self.config.runner.job_timeout_s
        given_up = []
        for ref, out in list(self.outstanding.items()):
            if out.cancelled_at is not None:
                if now - out.cancelled_at > CANCEL_WAIT_S:
                    given_up.append(self.outstanding.pop(ref))
                continue
            state = board.get(out.job.job_id)
            if state is None:
                continue
            step, total, out.placement = state
            if out.seen_running_at is None:
                out.seen_running_at = now
            if (step, total) != (out.step, out.total):
                out.step, out.total = step, total
                progress(out.job, step, total)
            if now - out.seen_running_at > timeout_s:
                where = f" (last report: step {step}/{total})" if total else ""
                out.timeout_message = f"exceeded runner.job_timeout_s={timeout_s:g}s{where}; Ray task cancelled"
                out.cancelled_at = now
                self.ray.cancel(ref, force=True)
        return given_up

    def _lost_task_placement(self, out: _Outstanding) -> dict[str, Any] | None:
        """Where a task that never reported back ran, from the board, which then forgets it (or
        it would count as running beside every later job on its node). Its ``finished_at`` is
        when the driver gave it up, on the driver's clock: the task never said."""
        try:
            most_timed, most_jobs, on_board = self.ray.get(self._board.finished.remote(out.job.job_id))
        except self.ray.exceptions.RayError:
            most_timed, most_jobs, on_board = 0, 0, None
        if on_board is None and out.placement is None:
            return None  # it never started
        placement = dict(on_board or out.placement, finished_at=time.time())
        if on_board is not None:
            placement.update(concurrent_timed_jobs_on_node=most_timed, concurrent_jobs_on_node=most_jobs)
        return placement

    def _timeout_record(self, out: _Outstanding) -> dict[str, Any]:
        record = failed_record(out.job, "timeout", out.timeout_message or "timeout")
        placement = self._lost_task_placement(out)
        return record if placement is None else set_placement(record, placement)

    def _record(self, ref: Any, out: _Outstanding) -> dict[str, Any]:
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayError as exc:
            if out.timeout_message is not None:
                return self._timeout_record(out)
            if isinstance(exc, exceptions.OutOfMemoryError):
                record = failed_record(out.job, "oom", f"Ray killed the task: {one_line(exc)}")
            else:
                cause = getattr(exc, "cause", None)
                message = one_line(cause) if isinstance(cause, BaseException) else one_line(exc)
                record = failed_record(out.job, "crashed", f"Ray task died: {message}")
        placement = self._lost_task_placement(out)
        return record if placement is None else set_placement(record, placement)

    def kill_all(self) -> None:
        for ref in self.outstanding:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing left to stop
                pass
        self.outstanding.clear()

    def close(self) -> None:
        self.kill_all()
        if self._board is not None:
            self.ray.kill(self._board)
            self._board = None
        if self.owns_connection and self.ray.is_initialized():
            self.ray.shutdown()
