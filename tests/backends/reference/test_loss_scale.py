"""The framework-free loss-scale state machine, and its agreement with torch.amp.GradScaler."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from precision_suite.backends.reference.loss_scale import LossScaler, simulate
from precision_suite.config import LossScaleConfig

from tests.helpers.marks import needs_torch


def test_grows_after_exactly_growth_interval_finite_steps():
    scaler = LossScaler(init_scale=1024.0, growth_interval=5)
    for step in range(4):
        assert scaler.update(False) is False
        assert scaler.scale == 1024.0
        assert scaler.growth_tracker == step + 1
    scaler.update(False)
    assert scaler.scale == 2048.0
    assert scaler.growth_tracker == 0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_overflow_backs_off_skips_and_resets_tracker(bad):
    scaler = LossScaler(init_scale=1024.0, growth_interval=5)
    for _ in range(3):
        scaler.update(False)
    assert scaler.growth_tracker == 3
    found_inf = not math.isfinite(bad)
    assert scaler.update(found_inf) is True
    assert scaler.scale == 512.0
    assert scaler.growth_tracker == 0
    assert scaler.skipped_steps == 1
    # The interrupted run of clean steps starts over: growth needs 5 more.
    for _ in range(4):
        scaler.update(False)
    assert scaler.scale == 512.0
    scaler.update(False)
    assert scaler.scale == 1024.0


@settings(max_examples=60, deadline=None)
@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=60),
    interval=st.integers(1, 6),
    growth=st.sampled_from([2.0, 4.0]),
    backoff=st.sampled_from([0.5, 0.25]),
)
def test_final_scale_is_init_times_growth_and_backoff_powers(flags, interval, growth, backoff):
    # Powers of two with at most 60 steps stay inside float32's normal range, so the closed
    # form is exact.
    _, skipped, scaler = simulate(
        flags, init_scale=1.0, growth_factor=growth, backoff_factor=backoff, growth_interval=interval
    )
    # Count growth events independently of the implementation.
    growths, run = 0, 0
    for flag in flags:
        run = 0 if flag else run + 1
        if run == interval:
            growths, run = growths + 1, 0
    backoffs = sum(flags)
    assert scaler.scale == growth**growths * backoff**backoffs
    assert np.array_equal(skipped, np.asarray(flags))
    assert scaler.skipped_steps == backoffs


def test_scale_never_becomes_inf():
    scaler = LossScaler(init_scale=2.0**126, growth_interval=1)
    for _ in range(10):
        scaler.update(False)
    assert math.isfinite(scaler.scale)
    assert scaler.scale == 2.0**127
    assert scaler.growth_tracker == 0


def test_static_scale_skips_but_never_moves():
    scaler = LossScaler(init_scale=128.0, growth_interval=1, dynamic=False)
    decisions = [scaler.update(flag) for flag in (False, True, False, True)]
    assert decisions == [False, True, False, True]
    assert scaler.scale == 128.0
    assert scaler.mode == "static"


def test_disabled_scales_by_one_and_never_skips():
    scaler = LossScaler.from_config(LossScaleConfig(enabled=False))
    assert scaler.scale == 1.0
    assert scaler.update(True) is False
    assert scaler.skipped_steps == 0
    assert scaler.mode == "none"
    assert LossScaler.from_config(LossScaleConfig(), enabled=False).mode == "none"


def test_state_dict_round_trip_continues_identically():
    flags = [False, False, True, False, False, False, True, False, False, False]
    full = LossScaler(init_scale=64.0, growth_interval=3)
    for flag in flags:
        full.update(flag)
    first = LossScaler(init_scale=64.0, growth_interval=3)
    for flag in flags[:5]:
        first.update(flag)
    resumed = LossScaler(init_scale=64.0, growth_interval=3)
    resumed.load_state_dict(first.state_dict())
    for flag in flags[5:]:
        resumed.update(flag)
    assert resumed.state_dict() == full.state_dict()


def test_rejects_impossible_settings():
    with pytest.raises(ValueError, match="growth_factor"):
        LossScaler(growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler(backoff_factor=1.0)


# ---------------------------------------------------------------- against torch.amp.GradScaler
OVERFLOW_STEPS = {2, 3, 9, 10, 11, 17}
N_STEPS = 24


def overflow_flags() -> list[bool]:
    return [i in OVERFLOW_STEPS for i in range(N_STEPS)]


@needs_torch
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_matches_torch_grad_scaler(device):
    import torch

    kwargs = {"init_scale": 2.0**10, "growth_factor": 2.0, "backoff_factor": 0.5}
    param = torch.nn.Parameter(torch.ones(4, device=device))
    opt = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler(device, growth_interval=4, **kwargs)
    scales, skipped = [], []
    for step, flag in enumerate(overflow_flags()):
        loss = (param * float(step + 1)).sum()
        scaler.scale(loss).backward()
        if flag:
            param.grad[1] = math.inf if step % 2 else math.nan
        before = param.detach().clone()
        scales.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        skipped.append(bool(torch.equal(before, param.detach())))
        opt.zero_grad()
    ref_scales, ref_skipped, ref = simulate(overflow_flags(), growth_interval=4, **kwargs)
    assert scales == ref_scales.tolist()
    assert skipped == ref_skipped.tolist()
    assert scaler.get_scale() == ref.scale
    assert scaler._get_growth_tracker() == ref.growth_tracker
