from __future__ import annotations

from precision_suite.cli import main
from precision_suite.outputs.advise import advise, render_text
from precision_suite.outputs.rundir import load_run

from tests.helpers.records import default_run, make_record


def _by_framework(advice):
    return {a.framework: a for a in advice}


def test_fastest_pass_policy_per_framework_with_its_settings(write_run):
    run = load_run(write_run("run", default_run()))
    advice = _by_framework(advise(run))
    torch, keras = advice["torch"], advice["tensorflow"]
    # torch-amp bf16 (10/6 ≈ 1.67×) beats torch-manual bf16 (10/6.5); both PASS, bf16 native here.
    assert (torch.choice.row.backend, torch.choice.row.policy) == ("torch-amp", "bf16-mixed")
    assert torch.choice.speedup.low > 1 and abs(torch.choice.speedup.estimate - 10.1 / 6.1) < 0.01
    assert abs(torch.choice.memory_ratio.estimate - 0.8) < 1e-9
    settings = dict(torch.settings())
    assert settings["Lightning"] == 'L.Trainer(precision="bf16-mixed")'
    assert settings["accelerate"] == 'Accelerator(mixed_precision="bf16")'
    assert 'torch.autocast(device_type="cpu", dtype=torch.bfloat16)' in settings["PyTorch"]
    assert dict(keras.settings()) == {"Keras": 'keras.mixed_precision.set_global_policy("mixed_bfloat16")'}
    reasons = {c.row.label: "; ".join(c.reasons) for c in torch.avoid}
    assert "emulated: CPU has no avx512_fp16 / amx_fp16" in reasons["torch-amp fp16-mixed"]
    assert "no fp32 master copy" in reasons["torch-manual bf16-pure"]
    assert "parity FAIL" in reasons["torch-manual bf16-pure"]
    assert [c.row.label for c in torch.alternatives] == ["torch-manual bf16-mixed"]  # qualifies, slower
    text = render_text(list(advice.values()), run.comparison)
    assert "use bf16-mixed (torch-amp): 1.66× (95% CI" in text and "memory saving 20% (the same in every seed)" in text
    assert "also at parity and faster: torch-manual bf16-mixed 1.53× (95% CI 1.51–1.55), memory cost 20%" in text


def test_fp16_with_loss_scaling_gets_the_gradscaler_snippet_on_hardware_that_has_fp16(write_run):
    flags = {"avx512_fp16": True, "avx512_bf16": True}
    records = [
        make_record("torch-amp", p, s, step_ms=ms + 0.1 * s, cpu_flags=flags)
        for p, ms in (("fp32", 10.0), ("fp16-mixed", 5.0))
        for s in (0, 1, 2)
    ]
    (item,) = advise(load_run(write_run("run", records)))
    assert item.choice.row.policy == "fp16-mixed"
    snippet = dict(item.settings())["PyTorch"]
    assert 'scaler = torch.amp.GradScaler("cpu")' in snippet and "scaler.scale(loss).backward()" in snippet
    assert dict(item.settings())["Lightning"] == 'L.Trainer(precision="16-mixed")'


def test_stay_with_fp32_when_nothing_is_faster_beyond_noise_and_at_parity(write_run, capsys):
    records = [make_record("torch-amp", "fp32", s, step_ms=10.0 + 0.1 * s) for s in (0, 1, 2)]
    # bf16: faster on one seed, slower on another (noisy); an inconclusive parity is not PASS.
    records += [make_record("torch-amp", "bf16-mixed", s, step_ms=ms) for s, ms in ((0, 7.0), (1, 14.0), (2, 9.0))]
    path = write_run("run", records)
    run = load_run(path)
    (item,) = advise(run)
    assert item.choice is None
    (avoid,) = item.avoid
    assert any(r.startswith("noisy: speedup") and "straddles 1.0" in r for r in avoid.reasons)
    assert main(["advise", str(path)]) == 0
    assert (
        "stay with fp32: no policy is both faster than fp32 beyond noise and at parity (PASS)"
        in capsys.readouterr().out
    )


def test_inconclusive_parity_is_not_a_recommendation(write_run):
    run = load_run(write_run("run", default_run()))
    for group in run.comparison.groups:
        for row in group.rows:
            if row.verdict("parity") is not None and row.label in ("torch-amp bf16-mixed", "torch-manual bf16-mixed"):
                row.verdict("parity").outcome = "inconclusive"
    torch = _by_framework(advise(run))["torch"]
    assert torch.choice is None
    reasons = {c.row.label: "; ".join(c.reasons) for c in torch.avoid}
    assert "parity INCONCLUSIVE" in reasons["torch-amp bf16-mixed"]


def test_failed_and_diverged_policies_are_named_with_why(write_run):
    records = default_run()
    records = [r for r in records if (r["backend"], r["policy"]) != ("torch-manual", "bf16-mixed")]
    records += [
        make_record("torch-manual", "bf16-mixed", s, status="diverged", error="loss non-finite from step 4")
        for s in (0, 1, 2)
    ]
    torch = _by_framework(advise(load_run(write_run("run", records))))["torch"]
    reasons = {c.row.label: "; ".join(c.reasons) for c in torch.avoid}
    assert reasons["torch-manual bf16-mixed"].startswith("failed: all 3 seed(s) failed (diverged)")


def test_fp8_on_a_capable_gpu_gets_the_fp8_settings_and_is_never_claimed_emulated(write_run):
    def records(environ):
        out = [
            make_record("torch-amp", p, s, step_ms=ms + 0.1 * s, device="cuda")
            for p, ms in (("fp32", 10.0), ("fp8-mixed", 5.0))
            for s in (0, 1, 2)
        ]
        for record in out:
            record["environ"].update(environ)
        return out

    (item,) = advise(load_run(write_run("h100", records({"cuda_capability": [9, 0]}))))
    assert item.choice.row.policy == "fp8-mixed"
    settings = dict(item.settings())
    assert settings["Lightning"].startswith('L.Trainer(precision="transformer-engine")')
    assert 'Accelerator(mixed_precision="fp8", kwargs_handlers=[AORecipeKwargs()])' in settings["accelerate"]
    assert "convert_to_float8_training(model" in settings["PyTorch"]
    (item,) = advise(load_run(write_run("a100", records({"cuda_capability": [8, 0]}))))
    assert item.choice is None
    assert "emulated: compute capability 8.0 < 8.9, so no speed claim" in item.avoid[0].reasons


def test_a_failing_policy_with_a_bisect_answer_next_to_the_run_says_what_fixes_it(write_run):
    """The fixed policy's speed and memory are read from bisect's verdict run, not assumed."""
    from precision_suite.bisect.record import BisectResult, ModelBisect

    flags = {"avx512_fp16": True, "avx512_bf16": True}
    failing = [make_record("torch-amp", "fp32", s, step_ms=10.0 + 0.1 * s, cpu_flags=flags) for s in (0, 1, 2)]
    failing += [make_record("torch-amp", "fp16-mixed", s, accuracy=0.10, cpu_flags=flags) for s in (0, 1, 2)]
    run_dir = write_run("run", failing)
    fixed = [make_record("torch-amp", "fp32", s, step_ms=10.0 + 0.1 * s, cpu_flags=flags) for s in (0, 1, 2)]
    fixed += [
        make_record("torch-amp", "fp16-mixed", s, step_ms=8.0 + 0.1 * s, memory=700_000, cpu_flags=flags)
        for s in (0, 1, 2)
    ]
    (run_dir.parent / "bisect" / "mlp").mkdir(parents=True)
    verdict_dir = write_run("bisect/mlp/keep-x-full", fixed)
    model = ModelBisect("mlp", ["dense0", "fragile", "head"], ["fragile"], "pass", "Δ +0.00 pt", str(verdict_dir))
    BisectResult("torch-amp", "fp16-mixed", "x.yaml", [model]).write(run_dir.parent / "bisect")
    (item,) = advise(load_run(run_dir))
    (avoid,) = item.avoid
    assert "parity FAIL" in "; ".join(avoid.reasons)
    assert avoid.fix is not None and avoid.fix.keep == ["fragile"]
    assert abs(avoid.fix.speedup.estimate - 10.1 / 8.1) < 0.01  # the verdict run's own step times
    text = render_text([item], load_run(run_dir).comparison)
    fix = "torch-amp fp16-mixed fails; passes with 1 block(s) kept in fp32 (bisect: keep_fp32: [fragile]): 1.25×"
    assert fix in text
    assert "memory saving 30% (the same in every seed)" in text
