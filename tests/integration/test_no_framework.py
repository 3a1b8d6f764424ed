"""`import precision_suite` and the framework-free commands work with no framework installed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.marks import needs_torch

# Makes torch, tensorflow, keras and jax unimportable, as on a machine without them.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tensorflow", "keras", "jax"):
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: (
    None if name.split(".")[0] in ("torch", "tensorflow", "keras", "jax") else _find_spec(name, *a, **k)
)
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_imports_and_list_without_frameworks():
    result = _run(
        "import precision_suite.backends, precision_suite.cli, precision_suite.execution.runner\n"
        "import precision_suite.verdicts.compare, precision_suite.report, precision_suite.measure.loop\n"
        "from precision_suite.backends import backend_names, get_backend_class\n"
        "for name in backend_names():\n"
        "    print(name, get_backend_class(name).is_available().reason)\n"
        "sys.exit(precision_suite.cli.main(['list']))\n"
    )
    assert result.returncode == 0, result.stderr
    assert "torch-amp torch is not installed" in result.stdout
    assert "tf-keras tensorflow is not installed" in result.stdout
    assert "keras-jax jax is not installed" in result.stdout


@needs_torch
def test_without_jax_keras_jax_is_unavailable_and_the_rest_runs(tmp_path):
    """Only jax missing (the `.[jax]` extra not installed): keras-jax, registered through the
    entry-point group, is listed unavailable with the reason; its jobs are recorded so, and the
    other frameworks' jobs run."""
    out = tmp_path / "run"
    only_jax = BLOCK.replace('("torch", "tensorflow", "keras", "jax")', '("jax", "jaxlib")')
    assert only_jax != BLOCK
    args = [
        *("run", "configs/smoke.yaml", "--out", str(out)),
        *("--set", "backends.names=[torch-amp, keras-jax]"),
        *("--set", "backends.policies={torch-amp: [fp32], keras-jax: [fp32]}"),
    ]
    code = (
        "import precision_suite.cli\n"
        "from precision_suite.backends import get_backend_class\n"
        "print('reason:', get_backend_class('keras-jax').is_available().reason)\n"
        f"sys.exit(precision_suite.cli.main({args!r}))"
    )
    result = subprocess.run([sys.executable, "-c", only_jax + code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "reason: jax is not installed" in result.stdout
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    statuses = {r["backend"]: r for r in records if r.get("kind") != "speed"}
    assert statuses["keras-jax"]["status"] == "unavailable"
    assert statuses["keras-jax"]["error"] == "jax is not installed"
    assert statuses["torch-amp"]["status"] == "ok"
    # Said once, with the command that installs it, not once per job: smoke.yaml's one model and
    # seed give keras-jax one training job (fp32) and one speed phase (mlp on jax).
    assert len([r for r in records if r["framework"] == "jax"]) == 2
    said = [line for line in result.stdout.splitlines() if line.startswith("unavailable")]
    assert said == ['unavailable keras-jax: 2 job(s) — jax is not installed; pip install "precision-suite[jax]"']


def test_run_without_frameworks_records_every_job_unavailable(tmp_path):
    out = tmp_path / "run"
    result = _run(
        "import precision_suite.cli\n"
        f"sys.exit(precision_suite.cli.main(['run', 'configs/smoke.yaml', '--out', {str(out)!r}]))"
    )
    assert result.returncode == 0, result.stderr
    records = (out / "results.jsonl").read_text().splitlines()
    # Two jobs and the speed phase of their (model, framework), every one unavailable.
    assert len([r for r in records if '"kind":"speed"' not in r]) == 2
    assert len(records) == 3 and all('"status":"unavailable"' in r for r in records)
