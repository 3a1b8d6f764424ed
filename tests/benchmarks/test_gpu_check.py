"""The GPU check's pieces that run without a GPU: the throughput config (and the overrides
benchmarks/gpu_check.sh applies to it) validate, and the table it prints computes speedups and
MFU correctly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from precision_suite.config import load_config
from precision_suite.plan import check_backends, expand_jobs

from tests.helpers.records import mfu_record

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "gpu-throughput.yaml"


def test_gpu_throughput_config_validates():
    config = load_config(CONFIG)
    check_backends(config, str(CONFIG))
    transformer = next(m for m in config.models if m.kind == "transformer")
    assert (transformer.d_model, transformer.num_heads, transformer.depth) == (768, 12, 12)
    assert {m.kind for m in config.models} == {"transformer", "cnn"}
    assert config.data.name == "synthetic"
    jobs = expand_jobs(config, "cuda")
    assert {(j.backend, j.policy) for j in jobs} == {
        (b, p) for b in ("torch-amp", "tf-keras") for p in ("fp32", "tf32", "fp16-mixed", "bf16-mixed", "fp8-mixed")
    }
    # FP8 only where its Linear layers are multiples of 16 and large enough to pay off.
    assert {j.model.name for j in jobs if j.policy == "fp8-mixed"} == {"gpt2s-blocks", "wide-blocks"}


def test_fp8_model_linears_all_convert():
    """Every Linear of the FP8 models but the 10-class head is eligible, and wide-blocks' are at
    least 2048 wide (where torchao's tensorwise recipe gains)."""
    from precision_suite.backends.reference.fp8 import fp8_eligible

    config = load_config(CONFIG)
    for model in (m for m in config.models if m.name in ("gpt2s-blocks", "wide-blocks")):
        patch_dim = model.patch_size**2 * config.data.synthetic.shape[0]
        d, hidden = model.d_model, model.d_model * model.mlp_ratio
        for n_in, n_out in ((patch_dim, d), (d, d), (d, hidden), (hidden, d)):
            assert fp8_eligible(n_in, n_out) is None, (model.name, n_in, n_out)
    wide = next(m for m in config.models if m.name == "wide-blocks")
    assert wide.d_model >= 2048 and (config.train.batch_size * (64 // wide.patch_size) ** 2) >= 2048


def test_gpu_check_fp8_overrides_validate():
    """The --set list benchmarks/gpu_check.sh passes for its compiled FP8 run."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "FP8_POLICIES=${GPU_CHECK_FP8_POLICIES-bf16-mixed, fp8-mixed}" in script
    assert "run_suite fp8 torch-amp" in script and "compile: true" in script
    overrides = [
        "train.steps=40",
        "train.timing_warmup_steps=10",
        "train.timing_window_steps=10",
        "data.synthetic.train_size=2048",
        "device=cuda",
        "backends.policy_models={}",
        "backends.names=[torch-amp]",
        "backends.policies={torch-amp: [bf16-mixed, fp8-mixed]}",
        "backends.options={torch-amp: {compile: true, fused: true, fp8_recipe: tensorwise}}",
        "backends.policy_models={bf16-mixed: [wide-blocks], fp8-mixed: [wide-blocks]}",
    ]
    config = load_config(CONFIG, overrides)
    check_backends(config, str(CONFIG))
    jobs = expand_jobs(config, "cuda")
    assert sorted((j.model.name, j.policy) for j in jobs) == [
        ("wide-blocks", "bf16-mixed"),
        ("wide-blocks", "fp8-mixed"),
    ]
    assert all(j.options["compile"] and j.options["fp8_recipe"] == "tensorwise" for j in jobs)


@pytest.mark.parametrize("compile_", ["false", "true"])
def test_gpu_check_overrides_validate(compile_):
    """The exact --set list benchmarks/gpu_check.sh passes (torch only, trimmed)."""
    overrides = [
        "backends.names=[torch-amp]",
        "train.steps=40",
        "train.timing_warmup_steps=10",
        "train.timing_window_steps=10",
        "data.synthetic.train_size=2048",
        "device=cuda",
        "backends.policy_models={}",
        "backends.policies={torch-amp: [fp32, tf32, fp16-mixed, bf16-mixed]}",
        f"backends.options={{torch-amp: {{compile: {compile_}, fused: true}}}}",
    ]
    config = load_config(CONFIG, overrides)
    check_backends(config, str(CONFIG))
    jobs = expand_jobs(config, "cuda")
    # 3 models (wide-blocks too: the eager fp32 the FP8 run is read against) x 4 policies
    assert len(jobs) == 12 and {j.options["compile"] for j in jobs} == {compile_ == "true"}


def test_gpu_check_keras_jax_overrides_validate():
    """The --set list benchmarks/gpu_check.sh passes for its keras-jax run (entry-point backend)."""
    overrides = [
        "train.steps=40",
        "train.timing_warmup_steps=10",
        "train.timing_window_steps=10",
        "data.synthetic.train_size=2048",
        "device=cuda",
        "backends.policy_models={}",
        "backends.names=[keras-jax]",
        "backends.policies={keras-jax: [fp32, fp16-mixed, bf16-mixed]}",
        "backends.options={keras-jax: {}}",
        "runner.isolation=per-job",
    ]
    config = load_config(CONFIG, overrides)
    check_backends(config, str(CONFIG))
    jobs = expand_jobs(config, "cuda")
    assert {(j.backend, j.framework) for j in jobs} == {("keras-jax", "jax")}
    assert sorted(j.policy for j in jobs) == ["bf16-mixed"] * 3 + ["fp16-mixed"] * 3 + ["fp32"] * 3  # 3 models
    assert config.runner.isolation == "per-job"


def test_compiled_variant_is_one_set_away():
    """The config's documented way to run compiled: one --set per backend option."""
    config = load_config(
        CONFIG,
        ["backends.options.torch-amp.compile=true", "backends.options.tf-keras.jit_compile=true"],
    )
    check_backends(config, str(CONFIG))
    options = {j.backend: j.options for j in expand_jobs(config, "cuda")}
    assert options["torch-amp"]["compile"] is True and options["tf-keras"]["jit_compile"] is True


def _throughput_table():
    path = ROOT / "benchmarks" / "throughput_table.py"
    spec = importlib.util.spec_from_file_location("throughput_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_table_speedups_and_mfu():
    """The gpu_check table: speedups against the eager fp32/tf32 rows of the same model, MFU
    against the datasheet and the measured ceiling, failures shown with their reason."""
    table = _throughput_table()
    name = "NVIDIA H100 80GB HBM3"

    def rec(policy: str, sps: float | None, compile_: bool = False, status: str = "ok") -> dict:
        r = mfu_record(policy, name, sps)
        r.update(model="mlp", backend="torch-amp", status=status, error=None if sps else "OOM at step 3")
        r["config"]["options"] = {"compile": compile_}
        r["metrics"]["peak_memory_bytes"] = 2 * 2**30
        return r

    records = [
        rec("fp32", 1e9),
        rec("tf32", 2e9),
        rec("bf16-mixed", 4e9),
        rec("bf16-mixed", 5e9, compile_=True),
        rec("fp16-mixed", None, status="oom"),
    ]
    rows = {(r[2], r[3]): r for r in table.rows(records, {"bf16": 800.0})}
    header = list(table.COLUMNS)
    col = {c: header.index(c) for c in header}
    eager_bf16, compiled_bf16 = rows[("bf16-mixed", "no")], rows[("bf16-mixed", "yes")]
    assert eager_bf16[col["vs fp32"]] == "4.00x" and eager_bf16[col["vs tf32"]] == "2.00x"
    assert compiled_bf16[col["vs fp32"]] == "5.00x"
    assert eager_bf16[col["peak GiB"]] == "2.0"
    assert eager_bf16[col["MFU"]] == f"{3 * 72 * 4e9 / 989.5e12:.1%}"
    assert eager_bf16[col["MFU meas."]] == f"{3 * 72 * 4e9 / 800e12:.1%}"
    assert rows[("fp32", "no")][col["MFU meas."]] == "-"  # no fp32 ceiling given
    assert rows[("fp16-mixed", "no")][col["samples/s"]] == "-"
    assert rows[("fp16-mixed", "no")][col["status"]].startswith("oom: OOM at step 3")
    text = "\n".join(table.footer(records, {"bf16": 800.0}))
    assert "NVIDIA H100 SXM" in text and "datasheet" in text and "bf16 800" in text
