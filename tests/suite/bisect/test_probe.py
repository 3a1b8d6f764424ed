"""bisect's proxy on the positive controls: the block that breaks the policy ranks first, and a
healthy model's blocks stay within rounding of fp32 (so nothing there looks diverged)."""

from __future__ import annotations

import pytest
from precision_suite.bisect.command import Target, trial_config
from precision_suite.bisect.probe import probe
from precision_suite.bisect.search import DIVERGED_REL_ERROR, rank_blocks
from precision_suite.config import SuiteConfig
from precision_suite.plan import expand_jobs


def _jobs(kind: str, policy: str):
    config = SuiteConfig.model_validate(
        {
            "models": [
                {
                    "kind": "custom",
                    "name": "fragile_mlp",
                    "torch": f"tests.helpers.fragile_models:torch_{kind}",
                }
            ],
            "train": {"epochs": 1, "batch_size": 64},
            "seeds": [0],
            "device": "cpu",
        }
    )
    target = Target("torch-amp", policy, "torch-amp")
    jobs = expand_jobs(trial_config(config, config.models[0], target, [0], timed=False), "cpu")
    mine = next(j for j in jobs if j.policy == policy)
    return mine, next(j for j in jobs if j.policy == "fp32")


@pytest.mark.parametrize(("kind", "policy"), [("overflow", "fp16-mixed"), ("cancel", "bf16-mixed")])
def test_the_fragile_block_ranks_first_and_diverges_at_the_first_step(kind, policy):
    mine, reference = _jobs(kind, policy)
    found = probe(mine, reference, steps=3)
    assert found["blocks"] == ["dense_in", "fragile", "head"]
    ranking = rank_blocks(
        found["blocks"], [_view(e) for e in found["errors"]], "float16" if "fp16" in policy else "bfloat16"
    )
    assert ranking[0].name == "fragile" and ranking[0].first_divergent_step == 0
    assert all(s.first_divergent_step is None for s in ranking[1:]), "the blocks around it stay within rounding"


def test_a_healthy_model_has_no_diverging_block_and_errors_near_the_rounding_of_its_dtype():
    mine, reference = _jobs("healthy", "fp16-mixed")
    found = probe(mine, reference, steps=3)
    ranking = rank_blocks(found["blocks"], [_view(e) for e in found["errors"]], "float16")
    assert all(s.first_divergent_step is None and s.nonfinite == 0 for s in ranking)
    assert all(s.worst_error < DIVERGED_REL_ERROR["float16"] for s in ranking)
    assert all(s.worst_error > 0 for s in ranking), "the blocks really ran in half"


def _view(raw):
    from precision_suite.backends.base import BlockError

    return BlockError(**raw)
