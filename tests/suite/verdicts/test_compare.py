"""Statistics, baselines and verdicts of precision_suite.verdicts.compare on hand-made records."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from precision_suite.results import Record
from precision_suite.verdicts.compare import (
    FAIL,
    FAILED,
    INCONCLUSIVE,
    NO_BASELINE,
    PASS,
    TIMED_JOBS,
    check_exit_code,
    compare,
    jobs_speedup,
    mean_ci95,
)

from tests.helpers.records import default_run, make_record

# Two-sided 95% Student t quantiles (textbook table values), to check the CI independently of
# the SciPy call the code makes.
T975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105}


def row_of(comparison, backend, policy, model="mlp"):
    matches = [r for r in comparison.rows if (r.backend, r.policy, r.model) == (backend, policy, model)]
    assert len(matches) == 1, f"expected one row {backend} {policy}, got {len(matches)}"
    return matches[0]


def pair(policy_acc, base_acc=0.95, seeds=(0, 1, 2), backend="torch-amp", policy="bf16-mixed"):
    out = []
    for seed in seeds:
        out.append(make_record(backend, "fp32", seed, accuracy=base_acc))
        out.append(make_record(backend, policy, seed, accuracy=policy_acc, step_ms=5.0))
    return out


# --- statistics ------------------------------------------------------------------------------


def test_ci_is_student_t_over_seeds():
    values = [0.90, 0.92, 0.94, 0.91, 0.93]
    mean, half = mean_ci95(values)
    sd = math.sqrt(sum((v - 0.92) ** 2 for v in values) / 4)
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(T975[4] * sd / math.sqrt(5), rel=1e-8)

    mean, half = mean_ci95([0.90, 0.94])
    assert half == pytest.approx(T975[1] * math.sqrt(0.0008) / math.sqrt(2), rel=1e-8)


def test_ci_of_one_seed_is_undefined_not_zero():
    assert mean_ci95([0.9]) == (0.9, None)
    assert mean_ci95([]) == (None, None)
    # Non-finite values (a NaN accuracy) are ignored rather than poisoning the mean.
    assert mean_ci95([0.9, float("nan")]) == (0.9, None)


def _timed(backend, policy, seed, step_ms, windows_ms=None):
    record = make_record(backend, policy, seed, step_ms=step_ms)
    if windows_ms is not None:
        record["curves"].update(window_step_time_ms=windows_ms, window_steps=[4] * len(windows_ms))
    return Record(record)


def test_speedup_of_jobs_timed_alone_is_the_geometric_mean_with_a_t_interval_on_the_log_scale():
    base = [_timed("torch-amp", "fp32", s, ms) for s, ms in enumerate([10.0, 12.0, 11.0])]
    row = [_timed("torch-amp", "bf16-mixed", s, ms) for s, ms in enumerate([5.0, 4.0, 5.5])]
    speed = jobs_speedup(base, row)
    # Per-seed ratios 2, 3, 2: geometric mean 12^(1/3); the t interval of ln 2, ln 3, ln 2.
    logs = [math.log(2), math.log(3), math.log(2)]
    mean = sum(logs) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / 2)
    half = T975[2] * sd / math.sqrt(3)
    assert speed.source == TIMED_JOBS and speed.estimate == pytest.approx(12 ** (1 / 3))
    assert speed.ci_low == pytest.approx(math.exp(mean - half)) and speed.ci_high == pytest.approx(
        math.exp(mean + half)
    )
    assert speed.ci_low > 1.0 and not speed.noisy_reason
    # Faster on one seed, slower on another: the interval includes 1.0, so the speedup is noisy.
    slower = [_timed("torch-amp", "bf16-mixed", s, ms) for s, ms in enumerate([7.0, 14.0, 9.0])]
    straddles = jobs_speedup(base, slower)
    assert straddles.ci_low < 1.0 < straddles.ci_high and "includes 1.0" in straddles.noisy_reason
    # Only seeds timed on both sides are paired; none in common: no speedup.
    assert jobs_speedup(base, [_timed("torch-amp", "bf16-mixed", 5, 5.0)]) is None
    assert jobs_speedup([], row) is None


def test_one_seed_speedup_is_welchs_interval_over_its_timed_windows():
    scipy_stats = pytest.importorskip("scipy.stats")
    base_ms, row_ms = [10.0, 10.4, 9.8, 10.1, 10.3], [5.1, 4.9, 5.2, 5.0]
    speed = jobs_speedup(
        [_timed("torch-amp", "fp32", 0, 10.0, base_ms)], [_timed("torch-amp", "bf16-mixed", 0, 5.0, row_ms)]
    )
    welch = scipy_stats.ttest_ind(np.log(base_ms), np.log(row_ms), equal_var=False).confidence_interval(0.95)
    assert (speed.ci_low, speed.ci_high) == (pytest.approx(math.exp(welch.low)), pytest.approx(math.exp(welch.high)))
    assert speed.estimate == pytest.approx(math.exp(np.mean(np.log(base_ms)) - np.mean(np.log(row_ms))))
    assert not speed.noisy_reason
    # Without windows (records from before they were kept): the p50 ratio, no interval.
    bare = jobs_speedup([_timed("torch-amp", "fp32", 0, 10.0)], [_timed("torch-amp", "bf16-mixed", 0, 4.0)])
    assert bare.estimate == pytest.approx(2.5) and not bare.defined


def test_row_statistics_against_fp32_of_same_framework():
    records = []
    for seed, (base_ms, pol_ms) in enumerate([(10.0, 5.0), (12.0, 4.0), (11.0, 5.5)]):
        records.append(make_record("torch-amp", "fp32", seed, accuracy=0.95, step_ms=base_ms))
        records.append(
            make_record(
                "torch-amp",
                "bf16-mixed",
                seed,
                accuracy=[0.94, 0.945, 0.95][seed],
                step_ms=pol_ms,
                memory=600_000,
            )
        )
    comparison = compare(records)
    row = row_of(comparison, "torch-amp", "bf16-mixed")
    assert row.baseline == "torch-amp fp32"
    assert row.accuracy_mean == pytest.approx(0.945)
    assert row.accuracy_ci95 == pytest.approx(T975[2] * 0.005 / math.sqrt(3), rel=1e-6)
    assert row.delta_pts == pytest.approx(-0.5)
    # The jobs carry no placement (written before placements existed: one at a time), so their
    # step times are a speedup: per-seed ratios 2, 3, 2.
    assert row.speed_source == TIMED_JOBS and row.speedup == pytest.approx(12 ** (1 / 3))
    assert row.speedup_min < 2.0 and row.speedup_max > 3.0
    assert row.memory_ratio == pytest.approx(0.6)
    assert row_of(comparison, "torch-amp", "fp32").is_baseline


def test_torch_manual_uses_torch_amp_fp32_as_baseline():
    records = pair(0.94, backend="torch-amp", policy="bf16-mixed")
    records += [make_record("torch-manual", "bf16-pure", s, accuracy=0.90) for s in (0, 1, 2)]
    records += [make_record("tf-keras", "fp32", s, accuracy=0.99) for s in (0, 1, 2)]
    row = row_of(compare(records), "torch-manual", "bf16-pure")
    assert row.baseline == "torch-amp fp32"
    assert row.delta_pts == pytest.approx(-5.0)


def test_memory_ratio_needs_the_same_memory_source():
    records = pair(0.95)
    for record in records:
        if record["policy"] == "bf16-mixed":
            record["metrics"]["memory_source"] = "allocator peak"
    assert row_of(compare(records), "torch-amp", "bf16-mixed").memory_ratio is None


# --- parity and check ------------------------------------------------------------------------


def test_check_fails_when_a_policy_is_five_points_below_fp32():
    comparison = compare(pair(0.90, base_acc=0.95))
    parity = row_of(comparison, "torch-amp", "bf16-mixed").verdict("parity")
    assert parity.outcome == FAIL and parity.enforced
    assert "-5.00 pt" in parity.detail
    assert check_exit_code(comparison) == 1


def test_check_passes_within_tolerance():
    comparison = compare(pair(0.945, base_acc=0.95))
    assert row_of(comparison, "torch-amp", "bf16-mixed").verdict("parity").outcome == PASS
    assert check_exit_code(comparison) == 0
    assert check_exit_code(compare(default_run())) == 0


def test_tolerance_comes_from_records_unless_given():
    records = pair(0.92, base_acc=0.95)  # -3 pt
    assert check_exit_code(compare(records)) == 1  # recorded tolerance 1 pt
    assert check_exit_code(compare(records, tolerance_pts=3.5)) == 0
    for record in records:
        record["config"]["parity"]["tolerance_pts"] = 4.0
    comparison = compare(records)
    assert comparison.tolerance_pts == 4.0
    assert check_exit_code(comparison) == 0
    assert check_exit_code(compare(records, tolerance_pts=2.0)) == 1


def test_pure_policy_is_information_unless_check_pure():
    records = pair(0.90, policy="bf16-pure")
    comparison = compare(records)
    parity = row_of(comparison, "torch-amp", "bf16-pure").verdict("parity")
    assert parity.outcome == FAIL and not parity.enforced
    assert check_exit_code(comparison) == 0
    assert check_exit_code(compare(records, check_pure=True)) == 1
    for record in records:
        record["config"]["parity"]["check_pure"] = True
    assert check_exit_code(compare(records)) == 1
    assert check_exit_code(compare(records, check_pure=False)) == 0


# --- edge cases -----------------------------------------------------------------------------


def test_one_seed_has_no_ci_and_is_always_inconclusive():
    comparison = compare(pair(0.948, seeds=(0,)))
    row = row_of(comparison, "torch-amp", "bf16-mixed")
    assert row.accuracy_ci95 is None
    assert row.accuracy_mean == pytest.approx(0.948)
    parity = row.verdict("parity")
    # One seed says nothing about seed-to-seed spread, however close it is, or however far.
    assert parity.outcome == INCONCLUSIVE and parity.equivalence.seeds_suggested == 3
    far = row_of(compare(pair(0.80, seeds=(0,))), "torch-amp", "bf16-mixed").verdict("parity")
    assert far.outcome == INCONCLUSIVE
    assert check_exit_code(comparison) == 0 and check_exit_code(comparison, strict=True) == 1


def test_a_failed_seed_is_excluded_and_listed():
    records = pair(0.95)
    records = [r for r in records if not (r["policy"] == "bf16-mixed" and r["seed"] == 2)]
    records.append(make_record("torch-amp", "bf16-mixed", 2, status="crashed", error="SIGSEGV in worker"))
    comparison = compare(records)
    row = row_of(comparison, "torch-amp", "bf16-mixed")
    assert row.seeds_ok == [0, 1] and row.seeds_failed == [2]
    assert row.verdict("parity").outcome == PASS
    assert [(n.job_id, n.message) for n in comparison.failed_jobs] == [
        ("mlp/digits/torch-amp/bf16-mixed/seed2", "SIGSEGV in worker")
    ]
    headline = next(h for h in comparison.headlines if h.row == "torch-amp bf16-mixed")
    assert "1 seed(s) failed" in headline.text
    assert check_exit_code(comparison) == 0


def test_a_policy_whose_seeds_all_failed_is_failed():
    records = [make_record("torch-amp", "fp32", s) for s in (0, 1)]
    records += [
        make_record("torch-amp", "fp16-mixed", 0, status="diverged", error="loss is NaN"),
        make_record("torch-amp", "fp16-mixed", 1, status="oom", error=None),
    ]
    records[-1]["metrics"] = None  # metrics of a failed job may be missing entirely
    comparison = compare(records)
    row = row_of(comparison, "torch-amp", "fp16-mixed")
    assert row.all_failed and row.accuracy_mean is None
    assert [v.outcome for v in row.verdicts] == [FAILED]
    assert "diverged" in row.verdicts[0].detail and "oom" in row.verdicts[0].detail
    assert check_exit_code(comparison) == 1
    assert {n.status for n in comparison.failed_jobs} == {"diverged", "oom"}


@pytest.mark.parametrize(("check_pure", "exit_code"), [(False, 0), (True, 1)])
def test_a_diverged_pure_policy_is_information_unless_check_pure(check_pure, exit_code):
    from precision_suite.results import is_job_failure

    records = [make_record("torch-amp", "fp32", s, check_pure=check_pure) for s in (0, 1)]
    records += [
        make_record("torch-manual", "fp16-pure", s, status="diverged", error="loss NaN", check_pure=check_pure)
        for s in (0, 1)
    ]
    comparison = compare(records)
    (verdict,) = row_of(comparison, "torch-manual", "fp16-pure").verdicts
    assert verdict.outcome == FAILED and verdict.enforced is check_pure
    assert check_exit_code(comparison) == exit_code
    assert is_job_failure(records[-1], check_pure) is check_pure
    # A mixed policy diverging is a failure whatever check_pure says.
    assert is_job_failure(make_record("torch-manual", "fp16-mixed", status="diverged"), False)


def test_missing_baseline_is_a_verdict_not_a_crash():
    records = [make_record("tf-keras", "bf16-mixed", s) for s in (0, 1)]
    records += [make_record("torch-amp", "fp32", s) for s in (0, 1)]  # other framework only
    comparison = compare(records)
    row = row_of(comparison, "tf-keras", "bf16-mixed")
    assert row.baseline is None and row.delta_pts is None and row.speedup is None
    assert row.verdict("parity").outcome == NO_BASELINE
    assert check_exit_code(comparison) == 0
    headline = next(h for h in comparison.headlines if h.row == "tf-keras bf16-mixed")
    assert "no fp32 baseline" in headline.text


def test_failed_baseline_fails_check_and_leaves_no_baseline():
    records = [make_record("torch-amp", "fp32", 0, status="timeout", error="600 s")]
    records += [make_record("torch-amp", "bf16-mixed", 0)]
    comparison = compare(records)
    assert row_of(comparison, "torch-amp", "bf16-mixed").verdict("parity").outcome == NO_BASELINE
    assert row_of(comparison, "torch-amp", "fp32").verdicts[0].outcome == FAILED
    assert check_exit_code(comparison) == 1


def test_unavailable_jobs_are_listed_not_failures():
    records = pair(0.95) + [make_record("torch-amp", "tf32", 0, status="unavailable", error="tf32 needs a CUDA device")]
    comparison = compare(records)
    assert [n.message for n in comparison.unavailable] == ["tf32 needs a CUDA device"]
    assert not comparison.failed_jobs
    assert all(r.policy != "tf32" for r in comparison.rows)
    assert check_exit_code(comparison) == 0


def test_newest_record_of_a_job_wins():
    records = [make_record("torch-amp", "bf16-mixed", 0, status="crashed", error="old")]
    records += pair(0.95, seeds=(0,))
    comparison = compare(records)
    assert not comparison.failed_jobs
    assert row_of(comparison, "torch-amp", "bf16-mixed").seeds_ok == [0]


def test_groups_split_by_model_dataset_device():
    records = default_run(seeds=(0, 1), models=("mlp", "cnn"))
    records += [make_record("torch-amp", p, 0, device="cuda") for p in ("fp32", "bf16-mixed")]
    comparison = compare(records)
    assert [g.key for g in comparison.groups] == [
        "cnn/digits/cpu",
        "mlp/digits/cpu",
        "mlp/digits/cuda",
    ]
    cuda_row = next(r for r in comparison.groups[2].rows if r.policy == "bf16-mixed")
    assert cuda_row.baseline == "torch-amp fp32" and cuda_row.seeds_ok == [0]


# --- emulation -------------------------------------------------------------------------------


def test_fp16_on_cpu_without_fp16_isa_is_emulated_and_makes_no_speed_claim():
    records = [make_record("torch-amp", "fp32", s, step_ms=10.0) for s in (0, 1)]
    records += [make_record("torch-amp", "fp16-mixed", s, step_ms=2.0) for s in (0, 1)]
    records += [make_record("torch-amp", "bf16-mixed", s, step_ms=5.0) for s in (0, 1)]
    comparison = compare(records)
    fp16 = row_of(comparison, "torch-amp", "fp16-mixed")
    assert fp16.emulated and "avx512_fp16" in fp16.emulated_reason
    assert not row_of(comparison, "torch-amp", "bf16-mixed").emulated
    headlines = {h.row: h.text for h in comparison.headlines}
    assert "emulated" in headlines["torch-amp fp16-mixed"]
    assert "faster" not in headlines["torch-amp fp16-mixed"]
    assert "2.0× faster" in headlines["torch-amp bf16-mixed"]


# --- precision-active ------------------------------------------------------------------------


def test_fp32_compute_under_fp16_mixed_fails_precision_active():
    records = pair(0.95, policy="fp16-mixed")
    records[-1]["observed"]["compute_dtype"] = "float32"  # seed 2 silently fell back
    comparison = compare(records)
    verdict = row_of(comparison, "torch-amp", "fp16-mixed").verdict("precision-active")
    assert verdict.outcome == FAIL
    assert "seed 2: compute float32, expected float16" in verdict.detail
    assert check_exit_code(comparison) == 1


@pytest.mark.parametrize(
    ("policy", "change", "message"),
    [
        ("bf16-mixed", {"master_dtype": "bfloat16"}, "master bfloat16, expected float32"),
        ("bf16-pure", {"param_dtype": "float32"}, "param float32, expected bfloat16"),
        ("fp16-mixed", {"loss_scaling": "none"}, "loss scaling none, expected dynamic"),
        ("fp32", {"compute_dtype": "bfloat16"}, "compute bfloat16, expected float32"),
    ],
)
def test_precision_active_checks_every_observed_dtype(policy, change, message):
    records = [make_record("torch-amp", policy, 0)]
    records[0]["observed"].update(change)
    verdict = compare(records).rows[0].verdict("precision-active")
    assert verdict.outcome == FAIL and message in verdict.detail


def test_precision_active_passes_matching_and_fails_unrecorded():
    comparison = compare(default_run())
    assert all(r.verdict("precision-active").outcome == PASS for r in comparison.rows)
    records = [make_record("torch-amp", "fp32", 0, observed={})]
    assert compare(records).rows[0].verdict("precision-active").outcome == FAIL


# --- cross-framework -------------------------------------------------------------------------


def test_cross_framework_passes_when_curves_agree():
    records = pair(0.95) + [make_record("tf-keras", "fp32", s, loss_offset=1e-5) for s in (0, 1, 2)]
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.name == "cross-framework" and verdict.outcome == PASS
    assert "torch-amp fp32 vs tf-keras fp32" in verdict.subject


def test_cross_framework_fails_when_a_step_differs():
    records = pair(0.95) + [make_record("tf-keras", "fp32", s) for s in (0, 1, 2)]
    tf_seed1 = next(r for r in records if r["backend"] == "tf-keras" and r["seed"] == 1)
    tf_seed1["curves"]["train_loss"][7] *= 1.01
    comparison = compare(records)
    [verdict] = comparison.groups[0].verdicts
    assert verdict.outcome == FAIL and "seed 1: step 7" in verdict.detail
    assert check_exit_code(comparison) == 1
    # A looser tolerance accepts the same curves.
    assert compare(records, cross_framework_rtol=0.02).groups[0].verdicts[0].outcome == PASS
    # Only the first cross_framework_steps steps are held to the tolerance.
    assert compare(records, cross_framework_steps=7).groups[0].verdicts[0].outcome == PASS
    assert compare(records, cross_framework_steps=8).groups[0].verdicts[0].outcome == FAIL


def test_cross_framework_checks_accuracy_and_length():
    records = pair(0.95) + [make_record("tf-keras", "fp32", s, accuracy=0.93) for s in (0, 1, 2)]
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.outcome == FAIL and "accuracy Δ -2.00 pt" in verdict.detail
    records = pair(0.95) + [make_record("tf-keras", "fp32", s, steps=19) for s in (0, 1, 2)]
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.outcome == FAIL and "20 vs 19 steps" in verdict.detail


def test_cross_framework_three_frameworks_each_against_torch():
    """torch, TensorFlow and JAX: one verdict per non-reference framework, each judged alone."""
    records = pair(0.95) + [
        make_record(b, "fp32", s, loss_offset=1e-5) for b in ("tf-keras", "keras-jax") for s in (0, 1, 2)
    ]
    jax_seed0 = next(r for r in records if r["backend"] == "keras-jax" and r["seed"] == 0)
    jax_seed0["curves"]["train_loss"][3] *= 1.01
    verdicts = {v.subject.split(" vs ")[1]: v for v in compare(records).groups[0].verdicts}
    assert sorted(verdicts) == ["keras-jax fp32", "tf-keras fp32"]
    assert all("torch-amp fp32 vs" in v.subject for v in verdicts.values())
    assert verdicts["tf-keras fp32"].outcome == PASS
    assert verdicts["keras-jax fp32"].outcome == FAIL and "seed 0: step 3" in verdicts["keras-jax fp32"].detail


def test_cross_framework_only_when_both_fp32_exist():
    records = pair(0.95) + [make_record("tf-keras", "bf16-mixed", 0)]
    assert compare(records).groups[0].verdicts == []


# --- chaos-aware cross-framework -------------------------------------------------------------


def _chaotic(record, growth_from: float, factor: float = 1.0, steps_scale: float = 2.0, saturation: float = math.inf):
    """The record's loss curve with a relative deviation growing like a chaotic run's:
    ``factor · min(growth_from · 2^(t / steps_scale), saturation)``."""
    out = copy.deepcopy(record)
    loss = out["curves"]["train_loss"]
    out["curves"]["train_loss"] = [
        v * (1 + factor * min(growth_from * 2 ** (t / steps_scale), saturation)) for t, v in enumerate(loss)
    ]
    return out


def _noise_floor(record, growth_from: float, saturation: float = math.inf):
    out = _chaotic(record, growth_from, saturation=saturation)
    out["job_id"] += "/ulp+1"
    out["config"]["perturb_ulp"] = 1
    out["metrics"]["test_accuracy"] = 0.10  # a short run: must never count as a result
    return out


def chaos_records(cross_factor: float, steps: int = 60, saturation: float = math.inf):
    """torch and keras fp32 over 3 seeds; the keras curve departs from torch's like a chaotic
    run; each framework's one-ulp run departs from its own curve from 1e-7 (rtol 1e-3 is
    crossed at step 27), up to ``saturation`` relative."""
    records = []
    for seed in (0, 1, 2):
        torch_rec = make_record("torch-amp", "fp32", seed, steps=steps)
        keras = make_record("tf-keras", "fp32", seed, steps=steps)
        keras_rec = _chaotic(keras, 1e-7, cross_factor, saturation=saturation)
        records += [
            torch_rec,
            keras_rec,
            _noise_floor(torch_rec, 1e-7, saturation),
            _noise_floor(keras_rec, 1e-7, saturation),
        ]
    return records


def test_cross_framework_holds_steps_to_the_rtol_only_up_to_the_runs_own_divergence_horizon():
    records = chaos_records(cross_factor=0.5)
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.outcome == PASS, verdict.detail
    assert verdict.divergence_horizon == 27 and "divergence horizon step 27" in verdict.detail
    # The same curves held to the fixed first 100 steps (no noise-floor runs) fail at step 29.
    plain = [r for r in records if not r["job_id"].endswith("ulp+1")]
    [fixed] = compare(plain).groups[0].verdicts
    assert fixed.outcome == FAIL and "step 29" in fixed.detail and fixed.divergence_horizon is None
    # The noise-floor runs are no result: not a row, not in any mean.
    comparison = compare(records)
    assert len(comparison.rows) == 2
    assert all(r.accuracy_mean == pytest.approx(0.95) for r in comparison.rows)


def test_cross_framework_fails_a_mismatch_before_the_horizon_and_within_the_first_ten_steps():
    records = chaos_records(cross_factor=0.5)
    early = next(r for r in records if r["backend"] == "tf-keras" and r["seed"] == 1 and "ulp" not in r["job_id"])
    early["curves"]["train_loss"][5] *= 1.01
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.outcome == FAIL and "seed 1: step 5" in verdict.detail
    # A horizon at step 1 (a wildly chaotic run) still holds the first 10 steps.
    records = chaos_records(cross_factor=0.5)
    for record in records:
        if record["job_id"].endswith("ulp+1"):
            record["curves"]["train_loss"] = [v * 1.1 for v in record["curves"]["train_loss"]]
    early = next(r for r in records if r["backend"] == "tf-keras" and r["seed"] == 0 and "ulp" not in r["job_id"])
    early["curves"]["train_loss"][8] *= 1.01
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.outcome == FAIL and "seed 0: step 8" in verdict.detail


def test_cross_framework_fails_when_frameworks_drift_apart_faster_than_the_run_drifts_from_itself():
    [verdict] = compare(chaos_records(cross_factor=30.0)).groups[0].verdicts
    # Crossing the rtol 10 steps before the run's own horizon (27) is a failure.
    assert verdict.outcome == FAIL and "seed 0: step 17 " in verdict.detail

    def drifting(factor: float, seeds=(0, 1, 2)):
        """Past step 30, the keras curves of ``seeds`` ×``factor`` (its one-ulp run too: the same
        computation); the runs' own chaos saturates at 1e-2 relative."""
        records = chaos_records(cross_factor=0.5, saturation=1e-2)
        for record in records:
            if record["backend"] == "tf-keras" and record["seed"] in seeds:
                loss = record["curves"]["train_loss"]
                record["curves"]["train_loss"] = loss[:30] + [v * factor for v in loss[30:]]
        [verdict] = compare(records).groups[0].verdicts
        return verdict

    # 5 % off past the horizon (1.05 × 1.005 against torch: 5.2e-2 relative), five times the
    # 1 / 1.01 - 1 = 9.9e-3 the runs differ from themselves: FAIL.
    verdict = drifting(1.05)
    assert verdict.outcome == FAIL and "past the horizon" in verdict.detail, verdict.detail
    assert "in 3 of 3 seed(s)" in verdict.detail and "steps 27–59 5.2e-02 = ×5.29 self 9.9e-03" in verdict.detail
    # 2 % off (2.4e-2 relative) is 2.5 times the self difference: within what chaos alone gives
    # (stats.PAST_HORIZON_FACTOR).
    verdict = drifting(1.02)
    assert verdict.outcome == PASS and "2.4e-02 = ×2.47 self 9.9e-03" in verdict.detail, verdict.detail
    # Beyond it in one seed of three: a draw of chaos can be, the majority of seeds is not.
    verdict = drifting(1.05, seeds=(1,))
    assert verdict.outcome == PASS and "seed 1: steps 27–59 5.2e-02 = ×5.29" in verdict.detail, verdict.detail
    assert drifting(1.05, seeds=(0, 1)).outcome == FAIL


def test_past_the_horizon_a_run_that_took_another_branch_is_its_own_chaos():
    """The reported failure (keras-jax vs tf-keras, mlp on digits, seed 2): from step 65 one run,
    keras-jax's unperturbed one, took another branch than the three others (tf-keras, both
    one-ulp twins). The cross and the keras-jax self difference are then the same draw, equal
    up to the last ulps: "cross ≤ largest self" failed on that rounding, past the horizon (74)."""
    records = []
    for seed in (0, 1, 2):
        tf = make_record("tf-keras", "fp32", seed, steps=100)
        jax = make_record("keras-jax", "fp32", seed, steps=100)
        tf_twin, jax_twin = _noise_floor(tf, 0.0), _noise_floor(jax, 0.0)
        if seed == 2:
            # keras-jax departs at step 65 (within the rtol until step 74); its twin stays with
            # tf-keras, one float32 ulp above, so the cross difference is the larger by ~1e-7.
            branch = 2.5e-4 * 1.18 ** np.maximum(0, np.arange(100) - 65) * (np.arange(100) >= 65)
            branch = np.minimum(branch, 4e-3 * (1 + 0.5 * np.sin(np.arange(100))))
            jax["curves"]["train_loss"] = list(np.array(jax["curves"]["train_loss"]) * (1 + branch))
            jax_twin["curves"]["train_loss"] = list(np.array(tf["curves"]["train_loss"]) * (1 + 6e-8))
        records += [tf, jax, tf_twin, jax_twin]
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.divergence_horizon == 74, verdict.detail
    assert verdict.outcome == PASS and "seed 2: steps 74–99" in verdict.detail, verdict.detail
    # The rule before this one, "the cross median no larger than the largest self median", failed it.
    from precision_suite.verdicts.stats import chaos_aware_agreement

    by_id = {r["job_id"]: Record(r).curve() for r in records}
    a, b = by_id["mlp/digits/tf-keras/fp32/seed2"], by_id["mlp/digits/keras-jax/fp32/seed2"]
    own = [(a, by_id["mlp/digits/tf-keras/fp32/seed2/ulp+1"]), (b, by_id["mlp/digits/keras-jax/fp32/seed2/ulp+1"])]
    past = chaos_aware_agreement(a, b, own, 1e-3, 100, 10).past
    assert past.cross > past.own and past.ratio == pytest.approx(1.0, abs=1e-4)


def test_cross_framework_accuracy_is_an_equivalence_test():
    records = pair(0.95, seeds=(0, 1, 2))
    noisy = [0.955, 0.94, 0.962]  # -ish: within ±1 pt on average but spread too wide to tell
    records += [make_record("tf-keras", "fp32", s, accuracy=noisy[s]) for s in (0, 1, 2)]
    [verdict] = compare(records).groups[0].verdicts
    assert verdict.outcome == INCONCLUSIVE and verdict.equivalence.seeds_suggested > 3
    assert check_exit_code(compare(records)) == 0


def test_one_seed_cross_framework_passes_only_when_the_runs_are_one_computation():
    # One seed: no interval for the accuracy test. Same curve at every step and the same test
    # accuracy: the two runs are one computation up to rounding, which is a PASS.
    same = [make_record("torch-amp", "fp32", 0), make_record("tf-keras", "fp32", 0)]
    [verdict] = compare(same).groups[0].verdicts
    assert verdict.outcome == PASS and "one computation up to rounding" in verdict.detail
    # One test sample apart: the seed test is needed, and one seed cannot give it.
    apart = [make_record("torch-amp", "fp32", 0), make_record("tf-keras", "fp32", 0, accuracy=0.95 + 1 / 360)]
    [verdict] = compare(apart).groups[0].verdicts
    assert verdict.outcome == INCONCLUSIVE
    # Curves apart past the rtol late in the run (within the noise-floor-free window of 100
    # steps the check holds them to): not one computation either.
    late = make_record("tf-keras", "fp32", 0, steps=150)
    loss = late["curves"]["train_loss"]
    late["curves"]["train_loss"] = loss[:120] + [v * 1.01 for v in loss[120:]]
    [verdict] = compare([make_record("torch-amp", "fp32", 0, steps=150), late]).groups[0].verdicts
    assert verdict.outcome == INCONCLUSIVE, verdict.detail


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fp8_layers": []}, "no layer ran in FP8"),
        ({"fp8_operands": {"forward": [], "backward": ["float8_e5m2"]}}, "expected float8_e4m3fn"),
        ({"fp8_operands": {"forward": ["float8_e4m3fn"], "backward": ["bfloat16"]}}, "no FP8 gradient operands"),
    ],
)
def test_fp8_without_observed_fp8_fails_precision_active(change, message):
    records = [make_record("torch-amp", "fp8-mixed", 0)]
    assert compare(records).rows[0].verdict("precision-active").outcome == PASS
    records[0]["observed"].update(change)
    verdict = compare(records).rows[0].verdict("precision-active")
    assert verdict.outcome == FAIL and message in verdict.detail


def test_fp8_rows_of_two_frameworks_get_a_note_on_their_scaling():
    from precision_suite.verdicts.cross_framework import fp8_scaling_note

    scaling = {"torch-amp": "torchao tensorwise: per tensor", "tf-keras": "keras delayed: amax history of 1024"}
    records = [make_record(b, p, s) for b in scaling for p in ("fp32", "fp8-mixed") for s in (0, 1, 2)]
    for record in records:
        if record["policy"] == "fp8-mixed":
            record["environ"]["fp8"] = {"scaling": scaling[record["backend"]], "emulate_reason": "cpu"}
    group = compare(records).groups[0]
    note = fp8_scaling_note(group.rows)
    assert "torch-amp fp8-mixed: torchao tensorwise: per tensor" in note
    assert "tf-keras fp8-mixed: keras delayed: amax history of 1024" in note
    one_side = compare([r for r in records if r["backend"] == "torch-amp"]).groups[0]
    assert fp8_scaling_note(one_side.rows) is None
    assert all(r.emulated for r in group.rows if r.policy == "fp8-mixed")
    # Keras on two runtimes scales alike: nothing to note.
    keras = [make_record(b, p, 0) for b in ("tf-keras", "keras-jax") for p in ("fp32", "fp8-mixed")]
    for record in keras:
        if record["policy"] == "fp8-mixed":
            record["environ"]["fp8"] = {"scaling": scaling["tf-keras"], "emulate_reason": "cpu"}
    (keras_group,) = compare(keras).groups
    assert {r.framework for r in keras_group.rows} == {"tensorflow", "jax"}
    assert fp8_scaling_note(keras_group.rows) is None


@pytest.mark.parametrize(
    ("seen", "outcome", "message"),
    [
        ({"compute_dtype": "float32", "param_dtype": "float32"}, PASS, ""),
        ({"compute_dtype": "float16", "param_dtype": "float32"}, FAIL, "kept block dense1: compute float16"),
        ({"compute_dtype": "mixed: float16, float32", "param_dtype": "float32"}, FAIL, "compute mixed: float16"),
        ({"compute_dtype": "float32", "param_dtype": "float16"}, FAIL, "kept block dense1: param float16"),
        (None, FAIL, "kept block dense1: not observed"),
    ],
)
def test_a_block_claimed_fp32_must_be_seen_running_fp32(seen, outcome, message):
    record = make_record("torch-amp", "fp16-mixed", 0)
    record["config"]["model"]["keep_fp32"] = ["dense1"]
    if seen is not None:
        record["observed"]["keep_fp32"] = {"dense1": seen}
    verdict = compare([record]).rows[0].verdict("precision-active")
    assert verdict.outcome == outcome and message in verdict.detail


def test_with_every_compute_layer_kept_no_half_compute_is_expected_but_the_kept_blocks_are_checked():
    record = make_record("torch-amp", "fp16-mixed", 0)
    record["config"]["model"]["keep_fp32"] = ["dense0", "head"]
    record["observed"].update(
        compute_dtype=None,
        keep_fp32={"dense0": {"compute_dtype": "float32", "param_dtype": "float32"}},
    )
    verdict = compare([record]).rows[0].verdict("precision-active")
    assert verdict.outcome == FAIL and verdict.detail == "seed 0: kept block head: not observed"
    record["observed"]["compute_dtype"] = None
    record["config"]["model"]["keep_fp32"] = []  # nothing kept: a missing compute dtype is a fallback
    assert compare([record]).rows[0].verdict("precision-active").outcome == FAIL
