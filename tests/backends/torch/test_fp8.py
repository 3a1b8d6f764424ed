"""torch-amp fp8-mixed: torchao's float8 training, emulated on the CPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from precision_suite.config import MlpConfig, TransformerConfig
from precision_suite.verdicts.compare import FAIL, PASS, compare

from tests.helpers.marks import needs_torch
from tests.helpers.records import make_record

pytestmark = [
    needs_torch,
    pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (.[fp8])"),
]

if True:  # imported after the skip marker so collection works without torch
    from tests.helpers.torch import make_backend, make_job, plan, run, tiny_data

BACKEND = "torch-amp"
MLP = MlpConfig(hidden=[32, 16])  # tiny_data: 16 inputs → 32 → 16 → 10 classes


def _fp8_job(recipe: str = "tensorwise", model=MLP, **kwargs):
    return make_job(BACKEND, "fp8-mixed", model=model, options={"fp8_recipe": recipe}, **kwargs)


@pytest.mark.parametrize(("recipe", "gradient"), [("tensorwise", "float8_e5m2"), ("rowwise", "float8_e4m3fn")])
def test_eligible_linears_run_in_fp8_and_the_rest_in_bf16(recipe, gradient):
    from torchao.float8.float8_linear import Float8Linear

    backend = make_backend(_fp8_job(recipe), tiny_data())
    model = backend.model
    assert [name for name, m in model.named_modules() if isinstance(m, Float8Linear)] == ["dense0", "dense1"]
    fp8 = backend.environment()["fp8"]
    assert fp8["converted"] == ["dense0", "dense1"]
    assert fp8["not_converted"] == {"head": "out 10 not a multiple of 16 (FP8 GEMM kernels need it)"}
    assert fp8["recipe"] == recipe and fp8["emulate"] is True and "cpu" in fp8["emulate_reason"]
    observed = backend.observed_precision()
    assert observed["compute_dtype"] == "bfloat16"  # the unconverted head under bf16 autocast
    assert observed["master_dtype"] == observed["param_dtype"] == "float32"
    assert observed["loss_scaling"] == "none"
    assert observed["fp8_layers"] == ["dense0", "dense1"]
    # The operands seen in the matmuls: e4m3 forward; the output gradient in the recipe's format.
    assert observed["fp8_operands"] == {"forward": ["float8_e4m3fn"], "backward": sorted({"float8_e4m3fn", gradient})}
    # The optimizer updates the very fp32 parameters the Float8Linear modules read.
    updated = {id(p) for group in backend.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters()} == updated
    backend.teardown()


def test_fp8_mixed_trains_and_stays_near_bf16():
    data = tiny_data()
    losses = {}
    for policy in ("bf16-mixed", "fp8-mixed"):
        job = make_job(BACKEND, policy, model=MLP, train={"steps": 24})
        backend = make_backend(job, data)
        run(backend, plan(job, data))
        losses[policy] = backend.drain_telemetry().loss
        assert np.all(backend.drain_telemetry().loss.size == 0)
        assert all(p.grad is None for p in backend.model.parameters())  # observation touched no .grad
        backend.observed_precision()
        assert all(p.grad is None for p in backend.model.parameters())
        backend.teardown()
    fp8 = losses["fp8-mixed"]
    assert np.all(np.isfinite(fp8)) and fp8[-4:].mean() < fp8[:4].mean() - 0.3  # it learns
    # Same weights and batches: FP8 follows the bf16 curve closely (measured max |Δ| 0.03).
    np.testing.assert_allclose(fp8, losses["bf16-mixed"], atol=0.15)


def test_transformer_converts_every_projection():
    model = TransformerConfig(patch_size=4, d_model=16, num_heads=2, depth=1)
    backend = make_backend(_fp8_job(model=model), tiny_data())
    converted = backend.environment()["fp8"]["converted"]
    assert converted == [
        "embed",
        "block0.attn.q",
        "block0.attn.k",
        "block0.attn.v",
        "block0.attn.out",
        "block0.mlp1",
        "block0.mlp2",
    ]
    backend.teardown()


def test_a_silently_unconverted_model_fails_precision_active(monkeypatch):
    import precision_suite.backends.torch.fp8 as torch_fp8

    monkeypatch.setattr(torch_fp8, "fp8_eligible", lambda n_in, n_out: "refused by the test")
    backend = make_backend(_fp8_job(), tiny_data())
    observed = backend.observed_precision()
    backend.teardown()
    assert observed["compute_dtype"] == "bfloat16"  # the dtypes alone look right...
    verdict = compare([make_record(BACKEND, "fp8-mixed", observed=observed)]).rows[0].verdict("precision-active")
    assert verdict.outcome == FAIL and "no layer ran in FP8" in verdict.detail  # ...the FP8 evidence does not
    monkeypatch.undo()
    converted = make_backend(_fp8_job(), tiny_data())
    observed = converted.observed_precision()
    converted.teardown()
    verdict = compare([make_record(BACKEND, "fp8-mixed", observed=observed)]).rows[0].verdict("precision-active")
    assert verdict.outcome == PASS and "float8_e4m3fn" in verdict.detail


def test_without_torchao_fp8_is_unavailable_with_the_extra_named(monkeypatch):
    import precision_suite.backends.torch.fp8 as torch_fp8
    from precision_suite.backends import get_backend_class

    cls = get_backend_class(BACKEND)
    assert cls.unsupported_reason("fp8-mixed", "cpu") is None
    monkeypatch.setattr(torch_fp8, "torchao_available", lambda: False)
    reason = cls.unsupported_reason("fp8-mixed", "cpu")
    assert "torchao" in reason and "precision-suite[fp8]" in reason
    assert cls.unsupported_reason("bf16-mixed", "cpu") is None
