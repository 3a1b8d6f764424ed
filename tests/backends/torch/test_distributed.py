"""Data-parallel torch backends (DDP over gloo on the loopback interface, real processes): an
overflow on one rank is skipped by every rank; a dying rank ends the job `crashed` naming the
rank; a hung collective ends `timeout`; no rank is left running; fp32 over two ranks matches one
process at the same global batch."""

from __future__ import annotations

import math

import pytest

from tests.helpers.data_parallel import assert_replicas_consistent, dp_job, rank_processes_left, run_dp
from tests.helpers.marks import needs_torch

pytestmark = needs_torch
INF_ON_RANK_1 = {"debug_fault_injection": {"kind": "inf_grad", "rank": 1, "steps": [3, 7]}}


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
def test_fp32_over_two_ranks_matches_one_process_at_the_global_batch(tmp_path):
    import numpy as np
    from precision_suite.measure.loop import run_job
    from precision_suite.verdicts.data_parallel import data_parallel

    job = dp_job("torch-amp", "fp32", steps=20)
    record = run_dp(job, tmp_path)
    assert record["status"] == "ok", record.get("error")
    reference_job = dp_job("torch-amp", "fp32", world_size=1, steps=20)
    reference_job.train = reference_job.train.model_copy(update={"batch_size": 32})
    reference = run_job(reference_job)
    ours, theirs = np.array(record["curves"]["train_loss"]), np.array(reference["curves"]["train_loss"])
    assert len(ours) == len(theirs) == 20
    np.testing.assert_allclose(ours[:10], theirs[:10], rtol=1e-5)
    outcome, detail = data_parallel([record], [reference])
    assert outcome == "pass", detail
