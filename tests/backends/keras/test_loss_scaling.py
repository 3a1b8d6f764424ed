"""Loss scaling in every Keras runtime backend (tf-keras, keras-jax): settings Keras cannot
express rejected up front, the dynamic scale trajectory against the reference state machine,
static scaling that still skips overflow, and a fresh-process resume that continues bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from precision_suite.backends import get_backend_class
from precision_suite.backends.reference.loss_scale import simulate

from tests.helpers.keras import (
    RESUME,
    assert_resume_matches_uninterrupted,
    make_backend,
    make_job,
    rows_of,
    tiny_data,
)
from tests.helpers.marks import needs_jax, needs_tf
from tests.helpers.torch import assert_states_equal

KERAS_BACKENDS = [pytest.param("tf-keras", marks=needs_tf), pytest.param("keras-jax", marks=needs_jax)]


@pytest.mark.parametrize("name", ["tf-keras", "keras-jax"])
@pytest.mark.parametrize("key, value", [("growth_factor", 3.0), ("backoff_factor", 0.25)], ids=["growth", "backoff"])
def test_factors_keras_cannot_express_are_rejected_up_front(name, key, value):
    cls = get_backend_class(name)
    job = make_job("fp16-mixed", backend=name, loss_scale={key: value})
    problem = cls.config_problem(job)
    assert problem is not None and f"loss_scale.{key}" in problem and name in problem
    assert "LossScaleOptimizer" in problem and "\n" not in problem
    with pytest.raises(ValueError, match=f"loss_scale.{key}"):
        cls().setup(job, {}, tiny_data())
    # Where Keras does not scale dynamically the factors mean nothing: no complaint.
    assert cls.config_problem(make_job("bf16-mixed", backend=name, loss_scale={key: value})) is None
    static = make_job("fp16-mixed", backend=name, loss_scale={key: value, "dynamic": False})
    assert cls.config_problem(static) is None


@pytest.mark.parametrize("name", KERAS_BACKENDS)
def test_scale_trajectory_skips_and_growth_match_the_reference(name):
    overflow = {1, 2, 6, 7, 8}
    ls = {"init_scale": 256.0, "growth_interval": 3}
    data = tiny_data()
    job = make_job("fp16-mixed", backend=name, train={"steps": 14, "grad_clip_norm": 1.0}, loss_scale=ls)
    backend = make_backend(job, data)
    rows = rows_of(job, data, overflow)
    backend.train_step(rows[0])
    before = backend.state_dict()
    backend.train_step(rows[1])  # overflows
    after = backend.state_dict()
    # A skipped step changes no weight and no optimizer slot, and does not count as an
    # applied step (the lr schedule's index); only the scale halves and the counter resets.
    assert_states_equal(before["weights"], after["weights"])
    assert after["iterations"] == before["iterations"] == 1
    assert after["loss_scale"] == {"scale": 128.0, "growth_tracker": 0}
    for batch in rows[2:]:
        backend.train_step(batch)
    telemetry = backend.drain_telemetry()
    flags = [i in overflow for i in range(14)]
    ref_scales, ref_skipped, ref = simulate(flags, **ls)
    assert telemetry.skipped.tolist() == ref_skipped.tolist() == flags
    assert telemetry.loss_scale.tolist() == ref_scales.tolist()
    assert backend.state_dict()["loss_scale"] == {"scale": ref.scale, "growth_tracker": ref.growth_tracker}
    assert backend.state_dict()["iterations"] == 14 - len(overflow)
    assert ref_scales.max() > ref_scales[3]  # the run did grow the scale after clean steps
    backend.teardown()


@pytest.mark.parametrize("name", KERAS_BACKENDS)
def test_static_scale_never_moves_but_still_skips_overflow(name):
    data = tiny_data()
    job = make_job("fp16-mixed", backend=name, train={"steps": 4}, loss_scale={"dynamic": False})
    backend = make_backend(job, data)
    rows = rows_of(job, data, {2})
    for batch in rows[:2]:
        backend.train_step(batch)
    before = backend.state_dict()
    backend.train_step(rows[2])
    after = backend.state_dict()
    backend.train_step(rows[3])
    telemetry = backend.drain_telemetry()
    assert telemetry.loss_scale.tolist() == [65536.0] * 4
    assert telemetry.skipped.tolist() == [False, False, True, False]
    assert_states_equal(before["weights"], after["weights"])
    assert after["iterations"] == 2 and backend.state_dict()["iterations"] == 3
    assert all(np.all(np.isfinite(w)) for w in backend.state_dict()["weights"].values())
    backend.teardown()


# keras-jax's checkpoint (loss-scale state included) round-trips in-process for every policy in
# tests/backends/test_contract.py; the fresh process (minutes of jax compiling on 2 cores) is slow.
@pytest.mark.parametrize(
    "name", [pytest.param("tf-keras", marks=needs_tf), pytest.param("keras-jax", marks=[needs_jax, pytest.mark.slow])]
)
def test_resume_in_a_fresh_process_continues_identically(tmp_path, name):
    states = assert_resume_matches_uninterrupted(tmp_path, name)
    # growth_interval 3 with an overflow at step 1: the checkpoint at k=4 sits just before a
    # growth event.
    assert states["checkpoint"]["loss_scale"] == {"scale": 512.0, "growth_tracker": 2}
    flags = [i in RESUME["overflow"] for i in range(RESUME["n"])]
    _, _, ref = simulate(flags, **RESUME["loss_scale"])
    assert states["final"]["loss_scale"] == {"scale": ref.scale, "growth_tracker": ref.growth_tracker}
    assert ref.scale > 1024.0  # the scale grew after the checkpoint
