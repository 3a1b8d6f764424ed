from __future__ import annotations

import pytest

from tests.helpers.cli import activate, install_entry_points


@pytest.fixture
def fake_backends(tmp_path, monkeypatch):
    """The fake backends registered through the entry-point group, for this test and its
    worker processes."""
    from precision_suite.backends import registry

    site = tmp_path / "site"
    install_entry_points(
        site,
        "fake_backends",
        {
            "fake": "tests.helpers.fake_backend:FakeBackend",
            "fake-missing": "tests.helpers.fake_backend:MissingFrameworkBackend",
        },
    )
    activate(site, monkeypatch)
    yield site
    registry.cache_clear()


FAKE_CONFIG = """
models:
  - kind: mlp
    hidden: [16]
data: {name: digits}
train: {steps: 12, batch_size: 32, timing_warmup_steps: 2, timing_window_steps: 4}
backends:
  names: [fake]
seeds: [0, 1]
device: cpu
runner: {job_timeout_s: 60}
loss_scale: {enabled: false}  # the fake does not scale; its fp16 policy says so
speed: {enabled: false}  # the runner tests test jobs; tests/suite/measure/test_speed_phase.py turns it on
"""


@pytest.fixture
def fake_config(tmp_path):
    path = tmp_path / "fake.yaml"
    path.write_text(FAKE_CONFIG)
    return path
