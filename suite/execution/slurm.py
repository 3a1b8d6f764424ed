"""``runner.executor: slurm``: the job matrix as Slurm job arrays, submitted through submitit.

Each array task runs the suite's own worker on its node (``run_job_on_node``: the local
``Executor`` with a fresh process per job, as a Ray task does), so a job keeps its process
isolation and writes the same record as on one machine. The record comes back as the task's
submitit result (a pickle in ``runner.slurm.folder``, which every node must see); the driver is the
only writer of results.jsonl and yields records in the order jobs finish.

What a job asks for: ``cpus_per_task`` CPUs per replica, one GPU per replica on a GPU device
(``device: cuda``, or ``auto`` with ``gpus_per_node`` set), ``mem_gb``, ``timeout_min``. Jobs that
ask for the same go out as one array (``--array=0-K%array_parallelism``).

Timing fairness: a timed job (``Job.timed``: the speed phases, and training jobs unless
``runner.accuracy_only``) is submitted with ``--exclusive``: Slurm gives it a whole node, and no
other job (of this run or anyone's) runs there meanwhile. Accuracy-only jobs share nodes, one GPU
each. On ``cluster: local`` (one machine) the driver admits jobs like a reader-writer lock: up to
``array_parallelism`` untimed jobs at once, a timed job only alone. Each job writes where and when
it started into the folder's ``started/``; the driver counts from those how many jobs shared a
node with each one (``placement.concurrent_jobs_on_node``).

Faults. A job past ``runner.job_timeout_s`` is stopped by its own node's executor and recorded
``timeout`` as everywhere. A job that reaches Slurm's time limit gets submitit's signal
(``signal_delay_s`` before the end) and is recorded ``timeout`` with the Slurm state; a preempted
job is requeued by submitit (it starts again from scratch: a record comes from one uninterrupted
run). A job that ends with no result (its node died, it was cancelled, Slurm killed it for memory)
is recorded from its Slurm state (``NODE_FAIL`` → ``crashed``, ``OUT_OF_MEMORY`` → ``oom``, ...):
a dead node loses only its own jobs. Ctrl-C in the driver cancels every array (``scancel``);
``--resume`` submits only the jobs without an ``ok`` record (the runner's rule).

Data-parallel jobs (``distributed.world_size`` N): with N ≤ ``gpus_per_node`` (or on CPU) one
Slurm job on one node holds N GPUs and N × ``cpus_per_task`` CPUs, and the suite's own launcher
(``precision_suite.execution.data_parallel``) starts the ranks there. With N > ``gpus_per_node`` the job spans
``ceil(N / gpus_per_node)`` nodes as one Slurm job of N tasks (``nodes``, ``tasks_per_node``): each
task is one rank, told its rendezvous by ``rank_environment`` (torch's env:// variables from
submitit's ``TorchDistributedEnvironment``, TF_CONFIG from the Slurm node list), and rank 0
returns the record.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precision_suite.config import ConfigError, SuiteConfig
from precision_suite.execution.local import Executor, JobProgressFn, most_at_once
from precision_suite.execution.placement import Placement, visible_gpus
from precision_suite.execution.process import STDERR_TAIL_LINES, WORKER_START_TIMEOUT_S, exit_text, log_tail
from precision_suite.jobs import Job
from precision_suite.measure.loop import one_line
from precision_suite.results import failed_record, set_placement

SLURM_EXTRA = 'pip install "precision-suite[slurm]"'
POLL_S = 0.5
# How often the driver asks Slurm itself (squeue/scontrol) about jobs that have no result yet.
SLURM_QUERY_EVERY_S = 5.0
SLURM_COMMAND_TIMEOUT_S = 30.0
# A job Slurm says has ended may still be writing its result pickle (a shared file system lags).
RESULT_GRACE_S = 15.0
# submitit's default delay between its signal and Slurm's time limit, and Slurm's resolution in
# sending it (up to 60 s early): both kept free in the default time limit.
SUBMITIT_SIGNAL_DELAY_S = 90 + 60
STARTED_DIR = "started"
# How long a rank waits for rank 0's job file, and rank 0 for the other ranks' reports.
RANK_FILES_WAIT_S = 60.0
# Slurm states after which a job runs no more, and the record status each one gives.
ENDED_STATES = {
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "PREEMPTED": "timeout",
    "OUT_OF_MEMORY": "oom",
    "NODE_FAIL": "crashed",
    "BOOT_FAIL": "crashed",
    "CANCELLED": "crashed",
    "FAILED": "crashed",
    "COMPLETED": "crashed",  # ended, yet no result: the task died after its job
    "REVOKED": "crashed",
    # submitit's local executor: the controller process's end.
    "FINISHED": "crashed",
    "INTERRUPTED": "crashed",
}


# submitit's import runs logging.config.dictConfig unless this says NOCONFIG: that closes every
# logging handler of the process (logging.shutdown), and a handler that owns its stream closes it
# with it (absl's, which TensorFlow installs, closes the sys.stderr it was made with: under pytest,
# a capture file, which crashed the test run with "lost sys.stderr"). Its handlers would also keep
# the sys.stdout/sys.stderr of the moment of import for good.
SUBMITIT_LOG_ENV = "SUBMITIT_LOG_LEVEL"


def import_submitit() -> Any:
    """submitit, imported without configuring logging in this process (its warnings then reach the
    root logger's handlers); or a ConfigError naming the extra that brings it. A user's own
    SUBMITIT_LOG_LEVEL is kept. Every import of submitit in the driver goes through here."""
    unset = SUBMITIT_LOG_ENV not in os.environ
    if unset:
        os.environ[SUBMITIT_LOG_ENV] = "NOCONFIG"
    try:
        import submitit
    except ImportError:
        raise ConfigError(f'runner.executor: "slurm" needs submitit, which is not installed: {SLURM_EXTRA}') from None
    finally:
        if unset:  # not inherited by the jobs: on their nodes submitit logs to the task's log files
            del os.environ[SUBMITIT_LOG_ENV]
    return submitit


# ---------------------------------------------------------------- what a job asks for
def job_world_size(job: Job) -> int:
    return int(getattr(job, "world_size", 1) or 1)


def rank_per_process(job: Job) -> bool:
    """Whether the job's data-parallel implementation runs one process per replica (torch DDP,
    tf-keras multi-worker), so that Slurm can start its ranks as tasks."""
    from precision_suite.plan import data_parallel_class

    cls = data_parallel_class(job)
    return cls is not None and cls.process_per_replica


@dataclass(frozen=True)
class SlurmResources:
    """What one job asks Slurm for: ``nodes`` × ``tasks_per_node`` tasks (one task per job, except a
    data-parallel job spread over nodes: one task per rank), CPUs and GPUs per node, exclusivity."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    exclusive: bool

    @classmethod
    def of(cls, job: Job, config: SuiteConfig) -> SlurmResources:
        settings = config.runner.slurm
        world = job_world_size(job)
        on_gpu = job.device == "cuda" or (job.device == "auto" and settings.gpus_per_node is not None)
        exclusive = job.timed and settings.exclusive_timing
        per_node = settings.tasks_per_node
        if per_node is None and on_gpu and settings.gpus_per_node is not None and world > settings.gpus_per_node:
            per_node = settings.gpus_per_node
        if world > 1 and per_node is not None and rank_per_process(job):
            nodes = math.ceil(world / per_node)
            if world % nodes:
                raise ConfigError(
                    f"runner.slurm: {job.job_id} has {world} replicas, which do not split evenly over {nodes} "
                    f"nodes of {per_node} ranks; choose a world size that is a multiple of the nodes"
                )
            ranks = world // nodes
            return cls(nodes, ranks, settings.cpus_per_task, ranks if on_gpu else 0, exclusive)
        return cls(1, 1, settings.cpus_per_task * world, world if on_gpu else 0, exclusive)

    @property
    def multi_task(self) -> bool:
        return self.nodes * self.tasks_per_node > 1

    def parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` arguments for these resources."""
        params = {"nodes": self.nodes, "tasks_per_node": self.tasks_per_node, "cpus_per_task": self.cpus_per_task}
        if self.gpus_per_node:  # no --gpus-per-node=0: a partition without GRES may refuse any GPU option
            params["gpus_per_node"] = self.gpus_per_node
        return params


def default_timeout_min(config: SuiteConfig) -> float:
    """Slurm's time limit of a job when ``runner.slurm.timeout_min`` is null: the job's own timeout,
    its worker's start-up, and submitit's signal delay."""
    return math.ceil((config.runner.job_timeout_s + WORKER_START_TIMEOUT_S + SUBMITIT_SIGNAL_DELAY_S) / 60)


# What submitit's local executor takes besides the shared names (its update_parameters docstring).
LOCAL_PARAMETERS = frozenset({"signal_delay_s", "visible_gpus", "setup", "stderr_to_stdout"})


def executor_parameters(config: SuiteConfig, resources: SlurmResources, name: str) -> dict[str, Any]:
    """Everything one array's executor gets: for Slurm, ``AutoExecutor.update_parameters``'
    shared names and the Slurm ones prefixed ``slurm_`` (as AutoExecutor wants them); for the
    local cluster, ``LocalExecutor.update_parameters``' own (it takes fractions of a minute)."""
    settings = config.runner.slurm
    timeout_min = settings.timeout_min or default_timeout_min(config)
    if settings.cluster == "local":
        local = {"timeout_min": timeout_min, "tasks_per_node": resources.tasks_per_node, "nodes": 1}
        return {**local, "gpus_per_node": resources.gpus_per_node, **settings.extra}
    params: dict[str, Any] = {"name": name, **resources.parameters(), "timeout_min": math.ceil(timeout_min)}
    if settings.mem_gb is not None:
        params["mem_gb"] = settings.mem_gb
    params["slurm_array_parallelism"] = settings.array_parallelism
    for key in ("partition", "account", "qos"):
        if getattr(settings, key) is not None:
            params[f"slurm_{key}"] = getattr(settings, key)
    if resources.exclusive:
        params["slurm_exclusive"] = True
    # A rank that fails ends its job's other ranks at once (they would wait on its collectives).
    if resources.multi_task:
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    params.update({f"slurm_{key}": value for key, value in settings.extra.items()})
    return params


def check_extra(config: SuiteConfig) -> None:
    """``runner.slurm.extra`` names only parameters submitit's executor of the cluster knows."""
    settings = config.runner.slurm
    known = LOCAL_PARAMETERS if settings.cluster == "local" else import_submitit().SlurmExecutor._valid_parameters()
    unknown = sorted(set(settings.extra) - known)
    if unknown:
        raise ConfigError(
            f"runner.slurm.extra: unknown submitit parameter {unknown[0]!r} for cluster {settings.cluster}; "
            f"known: {', '.join(sorted(known))}"
        )


# ---------------------------------------------------------------- on the node
def _slug(job_id: str) -> str:
    return job_id.replace("/", "__")


def node_placement(job: Job, gpus_requested: int) -> Placement:
    """Where this task runs, from submitit's job environment and Slurm's variables."""
    import submitit

    env = submitit.JobEnvironment()
    # Slurm sets CUDA_VISIBLE_DEVICES only for jobs that hold GPUs; a CPU job must not see (and
    # with device "auto", pick) a GPU another job holds.
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES") if gpus_requested else ""
    gpu_ids = os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS") or ""
    node = os.environ.get("SLURMD_NODENAME") or platform.node()
    return Placement(
        executor="slurm",
        node_id=node,
        hostname=platform.node(),
        timed=job.timed,
        cuda_visible_devices=cuda_visible,
        gpus=list(visible_gpus(cuda_visible)),
        gpu_ids=[g for g in gpu_ids.split(",") if g] if gpus_requested else [],
        slurm_job_id=str(env.job_id),
        started_at=time.time(),
    )


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.rename(path)


def run_job_on_node(job: Job, config: SuiteConfig, run_log_dir: str, board_dir: str, gpus: int) -> dict[str, Any]:
    """The body of a job's array task: run the job in a fresh worker process on this node and
    return its record, with where it ran."""
    placement = node_placement(job, gpus)
    board = Path(board_dir)
    board.mkdir(parents=True, exist_ok=True)
    _write_json(board / f"{_slug(job.job_id)}.json", placement.to_dict())
    log_dir = Path(run_log_dir) / _slug(job.job_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    executor = Executor(config, Path(run_log_dir), log_dir=log_dir)
    executor.env["CUDA_VISIBLE_DEVICES"] = placement.cuda_visible_devices or ""
    try:
        record = executor.run(job, lambda step, total: None)
    finally:
        # Also on submitit's time-limit signal (raised here): no worker outlives its task.
        executor.kill_all()
        placement.finished_at = time.time()
    return set_placement(record, placement.to_dict())


def rank_environment(job_env: Any, port: int) -> dict[str, str]:
    """The rendezvous of one rank of a data-parallel job spread over Slurm tasks: torch's env://
    variables (submitit's ``TorchDistributedEnvironment``: the first node of the job, a port
    derived from the job id) and TensorFlow's TF_CONFIG (one worker per task, on its node). One
    node: everything on 127.0.0.1."""
    hosts = list(job_env.hostnames)
    per_node = max(1, job_env.num_tasks // max(1, job_env.num_nodes))
    one_node = job_env.num_nodes == 1
    master = "127.0.0.1" if one_node else hosts[0]
    workers = [
        f"{'127.0.0.1' if one_node else hosts[rank // per_node]}:{port + 1 + rank}" for rank in range(job_env.num_tasks)
    ]
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": job_env.global_rank}}
    env = {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(per_node),
        "TF_CONFIG": json.dumps(tf_config),
    }
    if one_node:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def run_rank_on_node(job: Job, config: SuiteConfig, run_log_dir: str, board_dir: str, gpus: int) -> Any:
    """The body of one task of a data-parallel job spread over Slurm tasks: this task's rank of
    the job (``python -m precision_suite.execution.data_parallel``, as the suite's launcher starts it). Rank 0
    returns the job's record, the other ranks None. Every rank of a node sees the node's GPUs
    (torch picks ``LOCAL_RANK``'s); a CPU job sees none."""
    import submitit
    from precision_suite.execution import data_parallel as distributed
    from precision_suite.execution.local import worker_environment
    from submitit.helpers import TorchDistributedEnvironment

    job_env = submitit.JobEnvironment()
    rank = job_env.global_rank
    placement = node_placement(job, gpus)
    work = Path(board_dir).parent / "ranks" / str(job_env.job_id)
    work.mkdir(parents=True, exist_ok=True)
    job_path, result_path = work / "job.json", work / "record.json"
    if rank == 0:
        Path(board_dir).mkdir(parents=True, exist_ok=True)
        _write_json(Path(board_dir) / f"{_slug(job.job_id)}.json", placement.to_dict())
        _write_json(job_path, job.to_dict())
    env = worker_environment(config, config.runner.threads or config.runner.slurm.cpus_per_task)
    env.update(rank_environment(job_env, TorchDistributedEnvironment().master_port))
    env.update({distributed.RESULT_FILE_ENV: str(result_path), distributed.REPLICAS_ENV: str(job.world_size)})
    env["CUDA_VISIBLE_DEVICES"] = placement.cuda_visible_devices or ""
    deadline = time.monotonic() + RANK_FILES_WAIT_S
    while not job_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = Path(run_log_dir) / f"{_slug(job.job_id)}.rank{rank}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = config.runner.job_timeout_s
    proc = distributed.start_rank(job_path, log, env)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rank != 0:
        return None
    placement.finished_at = time.time()
    if code is None:
        message = f"exceeded runner.job_timeout_s={timeout_s:g}s over {job.world_size} replicas; rank 0 killed"
        record = failed_record(job, "timeout", message)
    elif not result_path.exists():
        message = f"rank 0 of {job.world_size} {exit_text(code)} and no record"
        record = failed_record(job, "crashed", message, stderr_tail=log_tail(log))
    else:
        record = json.loads(result_path.read_text())
        _add_other_ranks(record, result_path, job_env.num_tasks, job.world_size)
    return set_placement(record, placement.to_dict())


def _add_other_ranks(record: dict[str, Any], result_path: Path, tasks: int, world_size: int) -> None:
    """Where each process could only report its own replicas, the other ranks wrote theirs beside
    the record (``precision_suite.execution.data_parallel``); they may still be writing them."""
    report = record.get("distributed") or {}
    replicas = report.get("replicas") or []
    if len(replicas) >= world_size or record.get("status") not in ("ok", "diverged"):
        return
    paths = [result_path.with_name(f"replicas.rank{other}.json") for other in range(1, tasks)]
    deadline = time.monotonic() + RANK_FILES_WAIT_S
    while not all(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.2)
    for path in paths:
        if path.exists():
            replicas.extend(json.loads(path.read_text()))
    report["replicas"] = sorted(replicas, key=lambda r: r.get("rank", 0))
    record["distributed"] = report


# ---------------------------------------------------------------- the driver
@dataclass
class _Submitted:
    job: Job
    handle: Any  # a submitit Job
    resources: SlurmResources
    ended_seen_at: float | None = None  # driver clock: when Slurm first said it ended
    slurm_state: str = ""
    node_list: str = ""

    @property
    def rank0(self) -> Any:
        """The submitit job of the task that returns the record (the job itself unless it has
        several tasks: a data-parallel job whose ranks are tasks)."""
        return self.handle.task(0)


@dataclass
class SlurmExecutor:
    """Runs jobs as Slurm array tasks through submitit; see the module docstring."""

    config: SuiteConfig
    out_dir: Path
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.submitit = import_submitit()
        settings = self.config.runner.slurm
        self.out_dir = self.out_dir.resolve()
        if settings.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError(
                'runner.slurm.cluster: "slurm" needs sbatch, which is not on this machine\'s PATH '
                '(submit from a Slurm login node, or use cluster "local" to run the jobs here)'
            )
        check_extra(self.config)
        self.folder = (
            Path(settings.folder).expanduser().resolve() if settings.folder else self.out_dir / "logs" / "slurm"
        )
        self.board_dir = self.folder / STARTED_DIR
        self.outstanding: list[_Submitted] = []
        self.waiting: list[Job] = []  # cluster local: admitted by the driver, not yet submitted
        self.refused: list[dict[str, Any]] = []  # records of jobs sbatch refused, not yet yielded
        self.spans: dict[str, list[tuple[float, float, bool]]] = {}  # finished jobs by node: (start, end, timed)
        self._last_query = 0.0

    # -- submission
    def _executor(self, resources: SlurmResources, name: str) -> Any:
        if self.config.runner.slurm.cluster == "local":
            executor = self.submitit.LocalExecutor(folder=self.folder / "%j")
        else:
            executor = self.submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        try:
            executor.update_parameters(**executor_parameters(self.config, resources, name))
        except (NameError, ValueError, AssertionError) as exc:
            raise ConfigError(f"runner.slurm: submitit rejects the parameters: {one_line(exc)}") from None
        return executor

    def _task_config(self, resources: SlurmResources) -> SuiteConfig:
        runner = self.config.runner
        threads = runner.threads or resources.cpus_per_task
        return self.config.model_copy(
            update={"runner": runner.model_copy(update={"isolation": "per-job", "threads": threads})}
        )

    def submit(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Submit ``jobs``, one array per kind of resources; returns the records of jobs that
        could not be submitted."""
        groups: dict[SlurmResources, list[Job]] = {}
        for job in jobs:
            groups.setdefault(SlurmResources.of(job, self.config), []).append(job)
        log_dir = str(self.out_dir / "logs" / "slurm-jobs")
        refused: list[dict[str, Any]] = []
        for resources, group in groups.items():
            name = "precision-suite" + ("-timed" if resources.exclusive else "")
            executor = self._executor(resources, name)
            body = run_rank_on_node if resources.multi_task else run_job_on_node
            config = self._task_config(resources)
            gpus = resources.gpus_per_node
            try:
                with executor.batch():
                    handles = [executor.submit(body, job, config, log_dir, str(self.board_dir), gpus) for job in group]
            except Exception as exc:  # sbatch's refusal (a partition, a limit) is each job's record
                message = f"Slurm refused the array: {one_line(exc)}"
                refused.extend(failed_record(job, "error", message) for job in group)
                continue
            self.outstanding.extend(
                _Submitted(job, handle, resources) for job, handle in zip(group, handles, strict=True)
            )
        return refused

    def _admit_locally(self) -> None:
        """cluster local: start waiting jobs as a reader-writer lock allows (see the module docstring)."""
        limit = self.config.runner.slurm.array_parallelism
        while self.waiting:
            running = [s.job for s in self.outstanding]
            job = self.waiting[0]
            if any(j.timed for j in running) or (job.timed and running) or len(running) >= limit:
                return
            self.waiting.pop(0)
            self.refused.extend(self.submit([job]))

    def run_jobs(self, jobs: list[Job], progress: JobProgressFn) -> Iterator[dict[str, Any]]:
        """Submit ``jobs``, then yield records in the order the jobs finish."""
        if self.config.runner.slurm.cluster == "local":
            self.waiting.extend(jobs)
            self._admit_locally()
        else:
            self.refused.extend(self.submit(jobs))
        while self.outstanding or self.waiting or self.refused:
            while self.refused:
                yield self.refused.pop(0)
            for submitted in self._finished():
                self.outstanding.remove(submitted)
                yield self._record(submitted)
            if self.config.runner.slurm.cluster == "local":
                self._admit_locally()
            if self.outstanding:
                time.sleep(POLL_S)

    # -- watching
    def _finished(self) -> list[_Submitted]:
        done = [s for s in self.outstanding if s.rank0.paths.result_pickle.exists()]
        if self.config.runner.slurm.cluster == "local":
            done += [s for s in self.outstanding if s not in done and s.handle.done()]
            for submitted in done:
                submitted.slurm_state = submitted.slurm_state or str(submitted.handle.state)
            return done
        now = time.monotonic()
        if now - self._last_query >= SLURM_QUERY_EVERY_S:
            self._last_query = now
            states = slurm_states(sorted({s.handle.job_id.split("_")[0] for s in self.outstanding}))
            for submitted in self.outstanding:
                array_id = submitted.handle.job_id.split("_")[0]
                state, nodes = states.get(submitted.handle.job_id, ("", ""))
                if not state and array_id in states:
                    state = "PENDING"  # a pending array is one line for all its tasks ("0-7%2")
                elif not state:
                    try:
                        state = str(submitted.handle.state)  # sacct, where accounting is on
                    except Exception:
                        state = "UNKNOWN"
                submitted.slurm_state, submitted.node_list = state, nodes or submitted.node_list
                ended = state.split()[0].upper() in ENDED_STATES if state else False
                if not ended:
                    submitted.ended_seen_at = None  # requeued (preempted): it runs again
                elif submitted.ended_seen_at is None:
                    submitted.ended_seen_at = now
        return done + [
            s
            for s in self.outstanding
            if s not in done and s.ended_seen_at is not None and now - s.ended_seen_at > RESULT_GRACE_S
        ]

    def _started(self, job: Job) -> dict[str, Any] | None:
        path = self.board_dir / f"{_slug(job.job_id)}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _concurrency(self, job: Job, placement: dict[str, Any]) -> None:
        """How many of this run's jobs (timed ones, and of any kind) shared the node while ``job``
        ran, itself included: from the finished jobs' spans and the running ones' start markers."""
        node = placement.get("node_id")
        start, end = placement.get("started_at"), placement.get("finished_at")
        if start is None or end is None:
            return
        spans = list(self.spans.get(node, []))  # (start, end, timed)
        for other in self.outstanding:
            started = self._started(other.job) if other.job.job_id != job.job_id else None
            if started and started.get("node_id") == node:
                spans.append((started["started_at"], float("inf"), bool(started.get("timed"))))
        spans.append((start, end, job.timed))
        placement["concurrent_jobs_on_node"] = most_at_once([[a, b] for a, b, _ in spans], start, end)
        timed = [[a, b] for a, b, is_timed in spans if is_timed]
        placement["concurrent_timed_jobs_on_node"] = most_at_once(timed, start, end) if job.timed else 0
        self.spans.setdefault(node, []).append((start, end, job.timed))

    def _record(self, submitted: _Submitted) -> dict[str, Any]:
        job, handle = submitted.job, submitted.handle
        where = (
            f"Slurm job {handle.job_id}"
            if self.config.runner.slurm.cluster == "slurm"
            else f"local job {handle.job_id}"
        )
        result: Any = None
        outcome = "missing"
        if submitted.rank0.paths.result_pickle.exists():
            try:
                outcome, result = self.submitit.core.utils.pickle_load(submitted.rank0.paths.result_pickle)
            except Exception as exc:
                outcome, result = "error", f"unreadable result: {one_line(exc)}"
        if outcome == "success" and isinstance(result, dict) and "status" in result:
            record = result
        else:
            record = self._failure(submitted, where, outcome, result)
        placement = record.get("placement") or self._started(job)
        if placement is None and (submitted.node_list or submitted.slurm_state):
            placement = Placement("slurm", submitted.node_list, submitted.node_list, job.timed, None).to_dict()
            placement["concurrent_jobs_on_node"] = 0
        if placement is not None:
            placement["slurm_job_id"] = placement.get("slurm_job_id") or handle.job_id
            if placement.get("finished_at") is None and placement.get("started_at") is not None:
                placement["finished_at"] = time.time()  # the task never said: when the driver gave it up
            self._concurrency(job, placement)
            set_placement(record, placement)
        return record

    def _failure(self, submitted: _Submitted, where: str, outcome: str, result: Any) -> dict[str, Any]:
        """The record of a job whose task returned no record: submitit's trace, or Slurm's state."""
        job = submitted.job
        state = (submitted.slurm_state or "UNKNOWN").split()[0].upper()
        node = f" on {submitted.node_list}" if submitted.node_list else ""
        if outcome == "error":
            trace = str(result)
            if "timed-out" in trace or "has timed out" in trace:
                limit = self.config.runner.slurm.timeout_min or default_timeout_min(self.config)
                message = (
                    f"{where}{node} reached its time limit (runner.slurm.timeout_min={limit:g}): stopped by "
                    f"submitit's signal before the end, not requeued (Slurm state then: {state})"
                )
                return failed_record(job, "timeout", message)
            last = [ln for ln in trace.strip().splitlines() if ln.strip()]
            message = f"{where}{node} failed (state {state}): {last[-1] if last else ''}"
            return failed_record(job, "crashed", message, stderr_tail="\n".join(last[-STDERR_TAIL_LINES:]))
        if outcome == "success":  # not a record: cannot come from the suite's task bodies
            return failed_record(job, "crashed", f"{where}{node} returned no record: {str(result)[:200]!r}")
        status = ENDED_STATES.get(state, "crashed")
        message = f"{where}{node} ended with no result: Slurm state {state}"
        return failed_record(job, status, message, stderr_tail=log_tail(submitted.rank0.paths.stderr) or None)

    # -- stopping
    def kill_all(self) -> None:
        """Cancel every outstanding job (Ctrl-C): each array once, by its array id."""
        self.waiting.clear()
        self.refused.clear()
        if self.config.runner.slurm.cluster == "slurm":
            arrays = sorted({s.handle.job_id.split("_")[0] for s in self.outstanding})
            if arrays:
                try:
                    subprocess.check_output(["scancel", *arrays], timeout=SLURM_COMMAND_TIMEOUT_S)
                except (OSError, subprocess.SubprocessError) as exc:
                    self.warnings.append(f"scancel {' '.join(arrays)} failed: {one_line(exc)}; cancel them by hand")
        else:
            for submitted in self.outstanding:
                try:
                    submitted.handle.cancel(check=False)
                except Exception:  # already finished: nothing left to stop
                    pass
            for submitted in self.outstanding:
                process = getattr(submitted.handle, "_process", None)
                if process is not None:
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
        self.outstanding.clear()

    def close(self) -> None:
        self.kill_all()


def slurm_states(array_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Slurm's state and node list of every task of these jobs/arrays, by submitit's job id
    ("<array>_<task>", or the plain id), from ``scontrol show job`` (which works without
    accounting, for jobs that ended within Slurm's MinJobAge). Empty where Slurm does not answer."""
    states: dict[str, tuple[str, str]] = {}
    for array_id in array_ids:
        try:
            out = subprocess.check_output(
                ["scontrol", "show", "job", "-o", array_id], timeout=SLURM_COMMAND_TIMEOUT_S, stderr=subprocess.DEVNULL
            )
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.decode(errors="replace").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "JobId" not in fields:
                continue
            key = fields["JobId"]
            if fields.get("ArrayTaskId") and fields.get("ArrayJobId"):
                key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            nodes = fields.get("NodeList", "")
            states[key] = (fields.get("JobState", ""), "" if nodes == "(null)" else nodes)
            states.setdefault(array_id, ("", ""))  # Slurm knows the job, in some state
    return states
