"""MFU arithmetic: hand-computed FLOPs of tiny specs, torch's own FLOP counter as a second
opinion, the peak table's lookups and a record's MFU end to end."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.config import CnnConfig, MlpConfig, TransformerConfig
from precision_suite.measure.flops import (
    DEVICE_PEAKS,
    dataset_shape,
    device_peak,
    forward_flops_per_sample,
    mfu,
    peak_dtype,
    record_mfu,
    train_flops_per_sample,
)

from tests.helpers.marks import needs_torch
from tests.helpers.records import mfu_record

MLP = MlpConfig(hidden=[4])
CNN = CnnConfig(channels=[2, 3], kernel_size=3, dense=5)
TRANSFORMER = TransformerConfig(patch_size=2, d_model=4, num_heads=2, depth=1, mlp_ratio=2)

# Worked by hand, 2 FLOPs per multiply-accumulate:
#   mlp (1,2,3) → 6 features: 2·6·4 + 2·4·3 = 48 + 24
#   cnn (1,4,4): conv0 2·16·9·1·2 = 576, pool → 2x2, conv1 2·4·9·2·3 = 432, pool → 1x1,
#       dense 2·3·5 = 30, head 2·5·2 = 20
#   transformer (1,4,4), patch 2 → T=4 tokens of P=4 values, d=4, r=2:
#       embed 2·4·4·4 = 128; projections 4·2·4·4·4 = 512; q·kᵀ + w·v 2·2·4·4·4 = 256;
#       mlp 2·2·4·4·8 = 512; head 2·4·3 = 24
HAND = [
    (MLP, (1, 2, 3), 3, 72),
    (CNN, (1, 4, 4), 2, 1058),
    (TRANSFORMER, (1, 4, 4), 3, 1432),
]


@pytest.mark.parametrize(("model", "shape", "classes", "flops"), HAND, ids=lambda v: getattr(v, "kind", ""))
def test_forward_flops_match_hand_count(model, shape, classes, flops):
    assert forward_flops_per_sample(model, shape, classes) == flops
    assert train_flops_per_sample(model, shape, classes) == 3 * flops


def test_flops_accept_a_record_dict_and_scale_with_depth():
    as_dict = TRANSFORMER.model_dump(mode="json")
    assert forward_flops_per_sample(as_dict, (1, 4, 4), 3) == 1432
    deeper = TRANSFORMER.model_copy(update={"depth": 3})
    # Each extra block adds exactly one block's 512 + 256 + 512.
    assert forward_flops_per_sample(deeper, (1, 4, 4), 3) == 1432 + 2 * 1280


def test_gpt2_small_sized_block_matches_the_6n_rule():
    """Sanity at scale: with T ≪ d the per-token training FLOPs approach 6·(parameters in
    matmuls), the textbook estimate."""
    cfg = TransformerConfig(patch_size=4, d_model=768, num_heads=12, depth=12, mlp_ratio=4)
    t = 64  # (3, 32, 32) with patch 4
    per_token = train_flops_per_sample(cfg, (3, 32, 32), 10) / t
    matmul_params = 12 * 12 * 768 * 768 + 48 * 768 + 768 * 10 / t
    assert per_token == pytest.approx(6 * matmul_params, rel=0.02)


def test_mfu_arithmetic():
    # 3 GFLOP per sample at 1000 samples/s = 3 TFLOP/s; against 989.5 TFLOP/s.
    assert mfu(3e9, 1000.0, 989.5) == pytest.approx(3.0 / 989.5, rel=1e-12)
    with pytest.raises(ValueError, match="peak_tflops"):
        mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        ("fp32", "fp32"),
        ("tf32", "tf32"),
        ("fp16-mixed", "fp16"),
        ("bf16-mixed", "bf16"),
        ("bf16-pure", "bf16"),
    ],
)
def test_peak_dtype_follows_the_policy_table(policy, key):
    assert peak_dtype(policy) == key


def test_peak_dtype_rejects_unknown_policy():
    with pytest.raises(ValueError, match='unknown policy "fp8".*fp32'):
        peak_dtype("fp8")


@pytest.mark.parametrize(
    ("device_name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
        ("NVIDIA H200", "NVIDIA H200 SXM"),
        ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
        ("NVIDIA A10", "NVIDIA A10"),
        ("NVIDIA L4", "NVIDIA L4"),
        ("NVIDIA L40S", "NVIDIA L40S"),
        ("Tesla V100-SXM2-16GB", "NVIDIA V100 SXM2"),
        ("Tesla T4", "NVIDIA T4"),
    ],
)
def test_device_names_find_their_peak(device_name, expected):
    peak = device_peak(device_name)
    assert peak is not None and peak.name == expected
    assert peak.source


def test_cpu_and_unknown_devices_have_no_peak():
    assert device_peak("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz") is None
    assert device_peak(None) is None


def test_peak_table_is_dense_and_ordered():
    for _, peak in DEVICE_PEAKS:
        # Dense tensor-core peaks are at least the plain FP32 rate and bf16 == fp16 where both
        # exist (no card in the table has a faster bf16 than fp16 path).
        assert peak.tflops["fp16"] >= peak.tflops["fp32"]
        if "bf16" in peak.tflops:
            assert peak.tflops["bf16"] == peak.tflops["fp16"]
    h100 = device_peak("NVIDIA H100 80GB HBM3")
    assert h100.tflops["bf16"] == pytest.approx(1979 / 2)  # datasheet 1,979 "with sparsity"
    assert h100.tflops["tf32"] == pytest.approx(989 / 2)


def test_dataset_shape_from_config():
    assert dataset_shape({"name": "digits"}) == ((1, 8, 8), 10)
    assert dataset_shape({"name": "synthetic", "synthetic": {"shape": [3, 32, 32], "num_classes": 7}}) == (
        (3, 32, 32),
        7,
    )
    assert dataset_shape({"name": "synthetic", "synthetic": {"shape": [8, 8]}}) == ((1, 8, 8), 10)
    assert dataset_shape({"name": "npz", "path": "x.npz"}) is None


def test_record_mfu_end_to_end():
    out = record_mfu(mfu_record("bf16-mixed", "NVIDIA H100 80GB HBM3", 1e9), measured_peak_tflops=800.0)
    flops = 3 * 72
    assert out["model_tflop_per_sample"] == pytest.approx(flops / 1e12)
    assert out["achieved_tflops"] == pytest.approx(flops * 1e9 / 1e12)
    assert out["peak_dtype"] == "bf16" and out["peak_tflops"] == pytest.approx(989.5)
    assert out["mfu"] == pytest.approx(flops * 1e9 / 989.5e12)
    assert out["mfu_measured"] == pytest.approx(flops * 1e9 / 800e12)
    assert "H100" in out["peak_source"]


def test_record_mfu_without_peak_or_throughput():
    cpu = record_mfu(mfu_record("fp32", "Some CPU", 100.0))
    assert cpu["achieved_tflops"] > 0 and "mfu" not in cpu
    # V100 has no bf16 tensor cores: no peak to divide by, rather than a wrong one.
    assert "mfu" not in record_mfu(mfu_record("bf16-mixed", "Tesla V100-SXM2-16GB", 100.0))
    assert record_mfu(mfu_record("fp32", "NVIDIA A100", None)) is None
    npz = mfu_record("fp32", "NVIDIA A100", 10.0)
    npz["config"]["data"] = {"name": "npz", "path": "x.npz"}
    assert record_mfu(npz) is None
    npz["metrics"].update(input_shape=[6], num_classes=3)
    assert record_mfu(npz)["model_tflop_per_sample"] == pytest.approx(3 * 72 / 1e12)
    assert record_mfu(npz, input_shape=(6,), num_classes=3)["mfu"] == pytest.approx(3 * 72 * 10 / 19.5e12)


@needs_torch
@pytest.mark.parametrize(
    ("model", "shape", "classes"),
    [
        (MlpConfig(hidden=[32, 16]), (1, 8, 8), 10),
        (CnnConfig(channels=[4, 8], kernel_size=3, dense=16), (3, 8, 8), 10),
        (CnnConfig(channels=[4], kernel_size=2, dense=8), (1, 6, 6), 5),
        (TransformerConfig(patch_size=2, d_model=16, num_heads=4, depth=2, mlp_ratio=3), (1, 8, 8), 10),
    ],
    ids=["mlp", "cnn", "cnn-even-kernel", "transformer"],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_forward_flops_agree_with_torch_flop_counter(model, shape, classes):
    """torch's FlopCounterMode counts the same ops (mm/addmm/bmm/conv) on the real builder."""
    import torch
    from precision_suite.backends.torch.models import build_torch_model
    from precision_suite.models import init_weights, prepare_inputs
    from torch.utils.flop_counter import FlopCounterMode

    module = build_torch_model(model, shape, classes, init_weights(model, shape, classes, 0))
    x = torch.from_numpy(prepare_inputs(model, np.zeros((2, *shape), np.float32)))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    assert counter.get_total_flops() == 2 * forward_flops_per_sample(model, shape, classes)
