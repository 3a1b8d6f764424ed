"""Data-parallel tf-keras (MirroredStrategy over two logical CPU devices): an overflow on one
replica is skipped by every replica, with the same loss scale and bit-identical weights; and
the stock Keras behaviour this guards against, reproduced (all weights NaN). fp32 over two
replicas matches the one-process reference the suite plans for it, BatchNorm model included; what
stock Keras BatchNorm does with its running statistics under MirroredStrategy, reproduced."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.data_parallel import assert_replicas_consistent, dp_config, dp_job, rank_processes_left, run_dp
from tests.helpers.marks import TOLERANCES, needs_tf

pytestmark = needs_tf

# Stock Keras missing another replica's overflow: batch 64 on 2 replicas, an inf in row 40 (replica 1's half).
STOCK_KERAS = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    with strategy.scope():
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="gelu"),
                                  keras.layers.Dense(10, dtype="float32")])
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((512, 64)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 512)
    x[ROW, 0] = np.inf
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    print("NAN", sum(int(np.isnan(v.numpy()).sum()) for v in model.trainable_variables))
    """
)

PER_REPLICA_BATCHNORM = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    with strategy.scope():
        norm = keras.layers.BatchNormalization(momentum=0.5)
        norm.build((None, 1))

    @tf.function
    def step(rows):
        def replica_step(rows):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            norm(rows[replica * 2 : (replica + 1) * 2], training=True)
        strategy.run(replica_step, args=(rows,))

    step(tf.constant([[0.0], [2.0], [10.0], [14.0]]))
    copies = [v.numpy().tolist() for v in strategy.experimental_local_results(norm.moving_mean.value)]
    print(json.dumps([copies, keras.ops.convert_to_numpy(norm.moving_mean).tolist()]))
    """
)


def test_tf_keras_overflow_on_one_replica_is_skipped_by_every_replica(tmp_path):
    job = dp_job("tf-keras", "fp16-mixed", debug_fault_injection={"kind": "inf_grad", "rank": 1, "steps": [3, 7]})
    record = run_dp(job, tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert_replicas_consistent(record, [3, 7])
    assert record["metrics"]["loss_scale_final"] == 2.0**14
    assert math.isfinite(record["metrics"]["test_loss"])
    assert "MirroredStrategy" in record["distributed"]["strategy"]
    assert not rank_processes_left()


def _stock_nan_count(row: int) -> int:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(
        [sys.executable, "-c", STOCK_KERAS.replace("ROW", str(row))],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split("NAN")[-1])


@pytest.mark.slow
def test_stock_keras_misses_an_overflow_on_replica_1_and_the_backend_does_not(tmp_path):
    # Replica 0's overflow is caught by stock Keras; replica 1's is applied: every weight NaN.
    assert _stock_nan_count(10) == 0
    assert _stock_nan_count(40) > 0
    # The same fault (replica 1 only) through the backend: skipped everywhere, no NaN.
    job = dp_job("tf-keras", "fp16-mixed", debug_fault_injection={"kind": "inf_grad", "rank": 1, "steps": [0]})
    record = run_dp(job, tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert_replicas_consistent(record, [0])
    assert math.isfinite(record["metrics"]["test_loss"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "batchnorm"),
    [
        ({"kind": "mlp", "hidden": [32]}, "none"),
        ({"kind": "cnn", "channels": [8, 16], "dense": 32}, "per-replica statistics"),
    ],
)
def test_tf_keras_fp32_over_two_replicas_passes_the_data_parallel_verdict(tmp_path, model, batchnorm):
    import numpy as np
    from precision_suite.config import validate
    from precision_suite.measure.loop import run_job
    from precision_suite.plan import expand_jobs
    from precision_suite.verdicts.data_parallel import data_parallel

    raw = dp_config("tf-keras", "fp32", world_size=[1, 2], steps=20)
    raw["models"] = [model]
    jobs = expand_jobs(validate(raw, "test"), "cpu")
    record = run_dp(next(j for j in jobs if j.world_size == 2), tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert record["distributed"]["batchnorm"] == batchnorm
    # The replicas' parameters agree bit for bit; their BatchNorm running statistics may not.
    assert_replicas_consistent(record, [])
    reference = run_job(next(j for j in jobs if j.role == "dp-reference" and not j.perturb_ulp))
    ours, theirs = np.array(record["curves"]["train_loss"]), np.array(reference["curves"]["train_loss"])
    np.testing.assert_allclose(ours[:10], theirs[:10], **TOLERANCES["float32"])
    outcome, detail = data_parallel([record], [reference])
    assert outcome == "pass", detail


@pytest.mark.slow
def test_the_running_statistics_of_keras_batchnorm_are_per_replica_under_mirrored_strategy():
    """What the data-parallel docs say tf.distribute does with BatchNorm, in stock Keras: each
    replica normalises and updates the running statistics with its own slice (no aggregation),
    and a read outside the step gets replica 0's copy."""
    out = subprocess.run(
        [sys.executable, "-c", PER_REPLICA_BATCHNORM],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    copies, read = json.loads(out.stdout.strip().splitlines()[-1])
    # Slices [0, 2] and [10, 14], momentum 0.5 from 0: each replica 0.5 × its own slice's mean.
    assert copies == [[0.5], [6.0]]
    assert read == [0.5]


@pytest.mark.slow
def test_multi_worker_overflow_on_one_worker_is_skipped_by_every_worker(tmp_path):
    # Stock Keras would hang here (one worker skips, the other applies and waits on it).
    job = dp_job(
        "tf-keras",
        "fp16-mixed",
        tf_strategy="multi-worker",
        debug_fault_injection={"kind": "inf_grad", "rank": 1, "steps": [3, 7]},
    )
    record = run_dp(job, tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert "MultiWorkerMirroredStrategy" in record["distributed"]["strategy"]
    assert_replicas_consistent(record, [3, 7])
    assert record["metrics"]["loss_scale_final"] == 2.0**14
    assert math.isfinite(record["metrics"]["test_loss"])
    assert not rank_processes_left()
