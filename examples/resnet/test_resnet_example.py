"""The ResNet example at CI size through the CLI: every row ok, paired parity verdicts, and the
per-step cross-framework verdict that ``convert`` makes possible (both frameworks start from the
torch weights)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("torch", "tensorflow", "keras", "sklearn")
missing = [name for name in FRAMEWORKS if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")
def test_resnet_example_runs_and_its_frameworks_agree(tmp_path):
    from precision_suite.cli import main
    from precision_suite.outputs.rundir import load_run

    out = tmp_path / "run"
    assert main(["run", str(HERE / "resnet.yaml"), "--out", str(out)]) == 0
    run = load_run(out)
    jobs = [r for r in run.records if "/ulp+" not in r["job_id"]]
    assert len(jobs) == 12 and {r["status"] for r in jobs} == {"ok"}
    (group,) = run.comparison.groups
    parity = [v for row in group.rows for v in row.verdicts if v.name == "parity"]
    assert len(parity) == 4 and all(v.equivalence.method == "paired" for v in parity)
    (cross,) = group.verdicts
    assert cross.name == "cross-framework" and cross.outcome != "fail"
    assert "per-step loss within" in cross.detail


@pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")
def test_converted_keras_resnet_computes_what_the_torch_one_does():
    """An independent check of ``torch_to_keras``: same weights, same fp32 logits (evaluation
    mode, running statistics) on a batch of digits, to rounding."""
    import sys

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    try:
        from resnet_example.data import load
        from resnet_example.models import build_keras, build_torch, torch_to_keras
    finally:
        sys.path.remove(str(HERE))
    x = load()["x_test"][:16]
    torch.manual_seed(0)
    net = build_torch(x.shape[1:], 10).eval()
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    model = build_keras(x.shape[1:], 10)
    torch_to_keras(state, model)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=1e-4, atol=1e-5)
