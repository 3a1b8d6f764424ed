from __future__ import annotations

from pathlib import Path

import pytest
from precision_suite.results import RESULTS_FILE, append_record


@pytest.fixture
def write_run(tmp_path):
    """Write records as a run directory (results.jsonl) under tmp_path/NAME; returns its path."""

    def write(name: str, records: list[dict]) -> Path:
        path = tmp_path / name
        path.mkdir()
        for record in records:
            append_record(path / RESULTS_FILE, record)
        return path

    return write
