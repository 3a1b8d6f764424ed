"""Where a job ran, and whether its timing had the node to itself.

Every record carries a ``placement``: the node, the GPUs the job was given (name and UUID), its
``CUDA_VISIBLE_DEVICES``, and how many timed jobs (and jobs of any kind) of the run shared the
node while it ran. Step times are only compared between records whose timing was exclusive and
that ran on the same device model (``precision_suite.verdicts.speed.speed_comparable``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from typing import Any

NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GpuInfo:
    index: str
    uuid: str
    name: str


@dataclass
class Placement:
    executor: str  # "local", "ray" or "slurm"
    node_id: str  # the Ray node id; Slurm's node name; the host name for the local executor
    hostname: str
    timed: bool  # the job's timing claimed its node (Job.timed)
    cuda_visible_devices: str | None  # as the job's worker saw it (None: unset)
    gpus: list[GpuInfo] = field(default_factory=list)  # the GPUs the worker could see
    node_ip: str | None = None
    gpu_ids: list[str] = field(default_factory=list)  # Ray's (or Slurm's) assignment
    slurm_job_id: str | None = None  # "<array job>_<task>" (or a plain job id) under Slurm
    # Most jobs of this run on the node at one time while this one ran, itself included.
    concurrent_timed_jobs_on_node: int = 0
    concurrent_jobs_on_node: int = 1
    started_at: float | None = None  # unix time on the node
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@cache
def visible_gpus(cuda_visible_devices: str | None) -> tuple[GpuInfo, ...]:
    """Name and UUID of each GPU a process with this ``CUDA_VISIBLE_DEVICES`` can use, from
    ``nvidia-smi`` (no framework import); empty without NVIDIA GPUs. An entry may be an index
    (``nvidia-smi``'s numbering, which is what Ray assigns) or a UUID (or its prefix)."""
    if cuda_visible_devices == "" or shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3:
            gpus.append(GpuInfo(*parts))
    if cuda_visible_devices is None:
        return tuple(gpus)
    wanted = [w.strip() for w in cuda_visible_devices.split(",") if w.strip()]
    return tuple(g for w in wanted for g in gpus if w == g.index or (w.startswith("GPU-") and g.uuid.startswith(w)))


def local_placement(timed: bool, started_at: float, finished_at: float, concurrent: int = 1) -> Placement:
    """Where a job of the local executor ran; ``concurrent``: the most jobs of the run at once
    while it ran (1 unless ``runner.parallel_jobs`` ran jobs side by side)."""
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return Placement(
        executor="local",
        node_id=platform.node(),
        hostname=platform.node(),
        timed=timed,
        cuda_visible_devices=cuda_visible,
        gpus=list(visible_gpus(cuda_visible)),
        concurrent_timed_jobs_on_node=int(timed),
        concurrent_jobs_on_node=concurrent,
        started_at=started_at,
        finished_at=finished_at,
    )
