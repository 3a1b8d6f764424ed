"""Data-parallel jobs: one job over N replicas, launched the way the frameworks' own tools do it.

``distributed.world_size: N`` (a list sweeps sizes) runs each job at a fixed *per-replica*
batch ``train.batch_size``: the global batch is N × batch_size (weak scaling). Every step's
global batch is the single-process batch plan's step at that global batch size
(``precision_suite.data.batch_plan``), split into N contiguous slices, slice r for replica r, so
the union of a step's rows is exactly the one-process step's rows.

* PyTorch backends: N processes, launched as ``torchrun`` does (``MASTER_ADDR=127.0.0.1``, a
  free ``MASTER_PORT`` chosen now, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; gloo on the
  loopback interface on CPU, nccl on CUDA), ``DistributedDataParallel``
  (``backends/torch/distributed.py``).
* tf-keras: one process, ``tf.distribute.MirroredStrategy`` over N logical CPU devices (N GPUs
  on a GPU node), the backend's own compiled step under ``strategy.run``
  (``backends/keras/distributed.py``).

BatchNorm: every replica normalises its own slice with that slice's statistics, as DDP does
without ``SyncBatchNorm`` and tf.distribute does with Keras' ``BatchNormalization(synchronized=False)``
(``record["distributed"]["batchnorm"]``: ``results.BATCHNORM_PER_REPLICA``). Replica 0's running
statistics follow its own slices only (DDP: rank 0's buffers; tf.distribute: the Keras variables
of the running statistics have no aggregation, so each replica writes its own copy, and a read
outside the replicas' step, as evaluation does, gets replica 0's), and only replica 0 evaluates
into the record.

The ``data-parallel`` verdict compares an fp32 N-replica job with what it is supposed to equal,
``plan.replica_shards_reference``: one process, the same batch plan at the global batch, each step
trained as the N replicas' contiguous slices one after the other (micro-batches,
``train.grad_accumulation`` × N) with their gradients summed — what DDP's all-reduce computes. So
BatchNorm normalises each replica's slice on its own (a "ghost batch"), which no one-process run
at the whole global batch does.

Rank 0 (the only process for tf-keras) writes the record; every replica's skip decisions, final
loss scale and a digest of its parameters are gathered into ``record["distributed"]`` for the
``replica-consistency`` verdict. The launcher owns the processes: all ranks share one process
group that is killed as a whole; a rank that dies ends the job ``crashed`` naming the rank; a
job past ``runner.job_timeout_s`` (a hung collective) ends ``timeout``; nothing is left running.

Planning (the jobs per world size, which backend class runs a job over N replicas, what it
cannot run) is ``precision_suite.plan``'s. This module never imports a framework; ``main``
(``python -m precision_suite.execution.data_parallel``) is the rank process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precision_suite.execution.process import exit_text, kill_group, log_tail
from precision_suite.plan import data_parallel_class, data_parallel_unavailable_reason
from precision_suite.results import failed_record

if TYPE_CHECKING:
    from precision_suite.jobs import Job

RESULT_FILE_ENV = "PRECISION_SUITE_DP_RESULT"
REPLICAS_ENV = "PRECISION_SUITE_DP_REPLICAS"
# Exit code of a rank whose job failed in Python (its record says why; rank 0 writes it).
RANK_JOB_FAILED = 3


# ---------------------------------------------------------------- in the rank processes
def global_batch_size(job: Job) -> int:
    return job.world_size * job.train.batch_size


def as_global_batch_job(job: Job) -> Job:
    """The job as the suite's loop runs it in a rank: the batch plan at the global batch (the
    backend takes its own slice of each step's rows)."""
    return replace(job, train=job.train.model_copy(update={"batch_size": global_batch_size(job)}))


def replica_slice(rank: int, per_replica: int) -> slice:
    """The columns of a global batch row that replica ``rank`` trains on."""
    return slice(rank * per_replica, (rank + 1) * per_replica)


def fault_steps(job: Job, replica: int, kind: str) -> frozenset[int]:
    """Steps at which the debug fault injection hits ``replica`` with ``kind`` (empty if none)."""
    fault = job.distributed.debug_fault_injection
    if fault is None or fault.kind != kind or fault.rank != replica:
        return frozenset()
    return frozenset(fault.steps)


@dataclass(frozen=True)
class ProcessFaults:
    """The debug faults that end or stall a whole process (``crash``, ``hang``) at a step."""

    crash_steps: frozenset[int] = frozenset()
    hang_steps: frozenset[int] = frozenset()

    @classmethod
    def for_replicas(cls, job: Job, replicas: range) -> ProcessFaults:
        crash = [fault_steps(job, r, "crash") for r in replicas]
        hang = [fault_steps(job, r, "hang") for r in replicas]
        return cls(frozenset().union(*crash), frozenset().union(*hang))

    def before_step(self, step: int) -> None:
        if step in self.crash_steps:
            os.kill(os.getpid(), signal.SIGKILL)
        if step in self.hang_steps:
            while True:  # stop answering collectives; the launcher's timeout ends the job
                time.sleep(60)


# ---------------------------------------------------------------- launcher
def free_port() -> int:
    """A TCP port free on the loopback interface now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_distributed(job: Job, timeout_s: float, log_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one data-parallel job to its record; never raises for a failure of the job."""
    reason = data_parallel_unavailable_reason(job)
    if reason:
        return _failed(job, "unavailable", reason)
    cls = data_parallel_class(job)
    n_procs = job.world_size if cls is not None and cls.process_per_replica else 1
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="precision-suite-dp-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job.to_dict()))
        result_path = Path(tmp) / "record.json"
        ranks = _Ranks()
        try:
            ranks.start(job, job_path, _ranks_environment(job, env, result_path, n_procs), n_procs, log_dir)
            first_death = ranks.wait(timeout_s)
        except TimeoutError:
            ranks.kill()
            return _failed(
                job,
                "timeout",
                f"exceeded runner.job_timeout_s={timeout_s:g}s over {job.world_size} replicas "
                "(a hung collective or a slow job); every rank killed",
            )
        except BaseException:
            if ranks.pgid:
                ranks.kill()
            raise
        if first_death is not None:
            # The others are now waiting on the dead rank's collectives: end them.
            time.sleep(0.5)
            ranks.kill()
        return _launch_record(job, ranks, first_death, result_path, n_procs)


def _launch_record(
    job: Job, ranks: _Ranks, first_death: tuple[int, int] | None, result_path: Path, n_procs: int
) -> dict[str, Any]:
    """The job's record once every rank has ended: rank 0's (with the other ranks' reports
    joined in), or, when a rank died or rank 0 wrote none, a failed record naming the rank."""
    record = json.loads(result_path.read_text()) if result_path.exists() else None
    if first_death is not None:
        rank, code = first_death
        if record is not None and code == RANK_JOB_FAILED and record.get("status") != "ok":
            return record  # rank 0's own record of the job's failure
        if code == RANK_JOB_FAILED:
            return _failed(job, "error", f"rank {rank} of {job.world_size}: job failed", log_tail(ranks.logs[rank]))
        message = f"rank {rank} of {job.world_size} {exit_text(code)}"
        return _failed(job, "crashed", message, log_tail(ranks.logs[rank]))
    if record is None:
        return _failed(job, "crashed", "rank 0 exited without writing the record", log_tail(ranks.logs[0]))
    _merge_rank_reports(record, result_path, n_procs)
    return record


def _failed(job: Job, status: str, message: str, tail: str = "") -> dict[str, Any]:
    """The record of a data-parallel job that produced none of its own (with the dead rank's log
    tail, when it has one)."""
    return failed_record(job, status, message, stderr_tail=tail or None, world_size=job.world_size)


def _ranks_environment(job: Job, env: dict[str, str], result_path: Path, n_procs: int) -> dict[str, str]:
    """What every rank process of the job gets in its environment (its rank's own variables aside)."""
    base_env = dict(env)
    base_env.update(
        {
            RESULT_FILE_ENV: str(result_path),
            REPLICAS_ENV: str(job.world_size),
            # torchrun's rendezvous variables; loopback only.
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(n_procs),
            "GLOO_SOCKET_IFNAME": "lo",
        }
    )
    if n_procs > 1:
        # runner.threads is per replica; left unset, the ranks share the cores.
        threads = str(job.runner.threads or max(1, int(base_env.get("PRECISION_SUITE_THREADS", "1")) // n_procs))
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PRECISION_SUITE_THREADS"):
            base_env[key] = threads
    return base_env


def start_rank(job_path: Path, log: Path, env: dict[str, str], process_group: int | None = None) -> subprocess.Popen:
    """One rank of a data-parallel job (``python -m precision_suite.execution.data_parallel
    JOB_PATH``, its rank and world in ``env``), its output in ``log``; ``process_group`` as
    ``subprocess.Popen`` takes it (0: a group of its own)."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "precision_suite.execution.data_parallel", str(job_path)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=process_group,
        )


@dataclass
class _Ranks:
    """The rank processes of one job, in one process group of their own (out of the terminal's
    foreground group): killed as a whole, never orphaned."""

    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    pgid: int = 0

    def start(self, job: Job, job_path: Path, base_env: dict[str, str], n_procs: int, log_dir: Path) -> None:
        slug = job.job_id.replace("/", "_")
        # tf.distribute's cluster (MultiWorkerMirroredStrategy): one loopback port per worker.
        workers = [f"127.0.0.1:{free_port()}" for _ in range(n_procs)]
        for rank in range(n_procs):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}
            rank_env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank), TF_CONFIG=json.dumps(tf_config))
            log = log_dir / f"{slug}.rank{rank}.log"
            self.logs.append(log)
            proc = start_rank(job_path, log, rank_env, process_group=self.pgid if rank else 0)
            if rank == 0:
                self.pgid = proc.pid
            self.procs.append(proc)

    def wait(self, timeout_s: float) -> tuple[int, int] | None:
        """Until every rank has exited (None) or one has failed: its (rank, exit code). Raises
        TimeoutError past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        first_death: tuple[int, int] | None = None
        while True:
            codes = [p.poll() for p in self.procs]
            if first_death is None:
                first_death = next(((r, c) for r, c in enumerate(codes) if c not in (None, 0)), None)
            if all(c is not None for c in codes) or first_death is not None:
                return first_death
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.05)

    def kill(self) -> None:
        kill_group(self.pgid, self.procs)


def _rank_report_path(result_path: Path, rank: int) -> Path:
    return result_path.with_name(f"replicas.rank{rank}.json")


def _merge_rank_reports(record: dict[str, Any], result_path: Path, n_procs: int) -> None:
    """Where each process could only report its own replicas (no cross-process gather in the
    framework), the launcher joins the ranks' reports into rank 0's record."""
    report = record.get("distributed") or {}
    replicas = report.get("replicas") or []
    if len(replicas) >= record.get("world_size", 1):
        return
    for rank in range(1, n_procs):
        path = _rank_report_path(result_path, rank)
        if path.exists():
            replicas.extend(json.loads(path.read_text()))
    report["replicas"] = sorted(replicas, key=lambda r: r.get("rank", 0))


# ---------------------------------------------------------------- rank process
def main() -> int:
    from precision_suite.execution.process import die_with_parent

    die_with_parent()
    from precision_suite.jobs import Job
    from precision_suite.measure.loop import one_line, run_job
    from precision_suite.results import jsonable

    job = Job.from_dict(json.loads(Path(sys.argv[1]).read_text()))
    rank = int(os.environ.get("RANK", "0"))
    cls = data_parallel_class(job)
    if cls is None:
        raise SystemExit(f"backend {job.backend} has no data-parallel implementation")
    cls.init_process(job)
    report: dict[str, Any] = {}

    def finish(backend: Any, record: dict[str, Any]) -> None:
        # A collective: only when every rank got here (a failed rank leaves instead, below).
        if record["status"] in ("ok", "diverged"):
            try:
                report.update(backend.replica_report())
            except Exception as exc:
                traceback.print_exc()
                record.update(status="error", error=f"replica report: {one_line(exc)}")

    record = run_job(as_global_batch_job(job), None, backend_cls=cls, finish=finish)
    ok = record["status"] in ("ok", "diverged")
    if not ok and rank != 0:
        # Leave at once: the other ranks are blocked on this one and the launcher ends them.
        print(f"rank {rank}: {record['status']}: {record['error']}", file=sys.stderr, flush=True)
        os._exit(RANK_JOB_FAILED)
    if ok:
        cls.shutdown_process()
    if rank != 0:
        path = _rank_report_path(Path(os.environ[RESULT_FILE_ENV]), rank)
        path.write_text(json.dumps(jsonable(report.get("replicas", []))))
    if rank == 0:
        _as_data_parallel_record(record, job, report)
        path = Path(os.environ[RESULT_FILE_ENV])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(jsonable(record), allow_nan=False))
        tmp.rename(path)
    sys.stdout.flush()
    sys.stderr.flush()
    # Past the process group's teardown nothing is left to run; skip the interpreter's exit,
    # where gloo's static destructors can abort.
    os._exit(0 if ok else RANK_JOB_FAILED)


def _as_data_parallel_record(record: dict[str, Any], job: Job, report: dict[str, Any]) -> None:
    """Rank 0's record of the job, which the loop ran as its global-batch job: the job's own id
    and config back, the world size, per-device throughput and the replicas' reports."""
    record["job_id"] = job.job_id
    record["config"] = job.to_dict()
    record["world_size"] = job.world_size
    samples_per_s = record["metrics"].get("samples_per_s")
    record["metrics"]["global_batch_size"] = global_batch_size(job)
    record["metrics"]["samples_per_s_per_device"] = samples_per_s / job.world_size if samples_per_s else None
    record["distributed"] = {
        "world_size": job.world_size,
        "per_replica_batch_size": job.train.batch_size,
        "global_batch_size": global_batch_size(job),
        **report,
    }


if __name__ == "__main__":
    sys.exit(main())
