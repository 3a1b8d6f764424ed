"""The fp8-mixed declaration (backends/fp8.py): found wherever records are read, with no framework
imported, and its native rule."""

from __future__ import annotations

import subprocess
import sys

from precision_suite.backends.fp8 import FP8_MIXED, Fp8Settings, fp8_problems, fp8_settings
from precision_suite.backends.policy import dtype_bytes, get_policy


def test_found_by_name_in_a_fresh_process_without_importing_a_framework():
    code = (
        "import sys; from precision_suite.backends.policy import find_policy; p = find_policy('fp8-mixed');"
        "print(p.name, p.compute_dtype, p.master_dtype, p.loss_scaling, p.keras_name,"
        " sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'torchao') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["fp8-mixed", "bfloat16", "float32", "False", "mixed_bfloat16", "[]"]


def test_declaration():
    assert get_policy("fp8-mixed") is FP8_MIXED
    assert fp8_settings(FP8_MIXED) == Fp8Settings("float8_e4m3fn", "float8_e5m2")
    assert fp8_settings(get_policy("bf16-mixed")) is None
    assert dtype_bytes("float8_e4m3fn") == dtype_bytes("float8_e5m2") == 1
    assert FP8_MIXED.loss_scaling_mode(enabled=True, dynamic=True) == "none"


def test_native_only_where_the_backend_and_the_hardware_say_so():
    assert FP8_MIXED.emulation("cpu", {"cpu_flags": {"amx_bf16": True, "avx512_fp16": True}}) == (
        "no CPU computes FP8 natively"
    )
    assert FP8_MIXED.emulation("cuda", {"cuda_capability": [8, 6]}) == "compute capability 8.6 < 8.9"
    assert FP8_MIXED.emulation("cuda", {"cuda_capability": [9, 0]}) == ""
    keras_eager = {"cuda_capability": [9, 0], "fp8": {"emulate_reason": "cuda without jit_compile"}}
    assert FP8_MIXED.emulation("cuda", keras_eager) == "cuda without jit_compile"


def test_fp8_problems():
    settings = Fp8Settings()
    ran = {"fp8_layers": ["dense0"], "fp8_operands": {"forward": ["float8_e4m3fn"], "backward": ["float8_e5m2"]}}
    assert fp8_problems(ran, settings) == []
    assert fp8_problems({**ran, "fp8_layers": []}, settings)[0].startswith("no layer ran in FP8")
    bf16_only = {**ran, "fp8_operands": {"forward": [], "backward": ["bfloat16"]}}
    assert fp8_problems(bf16_only, settings) == [
        "forward matmul operands none in FP8, expected float8_e4m3fn",
        "no FP8 gradient operands observed in the backward pass",
    ]
