"""The local executor: the threads of its workers, and runner.parallel_jobs (training jobs side by side)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from precision_suite.config import load_config
from precision_suite.execution.local import job_kind, most_at_once, next_for_lane, worker_environment
from precision_suite.plan import expand_jobs

from tests.helpers.cli import REPO_ROOT, read_run, run_cli, start_cli
from tests.helpers.marks import needs_jax, needs_torch

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


def test_default_threads_follow_the_cpu_affinity(monkeypatch):
    """Not every core of the machine: the cores this process may run on (taskset, cpusets)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    env = worker_environment(load_config(None))
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert worker_environment(load_config(None, ["runner.threads=4"]))["OMP_NUM_THREADS"] == "4"


def test_most_at_once_counts_overlaps_at_one_moment():
    spans = [[0.0, 10.0], [1.0, 2.0], [3.0, 4.0], [5.0, float("inf")]]
    # [0, 10] met three others, but never more than one of them at a time.
    assert most_at_once(spans, 0.0, 10.0) == 2
    assert most_at_once([[0.0, 1.0]], 0.0, 1.0) == 1
    assert most_at_once([[0.0, 4.0], [1.0, 3.0], [2.0, 5.0]], 0.0, 4.0) == 3


def test_a_free_lane_keeps_to_one_kind_of_job():
    config = load_config(SMOKE, ["seeds=[0,1,2]", "runner.parallel_jobs=2"])
    jobs = [j for j in expand_jobs(config, "cpu") if not j.perturb_ulp]
    fp32, bf16 = job_kind(jobs[0]), job_kind(jobs[3])
    assert [job_kind(j) for j in jobs] == [fp32] * 3 + [bf16] * 3
    # A lane that ran fp32 takes the next fp32 job, wherever it is in the queue.
    assert next_for_lane(jobs[3:] + jobs[2:3], fp32, {fp32}) == 3
    # A fresh lane takes the first kind no other lane is on.
    assert next_for_lane(jobs[1:], None, {fp32}) == 2
    assert next_for_lane(jobs[1:], None, set()) == 0
    # Every kind taken: the first job.
    assert next_for_lane(jobs[1:], bf16 + ("x",), {fp32, bf16}) == 0


def test_auto_runs_side_by_side_only_where_no_speed_claim_depends_on_it(monkeypatch):
    def resolved(*overrides: str) -> int:
        return load_config(SMOKE, list(overrides)).parallel_jobs()

    # The cores this process may use, as the OS gives them; "auto" takes every one, at most 4.
    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr("precision_suite.measure.environment.available_cores", lambda cores=cores: cores)
        assert resolved("runner.parallel_jobs=auto") == expected, cores
    monkeypatch.setattr("precision_suite.measure.environment.available_cores", lambda: 8)
    # The speed phase off: the training jobs are the speed source, so they run alone.
    assert resolved("runner.parallel_jobs=auto", "speed.enabled=false") == 1
    assert resolved("runner.parallel_jobs=auto", "speed.enabled=false", "runner.accuracy_only=true") == 4
    # GPU jobs would share one device (and its allocator peaks): one at a time.
    assert resolved("runner.parallel_jobs=auto", "device=cuda") == 1
    assert resolved("runner.parallel_jobs=3") == 3
    assert resolved() == 1
    config = load_config(SMOKE, ["runner.parallel_jobs=2"])
    assert not config.training_timed()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_auto_counts_the_cores_this_process_may_use_not_the_machines():
    """Under `taskset -c 0` (or a container's cpuset) one core is all there is."""
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert load_config(SMOKE, ["runner.parallel_jobs=auto"]).parallel_jobs() == 1
    finally:
        os.sched_setaffinity(0, allowed)


@needs_torch
def test_side_by_side_jobs_give_the_numbers_of_one_at_a_time(tmp_path):
    overrides = ["runner.threads=1", "seeds=[0,1,2]", "speed.enabled=false"]
    assert run_cli(SMOKE, tmp_path / "one", *overrides) == 0
    assert run_cli(SMOKE, tmp_path / "two", *overrides, "runner.parallel_jobs=2") == 0
    one = {r["job_id"]: r for r in read_run(tmp_path / "one")}
    two = {r["job_id"]: r for r in read_run(tmp_path / "two")}
    assert set(one) == set(two) and len(one) == 6
    for job_id, record in two.items():
        assert record["status"] == "ok", record["error"]
        assert record["curves"]["train_loss"] == one[job_id]["curves"]["train_loss"], job_id
        assert record["metrics"]["test_accuracy"] == one[job_id]["metrics"]["test_accuracy"]
        placement = record["placement"]
        # Side by side: no timing claim, and the record says how many ran at once.
        assert placement["timed"] is False and 1 <= placement["concurrent_jobs_on_node"] <= 2
        assert one[job_id]["placement"]["timed"] is True
        assert one[job_id]["placement"]["concurrent_jobs_on_node"] == 1
    assert max(r["placement"]["concurrent_jobs_on_node"] for r in two.values()) == 2
    logs = sorted(p.name for p in (tmp_path / "two" / "logs").iterdir())
    assert logs == ["worker-torch-lane0.log", "worker-torch-lane1.log"]


def _pids_in(log_dir) -> set[int]:
    pids = set()
    for log in log_dir.glob("worker-*.log"):
        for part in log.read_text().split("[worker ")[1:]:
            pids.add(int(part.split("]")[0]))
    return pids


def test_sigint_with_jobs_side_by_side_stops_every_worker(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    proc = start_cli(
        [
            "run",
            str(fake_config),
            "--out",
            str(out),
            "--set",
            "backends.options.fake={step_sleep_s: 0.2}",
            "--set",
            "seeds=[0,1,2,3]",
            "--set",
            "runner.parallel_jobs=2",
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_pids_in(out / "logs") if (out / "logs").exists() else ()) < 2:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert f"precision-suite run --resume {out}" in stdout
    # Only what finished is written (the fake's tf32 is unavailable on a CPU, not a failure).
    statuses = {r["job_id"]: r["status"] for r in read_run(out)}
    assert set(statuses.values()) <= {"ok", "unavailable"}, statuses
    pids = _pids_in(out / "logs")
    assert len(pids) >= 2
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@needs_jax
def test_workers_share_one_xla_cache_and_it_changes_no_number(tmp_path, monkeypatch):
    overrides = ["backends.names=[keras-jax]", "backends.policies={keras-jax: [fp32]}", "seeds=[0,1]"]
    overrides += ["runner.parallel_jobs=2", "speed.enabled=false", "parity.noise_floor_runs=false"]
    assert run_cli(SMOKE, tmp_path / "own", *overrides) == 0
    own = {r["job_id"]: r for r in read_run(tmp_path / "own")}
    # The runner's own cache: shared by the run's workers, removed when the run ends.
    cache_dirs = {r["environ"]["compilation_cache_dir"] for r in own.values()}
    assert len(cache_dirs) == 1 and not os.path.exists(cache_dirs.pop())
    # A user's cache (and its thresholds) is used as it is, and kept.
    user_cache = tmp_path / "xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(user_cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    assert run_cli(SMOKE, tmp_path / "user", *overrides) == 0
    user = {r["job_id"]: r for r in read_run(tmp_path / "user")}
    assert {r["environ"]["compilation_cache_dir"] for r in user.values()} == {str(user_cache)}
    assert any(user_cache.iterdir())
    for job_id, record in own.items():
        assert record["curves"]["train_loss"] == user[job_id]["curves"]["train_loss"], job_id
