"""Fault injection: every fault becomes a recorded, explained status and nothing measured is
lost (issue: reliability). Uses the fake backend; no framework needed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml
from precision_suite.cli import main
from precision_suite.results import append_record, read_records

from tests.helpers.cli import read_run, run_cli, start_cli

FAKE_JOB_IDS = {f"mlp/digits/fake/{p}/seed{s}" for p in ("fp32", "tf32", "fp16-mixed") for s in (0, 1)}


def test_tf32_on_cpu_is_unavailable_with_reason(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    assert run_cli(fake_config, out, "backends.policies.fake=[tf32]") == 0
    for record in read_run(out):
        assert record["status"] == "unavailable"
        assert record["error"] == "tf32 needs a CUDA device (device is cpu)"


def test_oom_retries_with_half_batch_when_configured(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    code = run_cli(
        str(fake_config),
        out,
        "backends.policies.fake=[fp32]",
        "seeds=[0]",
        "runner.oom_retry_half_batch=true",
        "backends.options.fake={oom_above_batch: 16}",
    )
    first, retried = read_run(out)
    assert code == 0
    assert first["status"] == "oom" and "batch size 32" in first["error"]
    assert retried["status"] == "ok"
    assert retried["retry"] == {"after": "oom", "batch_size": 16, "original_batch_size": 32}
    assert retried["config"]["train"]["batch_size"] == 16


def test_damaged_line_is_skipped_with_warning_and_resume_reruns_only_that_job(
    fake_backends, fake_config, tmp_path, capsys
):
    out = tmp_path / "run"
    assert run_cli(str(fake_config), out) == 0
    path = out / "results.jsonl"
    lines = path.read_text().splitlines()
    damaged_id = json.loads(lines[1])["job_id"]
    lines[1] = lines[1][: len(lines[1]) // 2]  # truncated mid-record
    path.write_text("\n".join(lines) + "\n" + "garbage {{{\n")
    capsys.readouterr()

    read = read_records(path)
    assert len(read.records) == len(lines) - 1
    assert any("line 2" in w for w in read.warnings) and any(f"line {len(lines) + 1}" in w for w in read.warnings)

    assert main(["run", "--resume", str(out)]) == 0
    assert "line 2: damaged record skipped" in capsys.readouterr().out
    records = read_run(out)
    ok_runs = Counter(r["job_id"] for r in records if r["status"] == "ok")
    # Every ok job ran exactly once, the damaged one included (its first record is unreadable).
    assert set(ok_runs) == {j for j in FAKE_JOB_IDS if "/tf32/" not in j}
    assert set(ok_runs.values()) == {1}
    assert damaged_id in {r["job_id"] for r in records[len(lines) - 1 :]}


def test_append_after_a_torn_write_starts_a_new_line(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"job_id": "a", "status": "ok"})
    with open(path, "a") as fh:
        fh.write('{"job_id": "b", "sta')  # a writer killed mid-line
    append_record(path, {"job_id": "c", "status": "ok", "metrics": {"x": float("nan")}})
    read = read_records(path)
    assert [r["job_id"] for r in read.records] == ["a", "c"]
    assert read.records[1]["metrics"]["x"] is None
    assert len(read.warnings) == 1


def test_sigint_keeps_finished_records_stops_worker_and_exits_130(fake_backends, fake_config, tmp_path):
    out = tmp_path / "run"
    proc = start_cli(
        ["run", str(fake_config), "--out", str(out), "--set", "backends.options.fake={step_sleep_s: 0.2}"]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "results.jsonl").exists():
        time.sleep(0.1)
    time.sleep(0.5)  # well inside the second job
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"precision-suite run --resume {out}" in stdout
    finished = read_run(out)
    assert 0 < len(finished) < len(FAKE_JOB_IDS)
    assert all(r["status"] == "ok" for r in finished)
    log = (out / "logs" / "worker-numpy.log").read_text()
    worker_pid = int(log.split("[worker ")[1].split("]")[0])
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


@pytest.mark.parametrize("kills", [pytest.param(50, marks=pytest.mark.slow), 5])
def test_kill_9_of_the_runner_never_loses_or_corrupts_a_record(fake_backends, fake_config, tmp_path, kills):
    """SIGKILLs of the runner at random moments (50 in the slow run, 5 in the quick one), each
    followed by a resume; then a final resume. Every record is valid, no `ok` job runs twice,
    and the job set equals that of an uninterrupted run."""
    rng = random.Random(1234)
    out = tmp_path / "run"
    config = yaml.safe_load(fake_config.read_text())
    config["seeds"] = [0, 1, 2, 3]
    config["train"]["steps"] = 6
    fake_config.write_text(yaml.safe_dump(config))
    expected = {f"mlp/digits/fake/{p}/seed{s}" for p in ("fp32", "fp16-mixed") for s in range(4)}
    unavailable = {f"mlp/digits/fake/tf32/seed{s}" for s in range(4)}

    def run_args() -> list[str]:
        # A kill before the run wrote its config.yaml leaves nothing to resume: start it again.
        if (out / "config.yaml").exists():
            return ["run", "--resume", str(out)]
        return ["run", str(fake_config), "--out", str(out)]

    done = 0
    while done < kills:
        proc = start_cli(run_args())
        # Past the interpreter's start-up too (about a second here), so kills also land mid-run.
        time.sleep(rng.uniform(0.0, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            done += 1
        proc.wait(timeout=30)
    final = subprocess.run(
        [sys.executable, "-m", "precision_suite.cli", *run_args()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"results.jsonl line {number} is corrupt: {line[:80]!r}")
    ok_runs = Counter(r["job_id"] for r in records if r["status"] == "ok")
    assert set(ok_runs) == expected
    assert max(ok_runs.values()) == 1, "an ok job was run again"
    assert {r["job_id"] for r in records} == expected | unavailable
