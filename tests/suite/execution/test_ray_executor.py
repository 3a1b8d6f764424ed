"""runner.executor: ray, on an in-process Ray instance (2 CPUs, 2 logical GPUs, one timing slot)
with the fake NumPy backend, and once on a real local cluster (`ray start --head`). Every Ray
connection stays on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from precision_suite.cli import main
from rich.console import Console

from tests.helpers.cli import REPO_ROOT, install_entry_points, read_run, run_cli
from tests.suite.conftest import FAKE_CONFIG

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'precision-suite[ray]')")

RAY = "runner.executor=ray"
PACKED_ON_GPUS = ["device=cuda", "runner.accuracy_only=true"]
TIMING_METRICS = {"samples_per_s", "step_time_ms_p50", "step_time_ms_p90", "warmup_s", "wall_s"}
RAY_START_TIMEOUT_S = 120
RESOURCES_BACK_TIMEOUT_S = 30


def _fake_site(root: Path) -> Path:
    site = root / "site"
    install_entry_points(site, "fake_backends", {"fake": "tests.helpers.fake_backend:FakeBackend"})
    return site


def _auth_env() -> dict[str, str]:
    # Token auth from the environment on both sides: nothing is written to ~/.ray.
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory):
    """The executor's own private instance (loopback only), started once for the session. Its
    worker processes see the fake backend through PYTHONPATH, fixed when Ray starts."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'precision-suite[ray]')")
    from precision_suite.execution.ray_executor import start_local_instance

    site = _fake_site(tmp_path_factory.mktemp("ray"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO_ROOT), *filter(None, sys.path)]))
        for key, value in _auth_env().items():
            mp.setenv(key, value)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        start_local_instance(num_cpus=2, num_gpus=2)
        import ray

        yield ray
        ray.shutdown()


def _wait_for_idle(ray, timeout_s: float = RESOURCES_BACK_TIMEOUT_S) -> dict[str, float]:
    """The instance's free resources once nothing holds any (a cancelled task releases its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources()
        if free.get("CPU") == 2 and free.get("GPU") == 2 and free.get("timing_slot") == 1:
            return free
        if time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def run_fake_on_ray(config: Path, out: Path, *overrides: str) -> tuple[int, list[dict]]:
    """The fake backend's fp32 jobs of ``config`` on Ray: the exit code and the records."""
    code = run_cli(config, out, RAY, "backends.policies.fake=[fp32]", *overrides)
    return code, read_run(out)


def _spans_overlap(a: dict, b: dict) -> bool:
    pa, pb = a["placement"], b["placement"]
    return (
        pa["node_id"] == pb["node_id"] and pa["started_at"] < pb["finished_at"] and pb["started_at"] < pa["finished_at"]
    )


# --- without Ray ------------------------------------------------------------------------------


def test_ray_executor_without_ray_is_a_config_error_naming_the_extra(
    fake_backends, fake_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    out = tmp_path / "run"
    assert run_cli(fake_config, out, RAY) == 2
    err = capsys.readouterr().err
    assert "runner.executor" in err and 'pip install "precision-suite[ray]"' in err
    assert not out.exists()


def test_ray_address_must_be_null_auto_or_host_port(fake_backends, fake_config, capsys):
    assert main(["run", str(fake_config), "--set", RAY, "--set", "runner.ray.address=head-node"]) == 2
    err = capsys.readouterr().err
    assert "runner.ray.address" in err and "host:port" in err and "head-node" in err


def test_an_address_nothing_answers_at_is_a_config_error_not_a_hang():
    from precision_suite.config import ConfigError
    from precision_suite.execution.ray_executor import connect

    (port,) = _free_ports(1)  # bound, then closed: nothing listens there
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        connect(f"127.0.0.1:{port}")


def test_job_resources_whole_gpus_per_replica_and_the_timing_slot(fake_backends, fake_config):
    from precision_suite.config import load_config
    from precision_suite.execution.ray_executor import SHARED_SLOT, JobResources
    from precision_suite.plan import expand_jobs

    (job,) = expand_jobs(load_config(fake_config, ["seeds=[0]", "backends.policies.fake=[fp32]"]), "cuda")
    assert JobResources.of(job, 2, cluster_has_gpus=True) == JobResources(2, 1, 1.0)
    # A data-parallel job (distributed.world_size, read if the job has it): N GPUs, N times the CPUs.
    replicated = dataclasses.replace(job)
    replicated.distributed = type("Distributed", (), {"world_size": 4})()
    assert JobResources.of(replicated, 2, cluster_has_gpus=True) == JobResources(8, 4, 1.0)
    untimed = dataclasses.replace(job, timed=False)
    assert JobResources.of(untimed, 1, cluster_has_gpus=True).timing_slot == SHARED_SLOT
    on_auto = dataclasses.replace(job, device="auto")
    assert JobResources.of(on_auto, 1, cluster_has_gpus=True).num_gpus == 1
    assert JobResources.of(on_auto, 1, cluster_has_gpus=False).num_gpus == 0
    assert JobResources.of(dataclasses.replace(job, device="cpu"), 1, cluster_has_gpus=True).num_gpus == 0
    node = {"CPU": 8.0, "GPU": 4.0, "timing_slot": 1.0}
    assert JobResources(8, 4, 1.0).fits(node)
    assert not JobResources(8, 4, 1.0).fits({**node, "GPU": 2.0})
    assert not JobResources(1, 0, SHARED_SLOT).fits({"CPU": 8.0})  # a node without a timing slot


# --- in-process instance ----------------------------------------------------------------------


@needs_ray
def test_every_node_is_on_the_loopback_interface(ray_instance):
    nodes = ray_instance.nodes()
    assert nodes and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert ray_instance.get_runtime_context().gcs_address.startswith("127.0.0.1:")


@needs_ray
def test_gpus_are_assigned_one_per_job_never_shared_and_records_stream_in_completion_order(
    ray_instance, fake_backends, fake_config, tmp_path
):
    code, records = run_fake_on_ray(
        fake_config,
        tmp_path / "run",
        *PACKED_ON_GPUS,
        # seed 0 (submitted first) is slow: seed 1, started beside it, is written before it.
        "backends.options.fake={step_sleep_s: 0.25, sleep_seeds: [0]}",
    )
    assert code == 0
    assert [r["seed"] for r in records] == [1, 0]
    assert all(r["status"] == "ok" for r in records), [(r["status"], r.get("error")) for r in records]
    finished = [r["placement"]["finished_at"] for r in records]
    assert finished == sorted(finished)
    for record in records:
        placement = record["placement"]
        assert placement["executor"] == "ray" and placement["node_ip"] == "127.0.0.1"
        assert len(placement["gpu_ids"]) == 1
        assert placement["cuda_visible_devices"] == placement["gpu_ids"][0]
        assert placement["timed"] is False and placement["concurrent_timed_jobs_on_node"] == 0
    overlapping = [(a, b) for i, a in enumerate(records) for b in records[i + 1 :] if _spans_overlap(a, b)]
    assert overlapping, "accuracy-only jobs should have packed onto the two GPUs"
    for a, b in overlapping:
        assert a["placement"]["gpu_ids"] != b["placement"]["gpu_ids"]
    assert max(r["placement"]["concurrent_jobs_on_node"] for r in records) == 2


@needs_ray
def test_a_timed_job_has_its_node_to_itself(ray_instance, fake_backends, fake_config, tmp_path):
    from precision_suite.config import load_config
    from precision_suite.execution.ray_executor import RayExecutor
    from precision_suite.plan import expand_jobs

    config = load_config(fake_config, [RAY, "seeds=[0, 1, 2]", "backends.policies.fake=[fp32]"])
    jobs = expand_jobs(config, "cpu")
    # Two timed jobs and an accuracy-only one submitted between them: two CPUs would let any
    # two run at once, the timing slot must not.
    jobs = [dataclasses.replace(job, timed=job.seed < 2) for job in jobs]
    executor = RayExecutor(config, tmp_path)
    try:
        records = list(executor.run_jobs([jobs[0], jobs[2], jobs[1]], lambda *_: None))
    finally:
        executor.close()
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    timed = [r for r in records if r["placement"]["timed"]]
    assert len(timed) == 2
    for record in timed:
        assert record["placement"]["concurrent_timed_jobs_on_node"] == 1
        assert record["placement"]["concurrent_jobs_on_node"] == 1
        assert not [o["job_id"] for o in records if o is not record and _spans_overlap(record, o)]


@needs_ray
def test_a_dead_task_is_crashed_with_the_ray_error_and_resume_reruns_only_it(
    ray_instance, fake_backends, fake_config, tmp_path
):
    out = tmp_path / "run"
    code, records = run_fake_on_ray(
        fake_config, out, "backends.options.fake={kill_parent_at_step: 2, fault_seeds: [0]}"
    )
    by_seed = {r["seed"]: r for r in records}
    assert code == 3
    assert by_seed[1]["status"] == "ok"
    crashed = by_seed[0]
    assert crashed["status"] == "crashed"
    assert crashed["error"].startswith("Ray task died: ") and "\n" not in crashed["error"]
    placement = crashed["placement"]
    assert placement["node_ip"] == "127.0.0.1"  # it had started: where and when are known
    assert isinstance(placement["started_at"], float) and placement["started_at"] <= placement["finished_at"]
    assert placement["concurrent_jobs_on_node"] >= 1

    code = main(["run", "--resume", str(out), "--set", "backends.options.fake={}"])
    assert code == 0
    assert Counter(r["seed"] for r in read_run(out)) == {0: 2, 1: 1}
    assert read_run(out)[-1]["status"] == "ok"


@needs_ray
def test_a_job_past_its_timeout_is_cancelled_and_recorded_timeout(ray_instance, fake_backends, fake_config, tmp_path):
    started = time.monotonic()
    code, (record,) = run_fake_on_ray(
        fake_config, tmp_path / "run", "seeds=[0]", "runner.job_timeout_s=4", "backends.options.fake={hang_at_step: 5}"
    )
    assert code == 3
    assert record["status"] == "timeout"
    assert "runner.job_timeout_s=4s" in record["error"] and "Ray task cancelled" in record["error"]
    # Started, then given up at least the timeout later (the clock starts once it runs).
    placement = record["placement"]
    assert placement["finished_at"] - placement["started_at"] >= 4
    assert time.monotonic() - started < 4 + 30  # the timeout, not the task's own backstop (+60 s)
    assert _wait_for_idle(ray_instance)["CPU"] == 2, "the cancelled task still holds its CPU"


@needs_ray
def test_ctrl_c_cancels_outstanding_jobs_and_keeps_finished_records(ray_instance, fake_backends, fake_config, tmp_path):
    from precision_suite.config import load_config
    from precision_suite.execution.runner import run_suite

    class InterruptAfterFirstRecord(Console):
        def print(self, *args, **kwargs):
            super().print(*args, **kwargs)
            if args and "mlp/digits/fake" in str(args[0]):  # a job's status line
                raise KeyboardInterrupt

    config = load_config(
        fake_config,
        [
            RAY,
            *PACKED_ON_GPUS,
            "backends.policies.fake=[fp32]",
            "backends.options.fake={hang_at_step: 1, fault_seeds: [1]}",
        ],
    )
    out = tmp_path / "run"
    summary = run_suite(config, out, InterruptAfterFirstRecord(file=open(os.devnull, "w")))
    assert summary.interrupted
    (kept,) = read_run(out)
    assert kept["seed"] == 0 and kept["status"] == "ok", (kept["status"], kept.get("error"))
    free = _wait_for_idle(ray_instance)
    assert free.get("GPU") == 2 and free.get("timing_slot") == 1, f"the hanging job was not cancelled: {free}"


@needs_ray
def test_records_match_the_local_executor(ray_instance, fake_backends, fake_config, tmp_path):
    overrides = [
        "backends.policies.fake=[fp32]",
        "runner.threads=1",
        "backends.options.fake={crash_at_step: 3, fault_seeds: [0]}",
    ]
    assert run_cli(fake_config, tmp_path / "local", *overrides) == 3
    assert run_cli(fake_config, tmp_path / "ray", RAY, *overrides) == 3
    local = {r["job_id"]: r for r in read_run(tmp_path / "local")}
    on_ray = {r["job_id"]: r for r in read_run(tmp_path / "ray")}
    assert local.keys() == on_ray.keys()
    assert Counter(r["status"] for r in on_ray.values()) == {"crashed": 1, "ok": 1}

    def content(record):
        record = json.loads(json.dumps(record))
        for key in TIMING_METRICS:
            record["metrics"].pop(key, None)
        record["curves"].pop("window_step_time_ms", None)  # measured times, not content
        record["config"].pop("runner")
        record["config"].pop("config_hash")  # hashes the runner section too
        record.pop("placement")
        record.pop("stderr_tail", None)  # the worker's own log lines carry its pid
        return record

    for job_id, record in local.items():
        assert content(on_ray[job_id]) == content(record), job_id
    assert local["mlp/digits/fake/fp32/seed0"]["placement"]["executor"] == "local"


# --- a real local cluster ---------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _processes_in_session(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def ray_cluster(tmp_path):
    """`ray start --head` on free 127.0.0.1 ports in its own process session; stopped (and any
    process left in that session killed, by pid) in teardown."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'precision-suite[ray]')")
    gcs_port, client_port, dashboard_port = _free_ports(3)
    site = _fake_site(tmp_path)
    env = {
        **os.environ,
        **_auth_env(),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT), *filter(None, sys.path)]),
    }
    temp_dir = tempfile.mkdtemp(prefix="ps-ray-")  # short: Ray's socket paths live under it
    log = Path(temp_dir) / "ray-start.log"
    command = [
        sys.executable,
        "-c",
        "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=false",
        "--num-cpus=2",
        "--num-gpus=0",
        '--resources={"timing_slot": 1}',
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    with open(log, "w") as log_file:
        head = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + RAY_START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "ray start did not come up in time"
            time.sleep(0.5)
        yield f"127.0.0.1:{gcs_port}", env, log
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block drains and stops its processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in _processes_in_session(head.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(timeout=10)
        assert not _processes_in_session(head.pid)


# Slow: a second Ray cluster (`ray start`, its own processes) costs more than any other Ray test.
# The executor's behaviour on Ray is tested on the in-process instance above, the address rules
# and an address nothing answers at without a cluster; this adds the CLI reaching one by address.
@pytest.mark.slow
@needs_ray
def test_run_on_a_cluster_started_with_ray_start(ray_cluster, tmp_path):
    address, env, log = ray_cluster
    config = tmp_path / "fake.yaml"
    config.write_text(FAKE_CONFIG)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "precision_suite.cli", "run", str(config), "--out", str(out)]
    for override in (RAY, f"runner.ray.address={address}", "backends.policies.fake=[fp32]", "seeds=[0]"):
        command += ["--set", override]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_run(out)
    (record,) = records
    assert record["job_id"] == "mlp/digits/fake/fp32/seed0" and record["status"] == "ok"
    assert record["placement"]["executor"] == "ray" and record["placement"]["node_ip"] == "127.0.0.1"
    assert "Local node IP: 127.0.0.1" in log.read_text()
