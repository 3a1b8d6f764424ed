"""Data-parallel torch backends (DDP over gloo on the loopback interface, real processes): an
overflow on one rank is skipped by every rank; a dying rank ends the job `crashed` naming the
rank; a hung collective ends `timeout`; no rank is left running; fp32 over two ranks matches the
one-process reference the suite plans for it — for a BatchNorm model too, checked against a
textbook two-rank DDP loop written here with torch's own ``DistributedDataParallel``."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from precision_suite.config import validate
from precision_suite.plan import expand_jobs

from tests.helpers.data_parallel import (
    assert_replicas_consistent,
    dp_config,
    dp_job,
    rank_processes_left,
    run_dp,
)
from tests.helpers.marks import TOLERANCES, needs_torch

pytestmark = needs_torch
INF_ON_RANK_1 = {"debug_fault_injection": {"kind": "inf_grad", "rank": 1, "steps": [3, 7]}}
SMALL_CNN = {"kind": "cnn", "channels": [8, 16], "dense": 32}
TEXTBOOK_TIMEOUT_S = 240

# The textbook loop: each rank trains the suite's CNN (same initial weights, same batch plan at
# the global batch) on its contiguous slice of every step's rows under torch's own DDP, Adam as
# torch ships it; rank 0 writes the mean loss over the ranks per step. "same slice" is the
# positive control: every rank trains replica 0's slice, a data-parallel run that is wrong.
TEXTBOOK_DDP = textwrap.dedent(
    """
    import json, os, sys
    from datetime import timedelta
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from precision_suite.backends.torch.models import build_torch_model
    from precision_suite.data import batch_plan, load_dataset
    from precision_suite.jobs import Job
    from precision_suite.models import init_weights, prepare_inputs

    job = Job.from_dict(json.loads(open(sys.argv[1]).read()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    data = load_dataset(job.data)
    x, y = torch.from_numpy(prepare_inputs(job.model, data.x_train)), torch.from_numpy(data.y_train).long()
    per = job.train.batch_size
    plan = batch_plan(len(data.y_train), per * world, job.seed, job.train.epochs, job.train.steps)
    curves = {}
    for mode in ("contiguous slices", "same slice"):
        weights = init_weights(job.model, data.input_shape, data.num_classes, job.seed)
        model = DistributedDataParallel(build_torch_model(job.model, data.input_shape, data.num_classes, weights))
        opt = torch.optim.Adam(model.parameters(), lr=job.train.optimizer.lr)
        losses = []
        for _, rows in plan:
            start = (rank if mode == "contiguous slices" else 0) * per
            mine = torch.from_numpy(rows[start : start + per])
            loss = F.cross_entropy(model(x[mine]), y[mine])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(float(total) / world)
        curves[mode] = losses
    if rank == 0:
        open(sys.argv[2], "w").write(json.dumps(curves))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def _cnn_jobs(steps: int = 10) -> dict[str, object]:
    """The planned jobs of the small CNN over 1 and 2 replicas, by role: the plain one-process
    job, the two-replica job and the one-process reference the suite plans for it."""
    raw = dp_config("torch-amp", "fp32", world_size=[1, 2], steps=steps)
    raw["models"] = [SMALL_CNN]
    raw["parity"] = {"noise_floor_runs": False}
    jobs = expand_jobs(validate(raw, "test"), "cpu")
    return {
        "single": next(j for j in jobs if j.world_size == 1 and not j.role),
        "replicas": next(j for j in jobs if j.world_size == 2),
        "reference": next(j for j in jobs if j.role == "dp-reference"),
    }


def _textbook_ddp(job, tmp_path: Path) -> dict[str, list[float]]:
    """Per-step losses of the textbook two-rank DDP loop over ``job`` (two gloo processes on
    127.0.0.1, one process group of their own, killed as a whole if they overrun)."""
    from precision_suite.execution.data_parallel import free_port

    job_path, out_path = tmp_path / "job.json", tmp_path / "textbook.json"
    job_path.write_text(json.dumps(job.to_dict()))
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE="2",
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
    )
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", TEXTBOOK_DDP, str(job_path), str(out_path)],
                    env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    process_group=procs[0].pid if procs else 0,
                )
            )
        outputs = [proc.communicate(timeout=TEXTBOOK_TIMEOUT_S)[0] for proc in procs]
    finally:
        if procs:
            try:
                os.killpg(procs[0].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for proc in procs:
                proc.wait(timeout=10)
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    return json.loads(out_path.read_text())


def _curve_record(job, curve: list[float]) -> dict[str, object]:
    """A result record of ``job`` with ``curve`` as its losses: a run outside the suite, judged
    by the suite's verdict."""
    from precision_suite.results import new_record

    record = new_record(job)
    record.update(status="ok", world_size=job.world_size, curves={"train_loss": curve})
    record["distributed"] = {"batchnorm": "per-replica statistics"}
    return record


def test_the_one_process_reference_of_a_batchnorm_model_equals_a_textbook_ddp_loop(tmp_path):
    from precision_suite.measure.loop import run_job
    from precision_suite.verdicts.data_parallel import data_parallel

    jobs = _cnn_jobs()
    textbook = _textbook_ddp(jobs["replicas"], tmp_path)
    reference = run_job(jobs["reference"])
    assert reference["status"] == "ok", reference.get("error")
    ddp = np.array(textbook["contiguous slices"])
    ours = np.array(reference["curves"]["train_loss"])
    assert len(ours) == len(ddp) == 10
    # Step by step, every step: the same computation (each slice's forward pass on its own, the
    # slices' gradients summed), up to float rounding of the mean loss.
    np.testing.assert_allclose(ours, ddp, **TOLERANCES["float32"])
    # The one-process run at the whole global batch is not it: BatchNorm over all 32 rows.
    whole_batch = jobs["reference"].train.model_copy(update={"grad_accumulation": 1})
    whole = run_job(replace(jobs["reference"], job_id=f"{jobs['replicas'].job_id}/whole", train=whole_batch))
    assert abs(whole["curves"]["train_loss"][0] / ddp[0] - 1) > 1e-5
    # The suite's verdict: the textbook run passes against the reference, ...
    outcome, detail = data_parallel([_curve_record(jobs["replicas"], list(ddp))], [reference])
    assert outcome == "pass", detail
    # ... a run whose replicas all train replica 0's slice fails (positive control), ...
    wrong = _curve_record(jobs["replicas"], textbook["same slice"])
    outcome, detail = data_parallel([wrong], [reference])
    assert outcome == "fail" and "seed 0" in detail, detail
    # ... and against the whole-batch run alone, a correct run is n/a with the reason, never FAIL.
    outcome, detail = data_parallel([_curve_record(jobs["replicas"], list(ddp))], [whole])
    assert outcome == "n/a" and "own slice's statistics" in detail, detail


@pytest.mark.parametrize("backend", ["torch-amp", pytest.param("torch-manual", marks=pytest.mark.slow)])
def test_overflow_on_one_rank_is_skipped_by_every_rank(tmp_path, backend):
    record = run_dp(dp_job(backend, "fp16-mixed", **INF_ON_RANK_1), tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert_replicas_consistent(record, [3, 7])
    # Two backoffs from 2^16; nothing non-finite reached the weights.
    assert record["metrics"]["loss_scale_final"] == 2.0**14
    assert math.isfinite(record["metrics"]["test_loss"])
    assert record["distributed"]["global_batch_size"] == 32
    assert not rank_processes_left()


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_job_crashed_naming_it(tmp_path):
    job = dp_job("torch-amp", "fp32", debug_fault_injection={"kind": "crash", "rank": 1, "steps": [4]})
    record = run_dp(job, tmp_path)
    assert record["status"] == "crashed"
    assert record["error"].startswith("rank 1 of 2 killed by SIGKILL")
    assert not rank_processes_left()


@pytest.mark.slow
def test_a_hung_collective_ends_as_timeout_with_nothing_left_running(tmp_path):
    job = dp_job("torch-amp", "fp32", debug_fault_injection={"kind": "hang", "rank": 0, "steps": [4]})
    record = run_dp(job, tmp_path, timeout_s=25)
    assert record["status"] == "timeout"
    assert "every rank killed" in record["error"]
    assert not rank_processes_left()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "batchnorm"), [({"kind": "mlp", "hidden": [32]}, "none"), (SMALL_CNN, "per-replica statistics")]
)
def test_fp32_over_two_ranks_passes_the_data_parallel_verdict_against_the_planned_reference(tmp_path, model, batchnorm):
    from precision_suite.measure.loop import run_job
    from precision_suite.verdicts.data_parallel import data_parallel

    raw = dp_config("torch-amp", "fp32", world_size=[1, 2], steps=20)
    raw["models"] = [model]
    jobs = expand_jobs(validate(raw, "test"), "cpu")
    record = run_dp(next(j for j in jobs if j.world_size == 2), tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert record["distributed"]["batchnorm"] == batchnorm
    assert_replicas_consistent(record, [])
    reference = run_job(next(j for j in jobs if j.role == "dp-reference" and not j.perturb_ulp))
    ours, theirs = np.array(record["curves"]["train_loss"]), np.array(reference["curves"]["train_loss"])
    assert len(ours) == len(theirs) == 20
    np.testing.assert_allclose(ours[:10], theirs[:10], **TOLERANCES["float32"])
    outcome, detail = data_parallel([record], [reference])
    assert outcome == "pass", detail
