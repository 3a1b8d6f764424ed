"""Compiled steps reused across the jobs of one worker (``COMPILED_STEPS``, backends/keras/common.py):
jobs run back to back with reuse give bit for bit what they give with it off (losses, loss
scales, skips, test accuracy and loss, final state), a checkpoint taken and loaded in a reusing
job continues exactly, and reuse is recorded. Also: what the key holds, where nothing is shared,
and that a mismatched entry falls back to a fresh trace."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from precision_suite.backends.keras import common
from precision_suite.backends.keras.common import (
    COMPILED_STEP_REUSED,
    COMPILED_STEP_TRACED,
    COMPILED_STEPS,
    REUSE_ENV,
    CompiledStepCache,
    compiled_step_key,
)
from precision_suite.config import CnnConfig, MlpConfig, TransformerConfig
from precision_suite.measure.loop import run_job

from tests.helpers.backends import assert_states_equal, make_backend, make_job, plan, tiny_data
from tests.helpers.marks import HAS_JAX, HAS_TF, needs_jax, needs_tf

KERAS_BACKENDS = [pytest.param("tf-keras", marks=needs_tf), pytest.param("keras-jax", marks=needs_jax)]

# Small versions of the default models, with dropout (its seed state must restart with each job)
# and the settings that live in optimizer and loss-scale variables: an lr schedule, clipping,
# weight decay, momentum, gradient accumulation, a dynamic loss scale that backs off and grows.
# A case is (backend, policy, model, train, loss_scale). keras-jax compiles a conv or attention step for
# seconds on a CPU, so its mixed-precision cases are the small ones.
MLP = MlpConfig(hidden=[32], dropout=0.1)
CNN = CnnConfig(channels=[4], dense=8, dropout=0.1)
TRANSFORMER = TransformerConfig(patch_size=4, d_model=16, num_heads=2, depth=1, dropout=0.1)
SCHEDULED = {"lr_schedule": {"name": "cosine", "warmup_steps": 3}, "grad_clip_norm": 1.0}
ADAMW = {"optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}}
ADAMW_ACCUMULATED = {**ADAMW, "grad_accumulation": 2}
SGD = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "steps": 8}
MOVING_SCALE = {"init_scale": 2.0**20, "growth_interval": 2}  # backs off, grows, backs off
CASES = [
    pytest.param("tf-keras", "fp32", MLP, SCHEDULED, {}, marks=needs_tf, id="tf-keras-mlp-fp32"),
    # The slowest case (an attention step traced twice); tf-keras's reuse stays covered by the
    # mlp and cnn cases, AdamW and accumulation by keras-jax's.
    pytest.param(
        "tf-keras",
        "bf16-mixed",
        TRANSFORMER,
        ADAMW_ACCUMULATED,
        {},
        marks=[needs_tf, pytest.mark.slow],
        id="tf-keras-transformer-bf16",
    ),
    pytest.param("tf-keras", "fp16-mixed", CNN, SGD, MOVING_SCALE, marks=needs_tf, id="tf-keras-cnn-fp16"),
    pytest.param("keras-jax", "fp32", MLP, SCHEDULED, {}, marks=needs_jax, id="keras-jax-mlp-fp32"),
    pytest.param(
        "keras-jax",
        "fp16-mixed",
        MLP,
        {**SGD, "grad_accumulation": 2},
        MOVING_SCALE,
        marks=needs_jax,
        id="keras-jax-mlp-fp16",
    ),
    pytest.param("keras-jax", "bf16-mixed", CNN, ADAMW, {}, marks=needs_jax, id="keras-jax-cnn-bf16"),
]


@pytest.fixture(autouse=True)
def _empty_cache():
    COMPILED_STEPS.clear()
    yield
    COMPILED_STEPS.clear()


def back_to_back_jobs(backend: str, policy: str, model: Any, train: dict, loss_scale: dict) -> list[Any]:
    """Seed 0, seed 1, a one-ulp noise-floor run of seed 0 stopped early, seed 0 again."""
    train = {"steps": 12, "batch_size": 32, **train}
    seed0, seed1 = (
        make_job(backend, policy, model=model, train=train, loss_scale=loss_scale, seed=seed) for seed in (0, 1)
    )
    noise_floor = dataclasses.replace(seed0, job_id=f"{seed0.job_id}/ulp+1", perturb_ulp=1, stop_after_steps=5)
    return [seed0, seed1, noise_floor, dataclasses.replace(seed0)]


def run_in_this_process(jobs: list[Any], reuse: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each job's record, with the final state it left, run one after another through the loop."""
    monkeypatch.setenv(REUSE_ENV, "1" if reuse else "0")
    records = []
    for job in jobs:
        final: dict[str, Any] = {}
        record = run_job(job, finish=lambda backend, record, final=final: final.update(backend.state_dict()))
        assert record["status"] == "ok", record["error"]
        records.append({**record, "state": final})
    return records


@pytest.mark.parametrize("backend, policy, model, train, loss_scale", CASES)
def test_reused_steps_give_what_fresh_traces_give_bit_for_bit(backend, policy, model, train, loss_scale, monkeypatch):
    jobs = back_to_back_jobs(backend, policy, model, train, loss_scale)
    # With reuse off every job starts from nothing, so seed 0 run again would repeat the first
    # run: it is compared with that (one fresh trace fewer; keras-jax compiles for seconds).
    fresh = run_in_this_process(jobs[:3], reuse=False, monkeypatch=monkeypatch)
    fresh.append(fresh[0])
    reused = run_in_this_process(jobs, reuse=True, monkeypatch=monkeypatch)

    assert [r["environ"]["compiled_step"] for r in fresh] == [f"traced (reuse off: {REUSE_ENV}=0)"] * 4
    assert [r["environ"]["compiled_step"] for r in reused] == [COMPILED_STEP_TRACED] + [COMPILED_STEP_REUSED] * 3
    for i, (a, b) in enumerate(zip(fresh, reused, strict=True)):
        for curve in ("train_loss", "loss_scale", "skipped", "test_accuracy"):
            assert a["curves"][curve] == b["curves"][curve], (i, curve)
        for metric in ("test_accuracy", "test_loss", "loss_scale_final", "skipped_steps"):
            assert a["metrics"][metric] == b["metrics"][metric], (i, metric)
        assert_states_equal(a["state"], b["state"], f"job {i}")
    # The comparison means something: the seed changes the run, the noise-floor run stops early.
    losses = [r["curves"]["train_loss"] for r in reused]
    assert losses[0] != losses[1] and len(losses[2]) == 5
    if loss_scale:  # the scale moved both ways
        scales = reused[0]["curves"]["loss_scale"]
        assert any(b < a for a, b in zip(scales, scales[1:], strict=False))
        assert any(b > a for a, b in zip(scales, scales[1:], strict=False))


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_checkpoint_in_a_reusing_job_continues_bit_for_bit(backend, monkeypatch):
    """A job running on an earlier job's compiled step saves a checkpoint mid-run; another reusing
    job loads it and finishes: the same final state and losses as the uninterrupted run, and as
    a run with reuse off."""
    monkeypatch.setenv(REUSE_ENV, "1")
    data = tiny_data()
    model = MlpConfig(hidden=[16], dropout=0.1)
    first, job = (make_job(backend, "fp32", model=model, seed=seed) for seed in (0, 1))
    rows, k = plan(job, data), 3

    make_backend(first, data).teardown()
    uninterrupted = make_backend(job, data)
    assert uninterrupted.compiled_step == COMPILED_STEP_REUSED
    for batch in rows[:k]:
        uninterrupted.train_step(batch)
    checkpoint = uninterrupted.state_dict()
    uninterrupted.drain_telemetry()
    for batch in rows[k:]:
        uninterrupted.train_step(batch)
    expected = {"state": uninterrupted.state_dict(), "loss": uninterrupted.drain_telemetry().loss}
    uninterrupted.teardown()

    resumed = make_backend(job, data)
    assert resumed.compiled_step == COMPILED_STEP_REUSED
    resumed.load_state_dict(checkpoint)
    for batch in rows[k:]:
        resumed.train_step(batch)
    assert_states_equal(expected["state"], resumed.state_dict())
    np.testing.assert_array_equal(expected["loss"], resumed.drain_telemetry().loss)
    resumed.teardown()

    monkeypatch.setenv(REUSE_ENV, "0")
    fresh = make_backend(job, data)
    for batch in rows:
        fresh.train_step(batch)
    assert_states_equal(expected["state"], fresh.state_dict())
    fresh.teardown()


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_an_entry_whose_variables_do_not_pair_up_is_traced_afresh(backend, monkeypatch):
    """Even under one key (forced here), a model of another shape is not run on the cached step."""
    monkeypatch.setattr(common, "compiled_step_key", lambda job, data: "one key for every job")
    data = tiny_data()
    make_backend(make_job(backend, "fp32", model=MlpConfig(hidden=[16])), data).teardown()
    other = make_job(backend, "fp32", model=MlpConfig(hidden=[8]))
    backend_obj = make_backend(other, data)
    assert backend_obj.compiled_step == COMPILED_STEP_TRACED
    for batch in plan(other, data):
        backend_obj.train_step(batch)
    loss = backend_obj.drain_telemetry().loss
    backend_obj.teardown()
    monkeypatch.setenv(REUSE_ENV, "0")
    fresh = make_backend(other, data)
    for batch in plan(other, data):
        fresh.train_step(batch)
    np.testing.assert_array_equal(loss, fresh.drain_telemetry().loss)
    fresh.teardown()


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_an_entry_serves_one_live_job_at_a_time_and_only_on_its_own_dataset(backend):
    job = make_job(backend, "fp32", model=MlpConfig(hidden=[16]))
    data = tiny_data()
    make_backend(job, data).teardown()
    reusing = make_backend(job, data)
    # The speed phase holds several jobs at once: a second live one must not share the model.
    alongside = make_backend(job, data)
    assert (reusing.compiled_step, alongside.compiled_step) == (COMPILED_STEP_REUSED, COMPILED_STEP_TRACED)
    assert reusing.model is not alongside.model
    alongside.teardown()
    reusing.teardown()
    twin = tiny_data()  # equal contents, another object: a graph may hold the data
    assert make_backend(job, twin).compiled_step == COMPILED_STEP_TRACED


@pytest.mark.skipif(not (HAS_TF and HAS_JAX), reason="needs both tensorflow and jax")
def test_switching_the_keras_runtime_empties_the_cache():
    from precision_suite.backends.keras.common import import_keras

    make_backend(make_job("tf-keras", "fp32", model=MlpConfig(hidden=[16])), tiny_data()).teardown()
    assert len(COMPILED_STEPS) == 1
    import_keras("jax")
    assert len(COMPILED_STEPS) == 0
    import_keras("tensorflow")


# ---------------------------------------------------------------- no framework needed
def test_the_key_ignores_only_what_never_shapes_a_step():
    data = tiny_data()
    job = make_job("tf-keras", "fp16-mixed")
    key = compiled_step_key(job, data)
    for same in (
        {"seed": 7, "job_id": "other"},
        {"perturb_ulp": 1, "stop_after_steps": 5},
        {"config_hash": "abc", "seed_looks": (3, 5), "timed": False},
    ):
        assert compiled_step_key(dataclasses.replace(job, **same), data) == key, same
    train = job.train
    for differs in (
        {"policy": "bf16-mixed"},
        {"model": MlpConfig(hidden=[16], dropout=0.2)},
        {"device": "cuda"},
        {"options": {"jit_compile": True}},
        {"train": train.model_copy(update={"batch_size": 32})},
        {"train": train.model_copy(update={"grad_accumulation": 2})},
        {"train": train.model_copy(update={"steps": 9})},  # the lr schedule spans the run
        {"train": train.model_copy(update={"grad_clip_norm": 1.0})},
        {"train": train.model_copy(update={"optimizer": train.optimizer.model_copy(update={"lr": 0.5})})},
        {"loss_scale": job.loss_scale.model_copy(update={"init_scale": 8.0})},
        {"loss_scale": job.loss_scale.model_copy(update={"dynamic": False})},
        {"backend": "keras-jax"},
        {"world_size": 2},
    ):
        assert compiled_step_key(dataclasses.replace(job, **differs), data) != key, differs
    assert compiled_step_key(job, tiny_data(n_train=96)) != key


def test_nothing_is_shared_off_the_cpu_when_switched_off_or_by_a_class_that_opts_out(monkeypatch):
    from precision_suite.backends import get_backend_class

    data = tiny_data()
    cls = get_backend_class("tf-keras")

    def why_traced(job: Any, backend_cls: Any = cls) -> str:
        backend = backend_cls()
        backend.job = job
        assert backend.find_compiled(data) is None and backend.compiled_key is None
        return backend.compiled_step

    assert why_traced(make_job("tf-keras", "fp32", device="cuda")) == "traced (reused on CPU only)"
    opted_out = type("OptedOut", (cls,), {"reuses_compiled_steps": False})
    assert why_traced(make_job("tf-keras", "fp32"), opted_out) == "traced (not shared by OptedOut)"
    monkeypatch.setenv(REUSE_ENV, "0")
    assert why_traced(make_job("tf-keras", "fp32")) == f"traced (reuse off: {REUSE_ENV}=0)"


def test_cache_keeps_the_most_recently_returned_entries_and_lends_each_once():
    data, other = tiny_data(), tiny_data()
    cache = CompiledStepCache(max_entries=2, max_bytes=100)
    entries = {key: common.CompiledFunctions(None, None, None, {"name": key}, nbytes=40) for key in "abc"}
    for key in "ab":
        cache.put(key, data, entries[key])
    assert cache.take("a", other) is None  # another dataset object
    assert cache.take("a", data) is entries["a"] and cache.take("a", data) is None  # lent out
    cache.put("a", data, entries["a"])  # back: now the most recent
    cache.put("c", data, entries["c"])
    assert len(cache) == 2 and cache.take("b", data) is None
    assert cache.take("a", data) is entries["a"] and cache.take("c", data) is entries["c"]
    assert cache.take(None, data) is None and len(cache) == 0
    # Bytes bound it too: 40 + 40 fit, a third pushes out the oldest, and one over budget alone
    # is not kept at all.
    cache = CompiledStepCache(max_entries=10, max_bytes=100)
    for key in "abc":
        cache.put(key, data, entries[key])
    assert len(cache) == 2 and cache.nbytes == 80 and cache.take("a", data) is None
    cache.put("big", data, common.CompiledFunctions(None, None, None, {}, nbytes=101))
    assert len(cache) == 0


@needs_tf
def test_a_tf_keras_entry_counts_the_data_its_graph_captured(monkeypatch):
    data = tiny_data()
    job = make_job("tf-keras", "fp32", model=MlpConfig(hidden=[16]))
    backend = make_backend(job, data)
    held = backend.compiled.nbytes
    assert held > data.x_train.nbytes + data.x_test.nbytes
    monkeypatch.setattr(COMPILED_STEPS, "max_bytes", held - 1)
    backend.teardown()
    assert len(COMPILED_STEPS) == 0
