"""The language-model example at CI size through the CLI: per-token labels (N, T), parity judged
on the test loss in nats (``parity.metric: loss``), paired per seed; the Keras twin starts from
the torch weights (``convert``), so the cross-framework verdict is per step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
missing = [name for name in ("torch", "tensorflow", "keras") if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")
def test_language_model_example_judges_parity_on_the_loss(tmp_path):
    from precision_suite.cli import main
    from precision_suite.outputs.rundir import load_run

    out = tmp_path / "run"
    assert main(["run", str(HERE / "lm.yaml"), "--out", str(out)]) == 0
    run = load_run(out)
    jobs = [r for r in run.records if "/ulp+" not in r["job_id"]]
    assert len(jobs) == 12 and {r["status"] for r in jobs} == {"ok"}
    (group,) = run.comparison.groups
    assert group.parity_metric == "loss" and group.tolerance_text == "±0.05 nats (test loss)"
    parity = [v for row in group.rows for v in row.verdicts if v.name == "parity"]
    assert len(parity) == 4
    for verdict in parity:
        assert verdict.equivalence.metric == "loss" and verdict.equivalence.method == "paired"
        assert verdict.detail.startswith("test loss Δ") and "nats" in verdict.detail
    # The paired difference is the one of the recorded test losses (nats), seed by seed.
    by_job = {(r["backend"], r["policy"], r["seed"]): r["metrics"]["test_loss"] for r in jobs}
    bf16 = next(v for v in parity if v.subject.endswith("torch-amp bf16-mixed"))
    diffs = [by_job[("torch-amp", "bf16-mixed", s)] - by_job[("torch-amp", "fp32", s)] for s in (0, 1)]
    assert bf16.equivalence.paired.estimate == pytest.approx(sum(diffs) / 2)
    (cross,) = group.verdicts
    assert cross.outcome != "fail" and "per-step loss within" in cross.detail
