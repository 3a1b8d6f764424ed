"""torch-amp: autocast + GradScaler."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.backends.reference.loss_scale import simulate
from precision_suite.config import MlpConfig

from tests.helpers.marks import TOLERANCES, needs_torch

pytestmark = needs_torch

if True:  # imported after the skip marker so collection works without torch
    from tests.helpers.torch import (
        OverflowInjector,
        assert_resume_matches_uninterrupted,
        assert_states_equal,
        make_backend,
        make_job,
        plan,
        resume_spec,
        run,
        tiny_data,
    )

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
BACKEND = "torch-amp"


def test_fp32_sets_tf32_off_and_records_it():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    data = tiny_data()
    backend = make_backend(make_job(BACKEND, "fp32"), data)
    env = backend.environment()
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert env["tf32_matmul"] is False and env["tf32_cudnn"] is False
    backend.teardown()
    assert torch.backends.cuda.matmul.allow_tf32 is True  # global state given back


@pytest.mark.parametrize(
    ("policy", "compute", "scaling"),
    [("fp32", "float32", "none"), ("fp16-mixed", "float16", "dynamic"), ("bf16-mixed", "bfloat16", "none")],
)
def test_observed_precision(policy, compute, scaling):
    data = tiny_data()
    backend = make_backend(make_job(BACKEND, policy), data)
    observed = backend.observed_precision()
    assert observed == {
        "compute_dtype": compute,
        "param_dtype": "float32",
        "master_dtype": "float32",
        "loss_scaling": scaling,
    }


def test_tf32_is_unsupported_on_cpu():
    from precision_suite.backends.torch.amp import TorchAmpBackend

    assert "CUDA" in TorchAmpBackend.unsupported_reason("tf32", "cpu")


def test_options_reject_unknown_keys():
    from precision_suite.backends.torch.amp import TorchAmpBackend
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TorchAmpBackend.Options.model_validate({"fussed": True})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [False, True])
def test_scale_trajectory_matches_reference(device, fused):
    overflow = {1, 2, 6, 7, 8}
    ls = {"init_scale": 256.0, "growth_interval": 3}
    data = tiny_data()
    job = make_job(
        BACKEND,
        "fp16-mixed",
        train={"steps": 14},
        loss_scale=ls,
        options={"fused": fused},
        device=device,
    )
    backend = make_backend(job, data)
    run(backend, plan(job, data), inject=OverflowInjector(backend, overflow))
    telemetry = backend.drain_telemetry()
    flags = [i in overflow for i in range(14)]
    ref_scales, ref_skipped, ref = simulate(flags, **ls)
    assert telemetry.loss_scale.tolist() == ref_scales.tolist()
    assert telemetry.skipped.tolist() == ref_skipped.tolist()
    assert backend.state_dict()["scaler"] == {
        "scale": ref.scale,
        "growth_tracker": ref.growth_tracker,
    }
    assert backend.state_dict()["applied_steps"] == 14 - len(overflow)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_skipped_step_leaves_params_and_optimizer_state_identical(fused, clip):
    data = tiny_data()
    job = make_job(
        BACKEND,
        "fp16-mixed",
        train={"grad_clip_norm": clip, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        options={"fused": fused},
    )
    backend = make_backend(job, data)
    rows = plan(job, data)
    inject = OverflowInjector(backend, {3})
    run(backend, rows[:3], inject=inject)
    before = backend.state_dict()
    run(backend, rows[3:4], start=3, inject=inject)
    after = backend.state_dict()
    assert_states_equal(before["model"], after["model"])
    assert_states_equal(before["optimizer"]["state"], after["optimizer"]["state"])
    assert after["applied_steps"] == before["applied_steps"] == 3
    assert after["skipped_steps"] == 1
    assert after["scaler"]["scale"] == before["scaler"]["scale"] / 2


@pytest.mark.parametrize("fused", [False, True])
def test_lr_schedule_advances_only_on_applied_steps(fused):
    data = tiny_data()
    job = make_job(
        BACKEND,
        "fp16-mixed",
        train={
            "optimizer": {"name": "sgd", "lr": 0.1},
            "lr_schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
        },
        options={"fused": fused},
    )
    backend = make_backend(job, data)
    rows = plan(job, data)
    inject = OverflowInjector(backend, {1})
    used = []
    for i in range(4):
        run(backend, rows[i : i + 1], start=i, inject=inject)
        used.append(float(backend.optimizer.param_groups[0]["lr"]))
    # Step 1 is skipped, so step 2 still uses the schedule's second value.
    assert used == pytest.approx([0.1, 0.05, 0.05, 0.025], rel=1e-6)


def _one_clipped_update(policy: str, clip: float) -> np.ndarray:
    from precision_suite.backends.torch.models import torch_model_weights

    data = tiny_data()
    job = make_job(
        BACKEND,
        policy,
        model=MlpConfig(hidden=[16]),
        train={"grad_clip_norm": clip, "optimizer": {"name": "sgd", "lr": 1.0}},
    )
    backend = make_backend(job, data)
    # Copies: torch_model_weights may return arrays sharing memory with the live parameters.
    before = {k: v.copy() for k, v in torch_model_weights(backend.model).items()}
    backend.train_step(plan(job, data)[0])
    after = torch_model_weights(backend.model)
    return np.concatenate([(after[k] - before[k]).ravel() for k in sorted(before)])


def test_clipping_after_unscale_matches_fp32_clipping():
    clip = 0.01
    update16 = _one_clipped_update("fp16-mixed", clip)
    update32 = _one_clipped_update("fp32", clip)
    # With lr 1 the update is the clipped gradient: its norm is the clip norm, not clip/scale.
    assert np.linalg.norm(update32) == pytest.approx(clip, rel=1e-5)
    assert np.linalg.norm(update16) == pytest.approx(clip, rel=TOLERANCES["float16"]["rtol"])
    np.testing.assert_allclose(update16, update32, rtol=1e-2, atol=2e-5)


def test_static_scale_never_moves_but_still_skips():
    data = tiny_data()
    job = make_job(BACKEND, "fp16-mixed", loss_scale={"dynamic": False, "init_scale": 64.0, "growth_interval": 1})
    backend = make_backend(job, data)
    run(backend, plan(job, data)[:4], inject=OverflowInjector(backend, {2}))
    telemetry = backend.drain_telemetry()
    assert telemetry.loss_scale.tolist() == [64.0] * 4
    assert telemetry.skipped.tolist() == [False, False, True, False]
    assert backend.observed_precision()["loss_scaling"] == "static"


def test_memory_accounting_on_cpu():
    data = tiny_data()
    backend = make_backend(make_job(BACKEND, "fp32", model=MlpConfig(hidden=[16])), data)
    backend.train_step(plan(backend.job, data)[0])
    stats = backend.memory_stats()
    n_params = 16 * 16 + 16 + 16 * 10 + 10
    assert stats.memory_source == "accounting (cpu)"
    assert stats.breakdown["weights"] == 4 * n_params
    assert stats.breakdown["gradients"] == 4 * n_params
    # Adam: exp_avg + exp_avg_sq per parameter (+ a 0-d step counter each).
    assert stats.breakdown["optimizer_state"] >= 8 * n_params
    assert stats.breakdown["activations"] > 0
    assert stats.peak_memory_bytes == sum(stats.breakdown.values())


@pytest.mark.parametrize("fused", [False, True])
def test_telemetry_drains_each_step_once(fused):
    data = tiny_data()
    job = make_job(BACKEND, "bf16-mixed", options={"fused": fused})
    backend = make_backend(job, data)
    run(backend, plan(job, data)[:3])
    first = backend.drain_telemetry()
    assert len(first.loss) == 3 and np.all(np.isfinite(first.loss))
    assert first.loss_scale.tolist() == [1.0] * 3 and not first.skipped.any()
    assert len(backend.drain_telemetry().loss) == 0


@pytest.mark.parametrize("policy", ["fp16-mixed", "bf16-mixed"])
def test_resume_in_new_process_is_bit_identical(tmp_path, policy):
    # growth_interval 3 with an overflow at step 1: clean steps 2,3,4 grow the scale after
    # step 4, so a checkpoint at k=4 sits just before a growth event.
    spec = resume_spec(BACKEND, policy, {"init_scale": 1024.0, "growth_interval": 3}, [1], k=4, n=8)
    if policy != "fp16-mixed":
        spec["overflow"] = []
    assert_resume_matches_uninterrupted(tmp_path, spec)


def test_underflow_positive_control():
    from tests.helpers.backends import assert_learns_only_with_scaling
    from tests.helpers.torch import underflow_control

    assert_learns_only_with_scaling(*underflow_control(BACKEND))


def _textbook_losses(job, data, lr_at) -> list[float]:
    """The loop PyTorch's docs write: a fused Adam given a Python-float lr each step."""
    import torch
    import torch.nn.functional as F
    from precision_suite.backends.torch.models import build_torch_model
    from precision_suite.models import init_weights, prepare_inputs

    weights = init_weights(job.model, data.input_shape, data.num_classes, job.seed)
    model = build_torch_model(job.model, data.input_shape, data.num_classes, weights)
    opt = torch.optim.Adam(model.parameters(), lr=lr_at(0), fused=True)
    x = torch.from_numpy(prepare_inputs(job.model, data.x_train))
    y = torch.from_numpy(data.y_train)
    losses = []
    for step, rows in enumerate(plan(job, data)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        index = torch.from_numpy(rows)
        loss = F.cross_entropy(model(x[index]).float(), y[index])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_fused_lr_is_exactly_the_configured_lr(schedule):
    """The on-device lr is not a float32 rounding of the configured one (1e-3 → 1.0000000475e-3):
    torch-amp ``fused: true`` gives the same per-step losses, bit for bit, as the textbook loop
    with Python-float lrs."""
    from precision_suite.backends.reference.lr_schedule import lr_factor

    data = tiny_data()
    train = {"steps": 30, "optimizer": {"name": "adam", "lr": 1e-3}, "lr_schedule": {"name": schedule}}
    job = make_job(BACKEND, "fp32", model=MlpConfig(hidden=[16]), train=train, options={"fused": True})
    backend = make_backend(job, data)
    run(backend, plan(job, data))
    got = backend.drain_telemetry().loss.tolist()
    want = _textbook_losses(job, data, lambda step: 1e-3 * lr_factor(job.train.lr_schedule, step, 30))
    assert got == want
    env = backend.environment()
    assert env["optimizer_impl"] == "fused"
    assert env["lr_dtype"] == ("python float" if schedule == "constant" else "float64 tensor")
