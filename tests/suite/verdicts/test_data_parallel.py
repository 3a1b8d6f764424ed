"""Data-parallel planning, verdicts and the scaling table, from jobs and records alone (no
framework): job ids and references per world size, config errors, replica-consistency,
data-parallel and weak-scaling arithmetic."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from precision_suite.config import ConfigError, load_config, validate
from precision_suite.plan import expand_jobs
from precision_suite.verdicts.compare import compare
from precision_suite.verdicts.data_parallel import data_parallel, replica_consistency, scaling_rows

from tests.helpers.data_parallel import dp_config


def test_each_world_size_is_a_job_and_fp32_gets_a_one_process_reference_trained_in_the_replicas_slices():
    raw = dp_config("torch-amp", "fp32", world_size=[1, 2, 4])
    raw["backends"]["policies"]["torch-amp"] = ["fp32", "bf16-mixed"]
    raw["train"]["grad_accumulation"] = 2
    jobs = expand_jobs(validate(raw, "test"), "cpu")
    by_id = {j.job_id: j for j in jobs}
    base = "mlp/digits/torch-amp"
    assert by_id[f"{base}/fp32/seed0"].world_size == 1  # ws=1 keeps the plain id
    assert by_id[f"{base}/fp32/seed0/ws2"].world_size == 2
    assert by_id[f"{base}/bf16-mixed/seed0/ws4"].world_size == 4
    assert by_id[f"{base}/fp32/seed0/ws2"].train.batch_size == 16  # per replica
    # The reference: one process at the global batch of 64 rows, in 4 replicas' slices of 16
    # rows, each its replica's 2 micro-batches of 8 rows: 8 micro-batches of 8 rows.
    reference = by_id[f"{base}/fp32/seed0/ws1-batch64-shards4"]
    assert (reference.world_size, reference.role) == (1, "dp-reference")
    assert (reference.train.batch_size, reference.train.grad_accumulation) == (64, 8)
    assert by_id[f"{base}/fp32/seed0/ws1-batch32-shards2"].train.grad_accumulation == 4
    assert not [j for j in jobs if j.role and j.policy != "fp32"]  # references are fp32 only
    # ... and each reference a one-ulp noise-floor run: the data-parallel verdict's horizon.
    nudged = by_id[f"{base}/fp32/seed0/ws1-batch64-shards4/ulp+1"]
    assert (nudged.perturb_ulp, nudged.world_size, nudged.role) == (1, 1, "dp-reference")
    assert nudged.train.grad_accumulation == 8
    assert len(jobs) == 2 * 3 + 2 + 2
    # The world size survives the trip to a worker (an executor reserves that many devices).
    from precision_suite.jobs import Job

    assert Job.from_dict(by_id[f"{base}/fp32/seed0/ws2"].to_dict()).world_size == 2


def test_a_backend_without_a_data_parallel_variant_gets_no_reference_to_run():
    raw = dp_config("keras-jax", "fp32", world_size=[1, 2])
    jobs = expand_jobs(validate(raw, "test"), "cpu")
    # Its two-replica job is recorded unavailable: a reference would be compared with nothing.
    assert [j.job_id for j in jobs] == ["mlp/digits/keras-jax/fp32/seed0", "mlp/digits/keras-jax/fp32/seed0/ws2"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "distributed.world_size"),
        ("[2, 2]", "distinct world sizes"),
        ("[]", "distinct world sizes"),
        ("two", "distributed.world_size"),
    ],
)
def test_bad_world_size_is_a_one_line_config_error(tmp_path, value, expected):
    path = tmp_path / "c.yaml"
    path.write_text("seeds: [0]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [f"distributed.world_size={value}"])
    assert expected in str(err.value) and "\n" not in str(err.value)


def _record(policy="fp32", ws=2, seed=0, loss=None, replicas=None, backend="torch-amp", sps=1000.0, batch=16):
    loss = loss if loss is not None else [2.0, 1.5, 1.2, 1.0]
    replicas = (
        replicas
        if replicas is not None
        else [{"rank": r, "skipped_steps": [], "loss_scale_final": 1.0, "params_sha256": "a"} for r in range(ws)]
    )
    record = {
        "job_id": f"mlp/digits/{backend}/{policy}/seed{seed}" + (f"/ws{ws}" if ws > 1 else ""),
        "backend": backend,
        "framework": "torch",
        "policy": policy,
        "model": "mlp",
        "dataset": "digits",
        "seed": seed,
        "device": "cpu",
        "status": "ok",
        "world_size": ws,
        "config": {"train": {"batch_size": batch}, "world_size": ws, "role": "", "distributed": {}},
        "observed": {"compute_dtype": "float32", "loss_scaling": "none"},
        "metrics": {"test_accuracy": 0.9, "samples_per_s": sps, "step_time_ms_p50": 1.0},
        "curves": {"train_loss": loss},
    }
    if ws > 1:
        record["distributed"] = {"replicas": replicas}
    return record


def test_replica_consistency_fails_on_any_difference_between_replicas():
    good = _record()
    assert replica_consistency("s", [good])[0] == "pass"
    for key, value in (("params_sha256", "b"), ("loss_scale_final", 0.5), ("skipped_steps", [3])):
        bad = copy.deepcopy(good)
        bad["distributed"]["replicas"][1][key] = value
        outcome, detail = replica_consistency("s", [bad])
        assert outcome == "fail" and "replica 1" in detail
    missing = copy.deepcopy(good)
    missing["distributed"]["replicas"].pop()
    assert replica_consistency("s", [missing])[0] == "fail"


def test_data_parallel_passes_within_the_tolerance_over_the_horizon_only():
    reference = _record(ws=1, batch=32)
    reference["config"]["role"] = "dp-reference"
    close = _record(loss=[2.0, 1.5 * (1 + 1e-6), 1.2, 9.0])  # step 3 beyond the horizon of 3
    close["config"]["distributed"] = {"data_parallel_rtol": 1e-4, "data_parallel_steps": 3}
    assert data_parallel([close], [reference])[0] == "pass"
    far = copy.deepcopy(close)
    far["curves"]["train_loss"][1] = 1.6
    outcome, detail = data_parallel([far], [reference])
    assert outcome == "fail" and "step 1" in detail
    assert data_parallel([close], [])[0] == "fail"  # no reference: not a silent pass


def _reference(loss, grad_accumulation=2, model="mlp"):
    """The one-process dp-reference record of a two-replica job at 16 rows per replica: in the
    replicas' slices (``grad_accumulation`` 2, as planned now) or at the whole batch (1)."""
    reference = _record(ws=1, batch=32, loss=loss)
    reference["job_id"] += "/ws1-batch32" + ("-shards2" if grad_accumulation == 2 else "")
    reference["config"].update(role="dp-reference", model={"kind": model})
    reference["config"]["train"]["grad_accumulation"] = grad_accumulation
    reference["model"] = model
    return reference


def _cnn_over_two_replicas(loss, batchnorm="per-replica statistics", dropout=0.0):
    record = _record(loss=loss)
    record["model"] = "cnn"
    record["config"]["model"] = {"kind": "cnn", "dropout": dropout}
    record["distributed"]["batchnorm"] = batchnorm
    return record


# Step 0 of the issue's run: the replicas' loss, and the one-process run at the whole batch 4.41e-4 off.
CNN_LOSS = [2.3026, 2.2011, 2.0453, 1.9012]
WHOLE_BATCH_LOSS = [CNN_LOSS[0] * (1 + 4.41e-4), 2.2031, 2.0489, 1.9071]


def test_a_batchnorm_model_is_compared_with_the_reference_in_the_replicas_slices_never_the_whole_batch():
    record = _cnn_over_two_replicas(CNN_LOSS)
    in_slices = _reference([v * (1 + 5e-8) for v in CNN_LOSS], model="cnn")
    whole = _reference(WHOLE_BATCH_LOSS, grad_accumulation=1, model="cnn")
    outcome, detail = data_parallel([record], [whole, in_slices])
    assert outcome == "pass", detail
    # Only the whole-batch run (a run directory from before): n/a with the reason, not FAIL.
    outcome, detail = data_parallel([record], [whole])
    assert outcome == "n/a" and "own slice's statistics" in detail and "--resume" in detail, detail
    # Positive control: a replica that really departs fails against the reference in slices.
    diverged = _cnn_over_two_replicas([CNN_LOSS[0], CNN_LOSS[1] * 1.01, *CNN_LOSS[2:]])
    outcome, detail = data_parallel([diverged], [whole, in_slices])
    assert outcome == "fail" and "step 1" in detail, detail
    # No reference at all is no pass either.
    assert data_parallel([record], [])[0] == "fail"


def test_a_run_no_one_process_run_reproduces_is_n_a_with_the_reason():
    in_slices = _reference(CNN_LOSS, model="cnn")
    synced = _cnn_over_two_replicas(WHOLE_BATCH_LOSS, batchnorm="SyncBatchNorm")
    outcome, detail = data_parallel([synced], [in_slices])
    assert outcome == "n/a" and "over the global batch (SyncBatchNorm)" in detail, detail
    # ... whose reference is the whole-batch run.
    whole = _reference(WHOLE_BATCH_LOSS, grad_accumulation=1, model="cnn")
    assert data_parallel([synced], [whole, in_slices])[0] == "n/a"  # the planned one is in slices
    assert data_parallel([synced], [whole])[0] == "pass"
    dropout = _cnn_over_two_replicas(CNN_LOSS, dropout=0.1)
    outcome, detail = data_parallel([dropout], [in_slices])
    assert outcome == "n/a" and "dropout 0.1" in detail, detail
    # tf-keras records before this fix said "no BatchNorm in the model" for the cnn: it has BatchNorm.
    old_tf_keras = _cnn_over_two_replicas(CNN_LOSS, batchnorm="no BatchNorm in the model")
    assert data_parallel([old_tf_keras], [whole])[0] == "n/a"
    # A model without BatchNorm: the whole-batch run computes the same, and is compared.
    assert data_parallel([_record(loss=CNN_LOSS)], [_reference(CNN_LOSS, grad_accumulation=1)])[0] == "pass"


def test_compare_keeps_replica_counts_apart_and_adds_the_distributed_verdicts():
    reference = _reference([2.0, 1.5, 1.2, 1.0])
    records = [_record(ws=1), _record(ws=2), reference]
    comparison = compare(records)
    assert [g.device for g in comparison.groups] == ["cpu", "cpu×2"]  # the reference is no group
    names = {(v.subject, v.name): v.outcome for v in comparison.verdicts}
    assert names[("mlp/digits/cpu×2 torch-amp fp32", "replica-consistency")] == "pass"
    assert names[("mlp/digits/cpu×2 torch-amp fp32", "data-parallel")] == "pass"
    assert ("mlp/digits/cpu torch-amp fp32", "replica-consistency") not in names


def test_scaling_rows_efficiency_per_device_and_speedups():
    records = [
        _record("fp32", ws=1, sps=1000.0),
        _record("fp32", ws=2, sps=1500.0),
        _record("bf16-mixed", ws=1, sps=2000.0),
        _record("bf16-mixed", ws=2, sps=2400.0),
    ]
    rows = {(r.policy, r.world_size): r for r in scaling_rows(records)}
    assert rows[("fp32", 2)].samples_per_s_per_device == 750.0
    assert rows[("fp32", 2)].efficiency == pytest.approx(0.75)
    assert rows[("bf16-mixed", 2)].efficiency == pytest.approx(0.6)
    assert rows[("bf16-mixed", 2)].speedup == pytest.approx(1.6)
    assert rows[("bf16-mixed", 2)].speedup_at_1 == pytest.approx(2.0)
    assert scaling_rows(records[:1]) == []  # no multi-replica run: no table


def test_a_setting_the_data_parallel_variant_cannot_run_is_a_config_error(tmp_path):
    from precision_suite.plan import check_backends

    raw = dp_config("tf-keras", "fp16-mixed", world_size=[1, 2])
    raw["loss_scale"] = {"dynamic": False}
    with pytest.raises(ConfigError) as err:
        check_backends(validate(raw, "c.yaml"), "c.yaml")
    assert "over 2 replicas" in str(err.value) and "loss_scale.dynamic" in str(err.value)
    raw["distributed"]["world_size"] = 1
    check_backends(validate(raw, "c.yaml"), "c.yaml")  # fine in one process


@pytest.mark.slow
def test_a_batchnorm_model_over_one_and_two_replicas_exits_0_with_the_distributed_verdicts_passing(tmp_path):
    import yaml

    from tests.helpers.cli import read_run, run_cli

    pytest.importorskip("torch")
    path = tmp_path / "dp.yaml"
    raw = dp_config("torch-amp", "fp32", world_size=[1, 2])
    raw["models"] = [{"kind": "cnn", "channels": [8, 16], "dense": 32}]  # BatchNorm: per replica on a CPU
    path.write_text(yaml.safe_dump(raw))
    assert run_cli(path, tmp_path / "out") == 0
    records = {r["job_id"]: r for r in read_run(tmp_path / "out")}
    assert set(records) == {
        "cnn/digits/torch-amp/fp32/seed0",
        "cnn/digits/torch-amp/fp32/seed0/ws2",
        "cnn/digits/torch-amp/fp32/seed0/ws1-batch32-shards2",
        "cnn/digits/torch-amp/fp32/seed0/ws1-batch32-shards2/ulp+1",
    }
    assert all(r["status"] == "ok" for r in records.values())
    comparison = compare(list(records.values()))
    outcomes = {v.name: v.outcome for v in comparison.verdicts if "cpu×2" in v.subject}
    assert outcomes["replica-consistency"] == outcomes["data-parallel"] == "pass"
    assert [r.world_size for r in comparison.scaling] == [1, 2]


def test_data_parallel_verdict_holds_steps_to_the_rtol_only_up_to_the_references_own_horizon():
    from precision_suite.verdicts.data_parallel import data_parallel

    def record(job_id, curve, seed=0):
        return {"job_id": job_id, "seed": seed, "status": "ok", "curves": {"train_loss": curve}, "config": {}}

    steps = 40
    reference = np.linspace(2.3, 1.0, steps)
    nudged = reference.copy()
    nudged[20:] *= 1 + 1e-2 * np.arange(1, steps - 19)  # the reference departs from itself at step 20
    dp = reference.copy()
    dp[25:] *= 1 + 5e-3 * np.arange(1, steps - 24)  # past the horizon, less than the self divergence
    ref = record("m/d/b/fp32/seed0/ws1-batch64", list(reference))
    floor = [record("m/d/b/fp32/seed0/ws1-batch64/ulp+1", list(nudged))]
    outcome, detail = data_parallel([record("m/d/b/fp32/seed0/ws2", list(dp))], [ref], floor)
    assert outcome == "pass" and "divergence horizon step 20" in detail
    # A departure inside the horizon fails.
    early = reference.copy()
    early[5:] *= 1.01
    outcome, detail = data_parallel([record("m/d/b/fp32/seed0/ws2", list(early))], [ref], floor)
    assert outcome == "fail" and "step 5" in detail
