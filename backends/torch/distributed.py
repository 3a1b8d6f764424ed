"""Data-parallel PyTorch: the torch backends under ``DistributedDataParallel``, one process per
replica (``precision_suite.execution.data_parallel`` launches them as torchrun does and owns their lifetime).

The job these classes receive has the *global* batch (the suite's loop walks the one-process
batch plan at that size); each rank keeps its slice of every step's rows
(``precision_suite.execution.data_parallel.replica_slice``). DDP all-reduces (averages) the gradients
during ``backward``, so every rank's loss scaler sees the same, already-reduced gradients: an
inf on one rank is an inf on all, and every rank makes the same skip decision (torch-amp's
``GradScaler.unscale_`` and torch-manual's on-device scaler alike). The loss telemetry is
all-reduced at each drain (not each step) into the global batch's mean loss, so every rank
takes the same divergence decision too.

BatchNorm: every rank normalises its own slice with that slice's statistics, on every device
(recorded as ``distributed.batchnorm``), as DDP does without ``SyncBatchNorm``: the same
computation as tf-keras' replicas, and one the one-process reference reproduces
(``precision_suite.plan.replica_shards_reference``). ``SyncBatchNorm`` is not used: it
only runs on GPU inputs, so a run's BatchNorm would depend on its device, and torch-manual's
fp32 hooks sit on the module objects that conversion replaces. No buffer broadcast per forward
pass (``broadcast_buffers``/``forward_sync_buffers=False``): each rank's running statistics
follow its own slices; rank 0's, the ones its evaluation and record use, are what DDP's default
broadcast would copy to the other ranks.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from precision_suite.backends.base import Telemetry
from precision_suite.backends.torch.amp import TorchAmpBackend
from precision_suite.backends.torch.base import to_plain
from precision_suite.backends.torch.manual import TorchManualBackend

if TYPE_CHECKING:
    from precision_suite.data import Dataset
    from precision_suite.jobs import Job


def parameter_digest(tensors: list[Any]) -> str:
    """sha256 of the tensors' bytes, in order: equal digests mean bit-identical values."""
    digest = hashlib.sha256()
    for tensor in tensors:
        plain = to_plain(tensor)
        array = plain["__bfloat16_bits__"] if isinstance(plain, dict) else plain
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class DdpMixin:
    """What DDP adds to a torch backend; mixed in before the backend class."""

    @classmethod
    def init_process(cls, job: Job) -> None:
        """Join the process group from torchrun's environment variables (before ``setup``)."""
        import torch
        import torch.distributed as dist

        device = cls.resolve_device(job.device)
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        # The collective timeout backs up the launcher's job timeout: a hung peer raises here.
        dist.init_process_group(
            "nccl" if device == "cuda" else "gloo", timeout=timedelta(seconds=job.runner.job_timeout_s)
        )

    @classmethod
    def shutdown_process(cls) -> None:
        """Barrier, then destroy the group: no rank tears down while another still talks."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def setup(self, job: Job, init_weights: dict[str, np.ndarray], data: Dataset) -> None:
        import torch
        import torch.distributed as dist
        from precision_suite.execution.data_parallel import ProcessFaults, fault_steps, replica_slice
        from precision_suite.results import BATCHNORM_NONE, BATCHNORM_PER_REPLICA
        from torch.nn.parallel import DistributedDataParallel

        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.rows = replica_slice(self.rank, job.train.batch_size // self.world_size)
        super().setup(job, init_weights, data)
        has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.batchnorm = BATCHNORM_PER_REPLICA if has_batchnorm else BATCHNORM_NONE
        # No buffer broadcast before each forward pass; torch 2.13 renamed the flag (the old name
        # warns). Equal at the start anyway: every rank loads the same initial weights.
        renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        self.forward_module = DistributedDataParallel(
            self.forward_module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            **{"forward_sync_buffers" if renamed else "broadcast_buffers": False},
        )
        self.step_index = 0
        self.local_scale: list[np.ndarray] = []
        self.local_skipped: list[np.ndarray] = []
        self.inf_steps = fault_steps(job, self.rank, "inf_grad")
        self.process_faults = ProcessFaults.for_replicas(job, range(self.rank, self.rank + 1))
        if self.inf_steps:
            first = next(iter(self.model.parameters()))
            # A tensor hook runs on the local gradient before DDP's reducer all-reduces it.
            first.register_hook(lambda g: g * float("inf") if self.step_index in self.inf_steps else g)

    def prepare_batches(self, rows: np.ndarray) -> Any:
        return super().prepare_batches(np.asarray(rows)[:, self.rows])

    def train_step(self, batch_indices: Any) -> None:
        self.process_faults.before_step(self.step_index)
        if isinstance(batch_indices, np.ndarray):
            batch_indices = self.prepare_batches(batch_indices[None])[0]
        super().train_step(batch_indices)
        self.step_index += 1

    def drain_telemetry(self) -> Telemetry:
        import torch
        import torch.distributed as dist

        local = super().drain_telemetry()
        self.local_scale.append(local.loss_scale)
        self.local_skipped.append(local.skipped)
        if len(local.loss) == 0:
            return local
        loss = torch.from_numpy(local.loss).to(self.device)
        dist.all_reduce(loss)  # every rank has the same per-step slice size: the sum / N is the mean
        mean = (loss / self.world_size).cpu().numpy()
        return Telemetry(loss=mean, loss_scale=local.loss_scale, skipped=local.skipped)

    def replica_report(self) -> dict[str, Any]:
        """Every rank's skip decisions, final loss scale and parameter digest (a collective:
        every rank calls it); with DDP's own timing of backward communication where it has it."""
        import torch.distributed as dist

        skipped = np.concatenate(self.local_skipped) if self.local_skipped else np.zeros(0, bool)
        scale = np.concatenate(self.local_scale) if self.local_scale else np.zeros(0)
        mine = {
            "rank": self.rank,
            "skipped_steps": [int(i) for i in np.flatnonzero(skipped)],
            "loss_scale_final": float(scale[-1]) if len(scale) else None,
            "params_sha256": parameter_digest(list(self.model.parameters()) + self._master_tensors()),
        }
        replicas: list[Any] = [None] * self.world_size
        dist.all_gather_object(replicas, mine)
        return {
            "launcher": "torchrun-style processes",
            "strategy": f"DistributedDataParallel ({dist.get_backend()})",
            "batchnorm": self.batchnorm,
            "replicas": replicas,
            **self._comm_timing(),
        }

    def _comm_timing(self) -> dict[str, Any]:
        """DDP's sampled backward compute/communication times (ns), where this build exposes them."""
        try:
            data = self.forward_module._get_ddp_logging_data()
        except Exception:  # a private API: absent or changed means not exposed
            return {}
        comm = data.get("avg_backward_comm_time")
        compute = data.get("avg_backward_compute_time")
        if not comm or not compute:
            return {}
        return {"backward_comm_ns": int(comm), "backward_compute_ns": int(compute)}


class DdpTorchAmpBackend(DdpMixin, TorchAmpBackend):
    pass


class DdpTorchManualBackend(DdpMixin, TorchManualBackend):
    pass
