"""A one-node Slurm cluster on 127.0.0.1 for a test: munged, slurmctld and slurmd (Debian's
slurm-wlm and munge) started in the foreground from a temporary folder with a minimal slurm.conf
(no accounting), and always stopped again with every job cancelled."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def missing_reason() -> str | None:
    """Why a one-node Slurm cannot start here, or None."""
    missing = [name for name in DAEMONS if _which(name) is None]
    if missing:
        return f"needs Debian's slurm-wlm and munge (missing: {', '.join(missing)}; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users only when started as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def slurm_conf(root: Path, cpus: int, memory_mb: int) -> str:
    return f"""\
ClusterName=precisionsuite
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(512, int(line.split()[1]) // 1024 - 1024)
    return 1024


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def one_node_slurm(root: Path) -> Iterator[dict[str, str]]:
    """Start the cluster in ``root``; yields the environment its clients need (``SLURM_CONF``)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged's socket must be reachable by every user
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, os.cpu_count() or 1, _memory_mb()))
    key = root / "munge.key"
    subprocess.run([_which("mungekey"), "-c", "-k", str(key), "-b", "1024"], check=True, timeout=30)
    key.chmod(0o600)
    env = {"SLURM_CONF": str(conf)}
    client_env = dict(os.environ, **env)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        commands = [
            [_which("munged"), "-F", "-f", f"--key-file={key}", f"--socket={root}/munge.socket"]
            + [f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            [_which("slurmctld"), "-D", "-i", "-f", str(conf)],
            [_which("slurmd"), "-D", "-f", str(conf), "-N", "localhost"],
        ]
        for command in commands:
            log = open(root / f"{Path(command[0]).name}.out", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=client_env))
            time.sleep(1.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited at start; see {root}")
            out = subprocess.run(
                [_which("sinfo"), "-h", "-o", "%T"], env=client_env, capture_output=True, text=True, timeout=30
            )
            if out.stdout.strip() == "idle":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Slurm node never became idle (sinfo: {out.stdout.strip()!r}); see {root}")
            time.sleep(0.5)
        yield env
    finally:
        if len(procs) == 3 and procs[1].poll() is None:
            subprocess.run([_which("scancel"), "--full", "--user=root"], env=client_env, timeout=30, check=False)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                queue = subprocess.run(
                    [_which("squeue"), "-h"], env=client_env, capture_output=True, text=True, timeout=30
                )
                if not queue.stdout.strip():
                    break
                time.sleep(0.5)
        _stop(procs)
        for log in logs:
            log.close()
