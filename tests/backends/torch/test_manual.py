"""torch-manual: half working copy, fp32 master weights, hand-written loss scaling."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.backends.reference.loss_scale import simulate
from precision_suite.config import CnnConfig, MlpConfig

from tests.helpers.marks import TOLERANCES, needs_torch

pytestmark = needs_torch

if True:  # after the skip marker so collection works without torch
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
BACKEND = "torch-manual"


@pytest.mark.parametrize(
    ("policy", "half", "master", "scaling"),
    [
        ("fp16-mixed", "float16", "float32", "dynamic"),
        ("bf16-mixed", "bfloat16", "float32", "none"),
        ("fp16-pure", "float16", "float16", "dynamic"),
        ("bf16-pure", "bfloat16", "bfloat16", "none"),
    ],
)
def test_observed_precision_and_fp32_norms(policy, half, master, scaling):
    data = tiny_data()
    job = make_job(BACKEND, policy, model=CnnConfig(channels=[4], dense=8))
    backend = make_backend(job, data)
    assert backend.observed_precision() == {
        "compute_dtype": half,
        "param_dtype": half,
        "master_dtype": master,
        "loss_scaling": scaling,
    }
    assert str(backend.model.bn0.weight.dtype) == "torch.float32"
    assert str(backend.model.conv0.weight.dtype) == f"torch.{half}"
    backend.train_step(plan(job, data)[0])  # BatchNorm in fp32 inside a half network runs
    assert np.isfinite(backend.drain_telemetry().loss).all()


def test_working_copy_equals_master_cast_after_every_step():
    import torch

    data = tiny_data()
    job = make_job(BACKEND, "fp16-mixed", loss_scale={"init_scale": 512.0, "growth_interval": 2})
    backend = make_backend(job, data)
    inject = OverflowInjector(backend, {2})
    for i, rows in enumerate(plan(job, data)):
        run(backend, [rows], start=i, inject=inject)
        for working, master in zip(backend.working, backend.master, strict=True):
            assert master.dtype == torch.float32
            assert torch.equal(working.detach(), master.to(torch.float16))
    assert backend.drain_telemetry().skipped.tolist() == [i == 2 for i in range(8)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", ["fp16-mixed", "fp16-pure"])
def test_scale_trajectory_matches_reference(device, policy):
    overflow = {0, 4, 5, 9}
    ls = {"init_scale": 2.0**12, "growth_interval": 2}
    data = tiny_data()
    job = make_job(BACKEND, policy, train={"steps": 12}, loss_scale=ls, device=device)
    backend = make_backend(job, data)
    run(backend, plan(job, data), inject=OverflowInjector(backend, overflow))
    telemetry = backend.drain_telemetry()
    ref_scales, ref_skipped, ref = simulate([i in overflow for i in range(12)], **ls)
    assert telemetry.loss_scale.tolist() == ref_scales.tolist()
    assert telemetry.skipped.tolist() == ref_skipped.tolist()
    state = backend.state_dict()
    assert state["scaler"] == {"scale": ref.scale, "growth_tracker": ref.growth_tracker}
    assert state["skipped_steps"] == len(overflow)
    assert state["applied_steps"] == 12 - len(overflow)


@pytest.mark.parametrize("policy", ["fp16-mixed", "fp16-pure"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_skipped_step_leaves_params_and_optimizer_state_identical(policy, optimizer):
    data = tiny_data()
    job = make_job(
        BACKEND,
        policy,
        train={
            "grad_clip_norm": 0.5,
            "optimizer": {"name": optimizer, "lr": 0.05, "momentum": 0.9 if optimizer == "sgd" else 0},
        },
    )
    backend = make_backend(job, data)
    rows = plan(job, data)
    inject = OverflowInjector(backend, {0, 3})  # a skipped first step too: lazy state stays sane
    run(backend, rows[:3], inject=inject)
    before = backend.state_dict()
    run(backend, rows[3:4], start=3, inject=inject)
    after = backend.state_dict()
    assert_states_equal(before["model"], after["model"])
    assert_states_equal(before["master"], after["master"])
    assert_states_equal(before["optimizer"]["state"], after["optimizer"]["state"])
    assert after["skipped_steps"] == 2 and after["applied_steps"] == 2
    run(backend, rows[4:6], start=4, inject=inject)
    assert np.isfinite(backend.drain_telemetry().loss).all()
    assert all(np.isfinite(m).all() for m in backend.state_dict()["master"])


def test_clipping_after_unscale_matches_fp32_clipping():
    from precision_suite.backends.torch.models import torch_model_weights

    clip = 0.01
    updates = []
    for backend_name, policy in (("torch-manual", "fp16-mixed"), ("torch-amp", "fp32")):
        data = tiny_data()
        job = make_job(
            backend_name,
            policy,
            model=MlpConfig(hidden=[16]),
            train={"grad_clip_norm": clip, "optimizer": {"name": "sgd", "lr": 1.0}},
        )
        backend = make_backend(job, data)
        if policy == "fp32":
            before = {k: v.copy() for k, v in torch_model_weights(backend.model).items()}
            backend.train_step(plan(job, data)[0])
            after = torch_model_weights(backend.model)
            updates.append(np.concatenate([(after[k] - before[k]).ravel() for k in sorted(before)]))
        else:
            masters = [m.detach().clone() for m in backend.master]
            backend.train_step(plan(job, data)[0])
            delta = [(m.detach() - b).numpy() for m, b in zip(backend.master, masters, strict=True)]
            # master order = module parameter order; map onto canonical sorted names
            names = ["dense0.kernel", "dense0.bias", "head.kernel", "head.bias"]
            by_name = dict(zip(names, delta, strict=True))
            for k in ("dense0.kernel", "head.kernel"):
                by_name[k] = by_name[k].T
            updates.append(np.concatenate([by_name[k].ravel() for k in sorted(by_name)]))
    update16, update32 = updates
    assert np.linalg.norm(update16) == pytest.approx(clip, rel=TOLERANCES["float16"]["rtol"])
    np.testing.assert_allclose(update16, update32, rtol=1e-2, atol=2e-5)


def test_static_and_disabled_scaling():
    data = tiny_data()
    job = make_job(BACKEND, "fp16-mixed", loss_scale={"dynamic": False, "init_scale": 32.0})
    backend = make_backend(job, data)
    run(backend, plan(job, data)[:3], inject=OverflowInjector(backend, {1}))
    telemetry = backend.drain_telemetry()
    assert telemetry.loss_scale.tolist() == [32.0] * 3
    assert telemetry.skipped.tolist() == [False, True, False]

    job = make_job(BACKEND, "fp16-mixed", loss_scale={"enabled": False})
    backend = make_backend(job, data)
    run(backend, plan(job, data)[:2])
    assert backend.drain_telemetry().loss_scale.tolist() == [1.0, 1.0]
    assert backend.observed_precision()["loss_scaling"] == "none"


def test_memory_accounting_counts_master_copies():
    data = tiny_data()
    backend = make_backend(make_job(BACKEND, "bf16-mixed", model=MlpConfig(hidden=[16])), data)
    backend.train_step(plan(backend.job, data)[0])
    stats = backend.memory_stats()
    n_params = 16 * 16 + 16 + 16 * 10 + 10
    assert stats.memory_source == "accounting (cpu)"
    assert stats.breakdown["weights"] == 2 * n_params
    assert stats.breakdown["master_weights"] == 4 * n_params
    assert stats.breakdown["gradients"] == 2 * n_params + 4 * n_params
    assert stats.breakdown["activations"] > 0


@pytest.mark.parametrize("policy", ["fp16-mixed", "bf16-pure"])
def test_resume_in_new_process_is_bit_identical(tmp_path, policy):
    # Overflow at step 1, growth_interval 3: the scale grows after step 4; checkpoint at k=4.
    spec = resume_spec(BACKEND, policy, {"init_scale": 1024.0, "growth_interval": 3}, [1], k=4, n=8)
    if not policy.startswith("fp16"):
        spec["overflow"] = []
    assert_resume_matches_uninterrupted(tmp_path, spec)


def test_underflow_positive_control():
    from tests.helpers.backends import assert_learns_only_with_scaling
    from tests.helpers.torch import underflow_control

    assert_learns_only_with_scaling(*underflow_control(BACKEND))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("policy", ["fp16-pure", "bf16-pure"])
def test_pure_sgd_trains_on_cpu(policy, momentum):
    """torch 2.13's fused CPU SGD kernel never stores the update of half weights (pytorch#191763):
    through it, 20 steps of this run change none of the weights but the head bias. The backend
    must not use a kernel that is wrong, and must say which implementation ran."""
    import torch
    from precision_suite.config import DataConfig
    from precision_suite.data import load_dataset

    data = load_dataset(DataConfig())
    train = {"steps": 20, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 1e-2, "momentum": momentum}}
    job = make_job(BACKEND, policy, model=MlpConfig(hidden=[128, 64]), train=train)
    backend = make_backend(job, data)
    before = [p.detach().clone() for p in backend.model.parameters()]
    run(backend, plan(job, data))
    changed = [(p.detach() != b) for p, b in zip(backend.model.parameters(), before, strict=True)]
    share = sum(int(c.sum()) for c in changed) / sum(c.numel() for c in changed)
    assert share > 0.4
    assert min(float(c.float().mean()) for c in changed) > 0.3  # every tensor trains, not just one
    env = backend.environment()
    assert env["optimizer_impl"] in ("fused", "foreach", "for-loop")
    assert env["optimizer_impl_reason"]
    assert env["lr_dtype"] == "python float"
    half = torch.float16 if policy == "fp16-pure" else torch.bfloat16
    assert all(p.dtype == half for p in backend.working)  # an mlp has no fp32 norm parameters


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_fused_probe_agrees_with_a_direct_check_of_the_kernel(dtype, device):
    """The probe's verdict on the fused SGD kernel equals what a direct reproduction shows
    (an SGD step that changes almost every weight), whatever the torch version."""
    import torch
    from precision_suite.backends.torch.optim import fused_kernel_ok
    from precision_suite.config import OptimizerConfig

    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(128, 64, generator=gen).to(torch_dtype).to(device).requires_grad_()
    p0 = p.detach().clone()
    opt = torch.optim.SGD([p], lr=0.05, momentum=0.9, fused=True)
    p.grad = torch.randn(128, 64, generator=gen).to(torch_dtype).to(device)
    opt.step()
    kernel_right = float((p.detach() != p0).float().mean()) > 0.9
    ok, reason = fused_kernel_ok(OptimizerConfig(name="sgd", momentum=0.9, lr=0.05), torch_dtype, device)
    assert ok == kernel_right, reason


@pytest.mark.parametrize("policy", ["fp16-pure", "bf16-pure"])
def test_pure_sgd_resume_in_new_process_is_bit_identical(tmp_path, policy):
    spec = resume_spec(
        BACKEND,
        policy,
        {"init_scale": 1024.0, "growth_interval": 3},
        [1] if policy == "fp16-pure" else [],
        k=4,
        n=8,
        train={"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    )
    assert_resume_matches_uninterrupted(tmp_path, spec)


@pytest.mark.parametrize("policy", ["fp16-mixed", "bf16-mixed"])
def test_master_weights_are_the_exact_fp32_init(policy):
    """The master copy starts from the fp32 initial weights, not from their half rounding; the
    working copy is their rounding, and fp32 norm parameters are the init itself."""
    import torch
    from precision_suite.backends.torch.models import build_torch_model
    from precision_suite.models import init_weights

    data = tiny_data()
    job = make_job(BACKEND, policy, model=CnnConfig(channels=[4], dense=8))
    weights = init_weights(job.model, data.input_shape, data.num_classes, job.seed)
    reference = list(build_torch_model(job.model, data.input_shape, data.num_classes, weights).parameters())
    backend = make_backend(job, data, weights)
    assert len(backend.master) == len(reference)
    half = backend.compute_dtype
    for master, working, init in zip(backend.master, backend.working, reference, strict=True):
        assert master.dtype == torch.float32
        assert torch.equal(master, init.detach())
        assert torch.equal(working.detach(), init.detach().to(working.dtype))
    assert any(not torch.equal(init.detach().to(half).float(), init.detach()) for init in reference)
