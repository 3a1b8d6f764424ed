"""runner.executor: slurm, through submitit: its local executor (real subprocesses, log files,
time limits, cancel) with the fake NumPy backend, the sbatch scripts it writes (checked with
submitit's own mocked Slurm), and once (slow) a real one-node Slurm on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from precision_suite.cli import main

from tests.helpers.cli import REPO_ROOT, read_run, run_cli

HAS_SUBMITIT = importlib.util.find_spec("submitit") is not None
needs_submitit = pytest.mark.skipif(
    not HAS_SUBMITIT, reason='submitit is not installed (pip install "precision-suite[slurm]")'
)

ON_LOCAL = ["runner.executor=slurm", "runner.slurm.cluster=local"]
FP32 = "backends.policies.fake=[fp32]"


@pytest.fixture(autouse=True)
def _submitit_imported_as_the_suite_imports_it():
    """The tests below import submitit's helpers directly: the first import goes through the
    suite's, so that submitit never configures logging in this process (see the next test)."""
    if HAS_SUBMITIT:
        from precision_suite.execution.slurm import import_submitit

        import_submitit()


def _jobs(config_path: Path, *overrides: str):
    from precision_suite.config import load_config
    from precision_suite.plan import expand_jobs

    config = load_config(config_path, list(overrides))
    return config, expand_jobs(config, config.device)


def _run(executor, jobs) -> list[dict]:
    try:
        return list(executor.run_jobs(jobs, lambda *_: None))
    finally:
        executor.close()


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc: an independent view of what is left)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- configuration, without running anything ---------------------------------------------------


def test_slurm_executor_without_submitit_is_a_config_error_naming_the_extra(
    fake_backends, fake_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now fails
    out = tmp_path / "run"
    assert run_cli(fake_config, out, *ON_LOCAL) == 2
    err = capsys.readouterr().err
    assert "runner.executor" in err and 'pip install "precision-suite[slurm]"' in err
    assert not out.exists()


IMPORT_SUBMITIT_IN_A_FRESH_PROCESS = """
import io, logging, os
from precision_suite.execution.slurm import import_submitit

class Watched(logging.StreamHandler):
    closed = False

    def close(self):
        Watched.closed = True
        super().close()

logging.getLogger("some.library").addHandler(Watched(io.StringIO()))
import_submitit()
logging.getLogger("submitit").warning("a warning from submitit")
print(Watched.closed, os.environ.get("SUBMITIT_LOG_LEVEL"), logging.getLogger("submitit").handlers)
"""


@needs_submitit
def test_importing_submitit_leaves_the_logging_handlers_of_the_process_alone():
    """submitit's import runs logging.config.dictConfig, which closes every handler of the process;
    absl's (TensorFlow's) then closed pytest's capture file and crashed the test run ("lost
    sys.stderr"). A fresh interpreter: this one may have imported submitit already."""
    env = {k: v for k, v in os.environ.items() if k != "SUBMITIT_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_SUBMITIT_IN_A_FRESH_PROCESS], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # Not closed; the variable not left for the jobs to inherit; no handler of submitit's own.
    assert done.stdout.split() == ["False", "None", "[]"]
    assert "a warning from submitit" in done.stderr  # its warnings still reach the terminal


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("runner.slurm.cluster=debug", ["runner.slurm.cluster", "'slurm' or 'local'", '"debug"']),
        ("runner.slurm.timeout_min=0", ["runner.slurm.timeout_min", "> 0"]),
        ("runner.slurm.extra={partition: gpu}", ["runner.slurm.extra", "partition", "its own runner.slurm key"]),
        ("runner.slurm.array_parallelism=many", ["runner.slurm.array_parallelism", "an integer", '"many"']),
        ("runner.slurm.nodes=2", ["runner.slurm.nodes", 'unknown key "nodes"']),
    ],
)
def test_slurm_settings_are_validated_with_one_line_errors(fake_config, override, expected, capsys):
    assert main(["run", str(fake_config), "--set", "runner.executor=slurm", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    for part in expected:
        assert part in err


@needs_submitit
def test_an_extra_parameter_submitit_does_not_know_is_a_config_error(fake_backends, fake_config, tmp_path, capsys):
    assert run_cli(fake_config, tmp_path / "run", *ON_LOCAL, "runner.slurm.extra={colour: red}") == 2
    err = capsys.readouterr().err
    assert "runner.slurm.extra" in err and "'colour'" in err and "signal_delay_s" in err


@needs_submitit
def test_cluster_slurm_without_sbatch_is_a_config_error(fake_backends, fake_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there: no sbatch
    assert run_cli(fake_config, tmp_path / "run", "runner.executor=slurm") == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and 'cluster "local"' in err


def test_resources_one_gpu_per_replica_and_ranks_as_tasks_across_nodes(fake_backends, fake_config):
    from precision_suite.execution.slurm import SlurmResources

    config, (job, *_) = _jobs(fake_config, "runner.executor=slurm", "runner.slurm.gpus_per_node=4", "device=cuda")
    assert SlurmResources.of(job, config) == SlurmResources(1, 1, 1, 1, exclusive=True)
    untimed = dataclasses.replace(job, timed=False)
    assert not SlurmResources.of(untimed, config).exclusive
    on_cpu = dataclasses.replace(job, device="cpu")
    assert SlurmResources.of(on_cpu, config).gpus_per_node == 0
    # torch DDP over 4 replicas fits one node: one task, the suite's launcher starts the ranks.
    torch_job = dataclasses.replace(job, backend="torch-amp", world_size=4)
    assert SlurmResources.of(torch_job, config) == SlurmResources(1, 1, 4, 4, exclusive=True)
    # Over 8: two nodes of four tasks, one rank (and GPU) each.
    wide = dataclasses.replace(torch_job, world_size=8)
    assert SlurmResources.of(wide, config) == SlurmResources(2, 4, 1, 4, exclusive=True)
    # A backend without one process per replica (tf-keras mirrored) stays one task.
    mirrored = dataclasses.replace(wide, backend="tf-keras")
    assert SlurmResources.of(mirrored, config).multi_task is False


# --- the sbatch script, with submitit's mocked Slurm ---------------------------------------------


@needs_submitit
def test_the_sbatch_scripts_ask_for_partition_time_gpus_array_and_exclusive(fake_backends, fake_config, tmp_path):
    from precision_suite.execution.slurm import SlurmExecutor
    from submitit.slurm.test_slurm import mocked_slurm

    config, jobs = _jobs(
        fake_config,
        "runner.executor=slurm",
        "seeds=[0, 1, 2]",
        FP32,
        "device=cuda",
        "runner.slurm={partition: gpu, timeout_min: 30, gpus_per_node: 4, array_parallelism: 2, "
        "account: lab, qos: high, mem_gb: 16, extra: {constraint: a100}}",
    )
    timed = jobs[:2]
    untimed = [dataclasses.replace(job, timed=False) for job in jobs[2:]]
    with mocked_slurm() as mock:
        mock.known_cmds.append("sbatch")  # the executor looks for it before it submits
        executor = SlurmExecutor(config, tmp_path)
        assert executor.submit(timed + untimed) == []
        ids = sorted(s.handle.job_id for s in executor.outstanding)
        # One script per array, named by the array's id.
        scripts = {
            "--exclusive" in path.read_text(): path.read_text()
            for path in (tmp_path / "logs" / "slurm").rglob("*_submission.sh")
        }
        executor.outstanding.clear()
    assert ids == ["12_0", "12_1", "13"]  # one array per kind of job (one job alone: no array)
    timed_script, shared_script = scripts[True], scripts[False]
    for script in (timed_script, shared_script):
        lines = set(script.splitlines())
        assert {"#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=1"} <= lines
        assert {"#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --mem=16GB"} <= lines
        assert {"#SBATCH --constraint=a100", "#SBATCH --cpus-per-task=1", "#SBATCH --nodes=1"} <= lines
        assert "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --array=0-1%2" in timed_script and "#SBATCH --exclusive" in timed_script
    assert "#SBATCH --exclusive" not in shared_script
    assert "#SBATCH --array" not in shared_script  # a single job is no array


@needs_submitit
def test_a_data_parallel_job_beyond_a_node_is_one_slurm_job_of_one_task_per_rank(fake_backends, fake_config, tmp_path):
    from precision_suite.execution.slurm import SlurmExecutor
    from submitit.slurm.test_slurm import mocked_slurm

    config, (job, *_) = _jobs(fake_config, "runner.executor=slurm", "device=cuda", "runner.slurm.gpus_per_node=2")
    wide = dataclasses.replace(job, backend="torch-amp", world_size=4)
    with mocked_slurm() as mock:
        mock.known_cmds.append("sbatch")
        executor = SlurmExecutor(config, tmp_path)
        assert executor.submit([wide]) == []
        (submitted,) = executor.outstanding
        (script,) = [path.read_text() for path in (tmp_path / "logs" / "slurm").rglob("*_submission.sh")]
        executor.outstanding.clear()
    lines = set(script.splitlines())
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2"} <= lines
    assert "--kill-on-bad-exit=1" in script  # a dead rank ends the others
    assert submitted.handle.num_tasks == 4


@needs_submitit
def test_an_array_sbatch_refuses_is_each_jobs_error_record(fake_backends, fake_config, tmp_path):
    from precision_suite.execution.slurm import SlurmExecutor
    from submitit.slurm.test_slurm import mocked_slurm

    config, jobs = _jobs(fake_config, "runner.executor=slurm", FP32, "runner.slurm.partition=nope")

    def refuse(args):
        raise RuntimeError("sbatch: error: invalid partition specified: nope")

    with mocked_slurm() as mock:
        mock.known_cmds.append("sbatch")
        mock.sbatch = refuse
        records = list(SlurmExecutor(config, tmp_path).run_jobs(jobs, lambda *_: None))
    assert sorted(r["job_id"] for r in records) == sorted(j.job_id for j in jobs)
    assert {r["status"] for r in records} == {"error"}
    assert all("invalid partition specified: nope" in r["error"] and "\n" not in r["error"] for r in records)


# --- submitit's local executor: real processes (one run in the default tier; the faults are slow) ---


@needs_submitit
def test_jobs_run_as_submitit_tasks_with_their_statuses_and_files_and_a_timed_job_alone(
    fake_backends, fake_config, tmp_path
):
    """The one real-process run of the default tier (each job costs three Python starts: submitit's
    controller, its task, the suite's worker). The smoke config against the local executor: slow."""
    from precision_suite.execution.slurm import SlurmExecutor

    faults = "backends.options.fake={raise_at_step: 3, fault_seeds: [1]}"
    config, jobs = _jobs(fake_config, *ON_LOCAL, FP32, faults)
    # A timed job and an accuracy-only one: either could run beside the other, the timing must not.
    jobs = [dataclasses.replace(job, timed=job.seed == 0) for job in jobs]
    records = _run(SlurmExecutor(config, tmp_path), jobs)
    # The injected fault decides the statuses: seed 1 raises in its worker, seed 0 trains.
    assert {r["job_id"]: r["status"] for r in records} == {j.job_id: "error" if j.seed else "ok" for j in jobs}
    by_seed = {r["seed"]: r for r in records}
    assert "injected failure" in by_seed[1]["error"]
    assert by_seed[0]["metrics"]["test_accuracy"] > 0.5  # trained: digits has ten classes
    for record in records:
        placement = record["placement"]
        assert placement["executor"] == "slurm" and placement["slurm_job_id"]
        assert placement["cuda_visible_devices"] == ""  # a CPU job sees no GPU
        # submitit's own files for the job: its pickled result and its log.
        job_folder = tmp_path / "logs" / "slurm" / placement["slurm_job_id"]
        assert (job_folder / f"{placement['slurm_job_id']}_0_result.pkl").exists()
        assert (job_folder / f"{placement['slurm_job_id']}_0_log.err").exists()
    timed, shared = by_seed[0]["placement"], by_seed[1]["placement"]
    assert timed["timed"] and not shared["timed"]
    assert timed["concurrent_jobs_on_node"] == 1 and timed["concurrent_timed_jobs_on_node"] == 1
    assert timed["finished_at"] <= shared["started_at"] or shared["finished_at"] <= timed["started_at"]


@pytest.mark.slow
@needs_submitit
def test_a_job_past_the_slurm_time_limit_is_recorded_timeout_with_its_state(fake_backends, fake_config, tmp_path):
    from precision_suite.execution.slurm import SlurmExecutor

    config, jobs = _jobs(
        fake_config,
        *ON_LOCAL,
        "seeds=[0]",
        FP32,
        "runner.job_timeout_s=120",  # the suite's own timeout is not what stops it
        "runner.slurm.timeout_min=0.15",
        "runner.slurm.extra={signal_delay_s: 4}",
        "backends.options.fake={hang_at_step: 3}",
    )
    started = time.monotonic()
    (record,) = _run(SlurmExecutor(config, tmp_path), jobs)
    assert record["status"] == "timeout"
    assert "reached its time limit (runner.slurm.timeout_min=0.15)" in record["error"]
    assert "state" in record["error"] and "\n" not in record["error"]
    assert time.monotonic() - started < 9 + 30


@pytest.mark.slow
@needs_submitit
def test_a_dead_node_loses_only_its_own_job(fake_backends, fake_config, tmp_path):
    from precision_suite.execution.slurm import SlurmExecutor

    # Seed 0's task process is killed under it (as by a node's death): no result comes back.
    config, jobs = _jobs(
        fake_config, *ON_LOCAL, "runner.accuracy_only=true", FP32,
        "backends.options.fake={kill_parent_at_step: 2, fault_seeds: [0]}",
    )  # fmt: skip
    records = {r["seed"]: r for r in _run(SlurmExecutor(config, tmp_path), jobs)}
    assert records[1]["status"] == "ok"
    assert records[0]["status"] == "crashed"
    assert "ended with no result" in records[0]["error"] and "state" in records[0]["error"]
    assert records[0]["placement"]["started_at"] is not None  # it had started: where and when are known


@pytest.mark.slow
@needs_submitit
def test_cancel_stops_every_job_and_its_processes(fake_backends, fake_config, tmp_path):
    from precision_suite.execution.slurm import SlurmExecutor

    config, jobs = _jobs(
        fake_config, *ON_LOCAL, "runner.accuracy_only=true", FP32, "backends.options.fake={hang_at_step: 2}"
    )
    executor = SlurmExecutor(config, tmp_path)
    pids: set[int] = set()
    try:
        assert executor.submit(jobs) == []
        deadline = time.monotonic() + 60
        while len(list(executor.board_dir.glob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # Both accuracy-only jobs started while the other hangs: they run side by side.
        assert len(list(executor.board_dir.glob("*.json"))) == 2, "the jobs never started side by side"
        time.sleep(1.0)  # past the start marker: the worker runs, hung at its step
        for submitted in executor.outstanding:
            controller = submitted.handle._process.pid
            pids |= {controller} | _descendants(controller)
        assert len(pids) >= 6  # per job: controller, submitit task, worker
        executor.kill_all()
        assert executor.outstanding == []
    finally:
        executor.close()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "processes left running after cancel"


@pytest.mark.slow
@needs_submitit
def test_resume_submits_only_the_jobs_that_are_not_ok(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(
        fake_config, out, *ON_LOCAL, "runner.accuracy_only=true", FP32,
        "backends.options.fake={raise_at_step: 2, fault_seeds: [0]}",
    )  # fmt: skip
    assert code == 3
    assert {r["seed"]: r["status"] for r in read_run(out)} == {0: "error", 1: "ok"}
    submitted_before = {p.name for p in (out / "logs" / "slurm").iterdir() if p.name[0].isdigit()}
    assert main(["run", "--resume", str(out), "--set", "backends.options.fake={}"]) == 0
    records = read_run(out)
    assert Counter(r["seed"] for r in records) == {0: 2, 1: 1}
    assert records[-1]["seed"] == 0 and records[-1]["status"] == "ok"
    submitted_after = {p.name for p in (out / "logs" / "slurm").iterdir() if p.name[0].isdigit()}
    assert len(submitted_after - submitted_before) == 1  # one job went out again


@pytest.mark.slow
@needs_submitit
def test_ranks_of_a_data_parallel_job_get_their_rendezvous_from_the_task_environment(tmp_path):
    """submitit's local executor with tasks_per_node=2: each task gets torch's env:// variables and
    its TF_CONFIG from ``rank_environment`` (the function the rank tasks use)."""
    import submitit
    from precision_suite.execution.slurm import rank_environment

    def environment() -> dict[str, str]:
        from submitit.helpers import TorchDistributedEnvironment

        return rank_environment(submitit.JobEnvironment(), TorchDistributedEnvironment().master_port)

    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="local")
    executor.update_parameters(tasks_per_node=2, local_timeout_min=1.0)
    job = executor.submit(environment)
    envs = job.results()
    assert [e["RANK"] for e in envs] == ["0", "1"] and {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["MASTER_ADDR"] for e in envs} == {"127.0.0.1"} and len({e["MASTER_PORT"] for e in envs}) == 1
    configs = [json.loads(e["TF_CONFIG"]) for e in envs]
    assert [c["task"]["index"] for c in configs] == [0, 1]
    assert configs[0]["cluster"] == configs[1]["cluster"] and len(configs[0]["cluster"]["worker"]) == 2
    assert all(w.startswith("127.0.0.1:") for w in configs[0]["cluster"]["worker"])


# --- slow: the smoke config, on submitit's local executor and on a real one-node Slurm ----------

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


def _outcome(out: Path) -> dict[str, str]:
    """Every job of a run (training jobs and speed phases) and its final status."""
    from precision_suite.results import latest_by_job, read_records

    read = read_records(out / "results.jsonl")
    return {job_id: record["status"] for job_id, record in latest_by_job(read.records + read.speed).items()}


@pytest.fixture(scope="module")
def smoke_on_the_local_executor(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("smoke") / "local"
    assert main(["run", str(SMOKE), "--out", str(out)]) == 0
    return _outcome(out)


@pytest.mark.slow
@needs_submitit
def test_the_smoke_config_on_a_local_cluster_matches_the_local_executor(smoke_on_the_local_executor, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(SMOKE), "--out", str(out), *sum((["--set", o] for o in ON_LOCAL), [])]) == 0
    outcome = _outcome(out)
    assert outcome == smoke_on_the_local_executor
    assert set(outcome.values()) == {"ok"}
    placements = [r["placement"] for r in read_run(out)]
    assert {p["executor"] for p in placements} == {"slurm"}


@pytest.mark.slow
@needs_submitit
def test_the_smoke_config_through_real_sbatch_on_a_one_node_slurm(smoke_on_the_local_executor, tmp_path, monkeypatch):
    from tests.helpers.slurm_cluster import missing_reason, one_node_slurm

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "run"
    with one_node_slurm(tmp_path / "slurm") as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(["run", str(SMOKE), "--out", str(out), "--set", "runner.executor=slurm"])
        records = read_run(out)
    assert code == 0, [(r["job_id"], r["status"], r["error"]) for r in records]
    outcome = _outcome(out)
    assert outcome == smoke_on_the_local_executor
    for record in records:
        placement = record["placement"]
        assert placement["executor"] == "slurm" and placement["node_id"] == "localhost"
        assert placement["slurm_job_id"].split("_")[0].isdigit()  # an id Slurm gave
        if placement["timed"]:  # sbatch --exclusive: the node to itself
            assert placement["concurrent_jobs_on_node"] == 1
    scripts = [p.read_text() for p in (out / "logs" / "slurm").rglob("*_submission.sh")]
    assert scripts and all("#SBATCH --exclusive" in s for s in scripts)  # smoke's jobs are all timed
    assert not [s for s in scripts if "--gpus-per-node" in s]  # device: cpu asks for no GPU


@pytest.mark.slow
@needs_submitit
def test_torch_ddp_ranks_as_tasks_on_a_local_cluster_match_the_suites_launcher(tmp_path):
    """runner.slurm.tasks_per_node=2: the two ranks of a torch DDP job are two submitit tasks
    (env:// rendezvous from rank_environment), and give the launcher's verdict inputs."""
    pytest.importorskip("torch")
    from precision_suite.config import validate
    from precision_suite.execution.local import Executor
    from precision_suite.execution.slurm import SlurmExecutor
    from precision_suite.plan import expand_jobs

    from tests.helpers.data_parallel import dp_config

    raw = dp_config("torch-amp", "fp32", world_size=2, steps=6)
    raw["runner"].update(executor="slurm", slurm={"cluster": "local", "tasks_per_node": 2})
    config = validate(raw, "test")
    (job,) = [j for j in expand_jobs(config, "cpu") if j.world_size == 2]
    (on_tasks,) = _run(SlurmExecutor(config, tmp_path / "slurm"), [job])
    (launched,) = _run(Executor(config, tmp_path / "local"), [job])
    assert on_tasks["status"] == launched["status"] == "ok", on_tasks.get("error")
    assert on_tasks["distributed"]["world_size"] == 2
    ranks = on_tasks["distributed"]["replicas"]
    assert [r["rank"] for r in ranks] == [0, 1]
    # The same replicas compute the same thing, whoever started them.
    assert on_tasks["curves"]["train_loss"] == launched["curves"]["train_loss"]
    assert (tmp_path / "slurm" / "logs" / "slurm-jobs").glob("*.rank1.log")
