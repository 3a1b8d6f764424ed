"""A folder of runs made from hand-written records (three runs of the same config: two on one
machine, one on another; one more of another config) and a server over it on 127.0.0.1."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

import pytest
from precision_suite.outputs.rundir import load_run
from precision_suite.report import write_reports
from precision_suite.results import RESULTS_FILE, append_record
from precision_suite.serve.server import make_server

from tests.helpers.records import default_run, make_record

# name → (start time, host, accuracy shift in points, write report.html)
RUNS = {
    "20260101-090000": (datetime(2026, 1, 1, 9), "alpha", 0.0, True),
    "20260102-090000": (datetime(2026, 1, 2, 9), "alpha", -0.4, False),
    "nightly/20260103-090000": (datetime(2026, 1, 3, 9), "beta", 0.2, False),
}
OTHER = "20251231-090000-cnn"  # a run of another config: not comparable with the others
TOKEN = "test-token-123"


def write_run(root: Path, name: str, records: list[dict], started: datetime, report: bool = False) -> Path:
    path = root / name
    path.mkdir(parents=True)
    for record in records:
        append_record(path / RESULTS_FILE, record)
    if report:
        run = load_run(path)
        write_reports(path, run.comparison, run.records)
    stamp = started.timestamp()
    os.utime(path / RESULTS_FILE, (stamp, stamp))
    return path


def fixture_records(host: str, shift_pts: float) -> list[dict]:
    records = default_run(seeds=(0, 1, 2))
    for record in records:
        record["environ"]["hostname"] = host
        if record["status"] == "ok" and record["policy"] != "fp32":
            record["metrics"]["test_accuracy"] += shift_pts / 100
    return records


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, (started, host, shift, report) in RUNS.items():
        write_run(root, name, fixture_records(host, shift), started, report)
    other = [make_record("torch-amp", p, s, model="cnn") for p in ("fp32", "bf16-mixed") for s in (0, 1)]
    write_run(root, OTHER, other, datetime(2025, 12, 31, 9))
    return root


@pytest.fixture
def server_url(runs_dir):
    """A server over the fixture folder on 127.0.0.1, any free port, stopped after the test."""
    server = make_server(runs_dir, "127.0.0.1", 0, token=TOKEN)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        server.app.launcher.stop()
        thread.join(10)
