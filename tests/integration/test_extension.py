"""What a plugin can add with no change to suite code: a precision policy declared in one place
(``register_policy``) beside the backend that implements it, and a backend whose API family is
not its runtime's usual one (a Keras backend on the torch runtime). Both are written into a
throwaway module here and registered through the entry-point group, as a pip-installed package
would be; the backends are the NumPy fake (tests/helpers/fake_backend.py)."""

from __future__ import annotations

import json
import textwrap

import pytest
from precision_suite.backends import registry
from precision_suite.backends.policy import unregister_policy
from precision_suite.cli import main
from precision_suite.results import read_records
from precision_suite.verdicts.compare import compare

from tests.helpers.cli import activate, install_entry_points, run_cli

PLUGIN = '''
import time

from precision_suite.backends.policy import NativeOn, Policy, register_policy
from tests.helpers.fake_backend import FakeBackend

# The one declaration of the new policy: native on any CPU, and on CUDA from capability 8.9 on.
register_policy(
    Policy(
        "fp16-plugin",
        "float16",
        "float32",
        False,
        NativeOn(cpu_flags=(), cuda_capability=8.9, what="fp16-plugin"),
        peak="fp16",
        advise={"PyTorch": "plugin.enable(model)  # on {device}", "Keras": "plugin.keras()"},
        settings={"recipe": "plugin-recipe"},
    )
)


class SlowFp32:
    """fp32 steps take 20 ms more: the new policy is faster beyond any noise."""

    def train_step(self, batch_indices):
        if self.job.policy == "fp32":
            time.sleep(0.02)
        super().train_step(batch_indices)


class PluginBackend(SlowFp32, FakeBackend):
    name = "fake-plugin"
    family = "torch"
    runtime = "numpy"
    policies = ("fp32", "fp16-plugin")


class TorchFamilyBackend(FakeBackend):
    name = "fake-torch"
    family = "torch"
    runtime = "torch"
    policies = ("fp32", "fp16-mixed")


class KerasOnTorchBackend(SlowFp32, FakeBackend):
    name = "fake-keras-torch"
    family = "keras"
    runtime = "torch"
    policies = ("fp32", "fp16-mixed")
'''

CONFIG = """
models:
  - kind: mlp
    hidden: [16]
data: {name: digits}
train: {steps: 12, batch_size: 32, timing_warmup_steps: 2, timing_window_steps: 4}
backends:
  names: [%s]
seeds: [0, 1, 2]
device: cpu
parity: {tolerance_pts: 50}  # the tiny fake's accuracy is not the point: PASS, so advise may choose
runner: {job_timeout_s: 120, parallel_jobs: 1}
loss_scale: {enabled: false}
speed: {enabled: %s, rounds: 3, window_ms: 20, batch_probe: false}
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "policy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    install_entry_points(
        site,
        "policy_plugin",
        {
            "fake-plugin": "policy_plugin:PluginBackend",
            "fake-torch": "policy_plugin:TorchFamilyBackend",
            "fake-keras-torch": "policy_plugin:KerasOnTorchBackend",
        },
    )
    activate(site, monkeypatch)
    yield site
    unregister_policy("fp16-plugin")
    registry.cache_clear()


def _config(tmp_path, names: str, speed: bool):
    path = tmp_path / "plugin.yaml"
    path.write_text(CONFIG % (names, "true" if speed else "false"))
    return path


def test_a_policy_declared_in_one_place_is_listed_run_compared_labelled_and_advised(
    plugin, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    row = next(line for line in listed.splitlines() if "fake-plugin" in line)
    assert "fp16-plugin" in row

    out = tmp_path / "run"
    # Speed from the training jobs, each timed alone: no speed phase to wait for.
    assert run_cli(_config(tmp_path, "fake-plugin", speed=False), out) == 0
    records = read_records(out / "results.jsonl").records
    assert sorted((r["policy"], r["seed"], r["status"]) for r in records) == [
        (policy, seed, "ok") for policy in ("fp16-plugin", "fp32") for seed in (0, 1, 2)
    ]

    comparison = compare(records)
    (group,) = comparison.groups
    row = next(r for r in group.rows if r.policy == "fp16-plugin")
    assert row.baseline == "fake-plugin fp32"
    assert row.verdict("parity").outcome == "pass"
    precision = row.verdict("precision-active")
    assert precision.outcome == "pass" and precision.detail == "observed compute float16"
    assert not row.emulated  # every CPU computes it natively, by its declaration

    # Labelled from the recorded hardware by the policy's own rule: CUDA below 8.9 emulates it.
    def on_gpu(capability: list[int]) -> list[dict]:
        moved = json.loads(json.dumps(records))
        for record in moved:
            record["device"] = "cuda"
            record["environ"]["cuda_capability"] = capability
        return moved

    gpu_row = next(r for r in compare(on_gpu([8, 0])).rows if r.policy == "fp16-plugin")
    assert gpu_row.emulated and gpu_row.emulated_reason == "compute capability 8.0 < 8.9"
    gpu_row = next(r for r in compare(on_gpu([9, 0])).rows if r.policy == "fp16-plugin")
    assert not gpu_row.emulated

    # At parity, native, and faster: its fp32 steps sleep 20 ms (a margin no load undoes).
    assert main(["advise", str(out)]) == 0
    advice = capsys.readouterr().out
    assert "use fp16-plugin (fake-plugin)" in advice, advice
    block = advice.split("use fp16-plugin")[1].split("\n\n")[0]
    assert "PyTorch: plugin.enable(model)  # on cpu" in block
    assert "Keras" not in block  # a torch-family row gets the torch tools' lines only


def test_a_keras_backend_on_the_torch_runtime_is_held_against_torch_and_timed_against_its_own_fp32(
    plugin, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "fake-keras-torch" in line)
    assert "keras" in row and "torch" in row

    out = tmp_path / "run"
    assert run_cli(_config(tmp_path, "fake-torch, fake-keras-torch", speed=True), out) == 0
    read = read_records(out / "results.jsonl")
    jobs = [r for r in read.records if r["backend"] == "fake-keras-torch" and "ulp" not in r["job_id"]]
    assert {(r["framework"], r["family"]) for r in jobs} == {("torch", "keras")}
    # One worker process runs both (the torch runtime's); one speed phase per family.
    assert {p.name for p in (out / "logs").glob("worker-*.log")} == {"worker-torch.log"}
    phases = {r["family"]: r["speed"]["baseline"]["backend"] for r in read.speed if r["status"] == "ok"}
    assert phases == {"torch": "fake-torch", "keras": "fake-keras-torch"}

    comparison = compare(read.records, speed_records=read.speed)
    (group,) = comparison.groups
    rows = {row.label: row for row in group.rows}
    keras_fp16 = rows["fake-keras-torch fp16-mixed"]
    assert keras_fp16.family == "keras" and keras_fp16.runtime == "torch"
    assert keras_fp16.baseline == "fake-keras-torch fp32"
    assert keras_fp16.speed is not None and keras_fp16.speed.source == "paired"
    assert rows["fake-torch fp16-mixed"].baseline == "fake-torch fp32"
    # The cross-framework check holds the Keras implementation against torch's fp32.
    (cross,) = [v for v in group.verdicts if v.name == "cross-framework"]
    assert cross.subject.endswith("fake-torch fp32 vs fake-keras-torch fp32")
    # Its noise-floor runs were planned (two implementations run fp32), so a horizon was measured.
    assert any("ulp" in r["job_id"] for r in read.records if r["backend"] == "fake-keras-torch")
