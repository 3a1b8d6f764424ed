"""``precision-suite bisect`` end to end on positive controls (``tests/helpers/fragile_models.py``):
a user's model (``kind: custom``) with one block that breaks a half precision on purpose must be
answered with exactly that block, and the run with it kept must pass parity — judged by ``check``
on that run's own records, not by bisect's word. A healthy twin needs nothing kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from precision_suite.bisect.record import read_bisect
from precision_suite.bisect.search import trial_bound
from precision_suite.cli import main
from precision_suite.results import RESULTS_FILE

from tests.helpers.cli import REPO_ROOT

CONTROLS = "tests.helpers.fragile_models"


def control_config(tmp_path: Path, kind: str) -> Path:
    config = {
        "models": [
            {
                "kind": "custom",
                "name": "fragile_mlp",
                "torch": f"{CONTROLS}:torch_{kind}",
                "keras": f"{CONTROLS}:keras_{kind}",
                "convert": f"{CONTROLS}:torch_to_keras",
            }
        ],
        "python_path": [str(REPO_ROOT)],
        "data": {"name": "digits"},
        "train": {"epochs": 4, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}},
        "backends": {"names": ["torch-amp", "tf-keras"]},
        "seeds": [0, 1, 2],
        "device": "cpu",
        "runner": {"parallel_jobs": 1},
        "speed": {"rounds": 3, "window_ms": 10, "batch_probe": False},
    }
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RESULTS_FILE).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("backend", "policy", "kind"),
    [
        # fp16 on a CPU runs on slow kernels (30-60 s each): slow. bf16 (about 20 s) runs in CI, so
        # a positive control of bisect always does.
        pytest.param("torch-amp", "fp16-mixed", "overflow", marks=pytest.mark.slow),
        pytest.param("tf-keras", "fp16-mixed", "overflow", marks=pytest.mark.slow),
        ("torch-amp", "bf16-mixed", "cancel"),
    ],
)
def test_bisect_names_exactly_the_fragile_block_and_the_run_keeping_it_passes(tmp_path, backend, policy, kind):
    out = tmp_path / "bisect"
    assert (
        main(
            ["bisect", str(control_config(tmp_path, kind)), "--backend", backend, "--policy", policy, "--out", str(out)]
        )
        == 0
    )
    (model,) = read_bisect(out).models
    assert model.keep_fp32 == ["fragile"]
    assert model.ranking[0]["name"] == "fragile", "the proxy ranks the fragile block first"
    search = [t for t in model.trials if t.kind == "search"]
    assert len(search) <= trial_bound(len(model.blocks), 1)
    # The runs themselves: nothing kept fails parity, the fragile block kept passes it.
    assert main(["check", str(out / "fragile_mlp" / "nothing-kept-full")]) == 1
    assert main(["check", model.verdict_run_dir]) == 0
    kept = [r for r in _records(Path(model.verdict_run_dir)) if r.get("policy") == policy and r.get("observed")]
    assert kept and all(r["observed"]["keep_fp32"]["fragile"]["compute_dtype"] == "float32" for r in kept)
    assert "keep_fp32: [fragile]" in (out / "bisect.md").read_text()
    # Resumable: the same bisect again runs nothing new and gives the same answer.
    before = sorted(p.stat().st_size for p in out.rglob(RESULTS_FILE))
    assert (
        main(
            ["bisect", str(control_config(tmp_path, kind)), "--backend", backend, "--policy", policy, "--out", str(out)]
        )
        == 0
    )
    assert sorted(p.stat().st_size for p in out.rglob(RESULTS_FILE)) == before
    assert read_bisect(out).models[0].keep_fp32 == ["fragile"]


def test_a_healthy_model_needs_nothing_kept(tmp_path):
    out = tmp_path / "bisect"
    config = control_config(tmp_path, "healthy")
    assert main(["bisect", str(config), "--backend", "torch-amp", "--policy", "fp16-mixed", "--out", str(out)]) == 0
    (model,) = read_bisect(out).models
    assert model.keep_fp32 == [] and model.verdict == "pass"
    assert [t.kind for t in model.trials] == ["endpoint: nothing kept"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "torch-amp", "--policy", "fp32"], "fp32 computes in float32, nothing to keep"),
        (["--backend", "torch-ampp", "--policy", "fp16-mixed"], 'unknown backend "torch-ampp"'),
        (["--backend", "torch-amp", "--policy", "fp16-pure"], 'torch-amp has no policy "fp16-pure"'),
        (["--backend", "torch-amp", "--policy", "bf16-mixed", "--model", "resnet"], 'no model "resnet"'),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["bisect", *args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
