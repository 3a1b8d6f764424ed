"""The policy registry (backends/policy.py): declarations, the native-hardware rule, bytes per
element, and the family/runtime of a backend written before the two were apart."""

from __future__ import annotations

import pytest
from precision_suite.backends.base import Availability, Backend
from precision_suite.backends.policy import (
    POLICIES,
    NativeOn,
    Policy,
    UnknownPolicy,
    dtype_bytes,
    find_policy,
    get_policy,
    register_policy,
    unregister_policy,
)


@pytest.fixture
def declared():
    names: list[str] = []

    def declare(policy: Policy, **kwargs) -> Policy:
        names.append(policy.name)
        return register_policy(policy, **kwargs)

    yield declare
    for name in names:
        unregister_policy(name)


def test_builtin_policies_in_declaration_order():
    assert list(POLICIES)[:6] == ["fp32", "tf32", "fp16-mixed", "bf16-mixed", "fp16-pure", "bf16-pure"]


# Hardware facts from the vendors' documentation: fp16 tensor math from compute capability 5.3
# (Jetson TX1; GP100 6.0), bf16 and TF32 from Ampere (8.0), FP8 from Ada/Hopper (8.9).
@pytest.mark.parametrize(
    ("policy", "capability", "emulated"),
    [
        ("fp16-mixed", (5, 2), True),
        ("fp16-mixed", (6, 0), False),
        ("bf16-mixed", (7, 5), True),  # T4
        ("bf16-mixed", (8, 0), False),  # A100
        ("tf32", (7, 0), True),  # V100
        ("tf32", (8, 6), False),
        ("fp32", (3, 5), False),
    ],
)
def test_native_on_cuda_follows_the_compute_capability(policy, capability, emulated):
    reason = get_policy(policy).emulation("cuda", {"cuda_capability": list(capability)})
    assert bool(reason) is emulated


def test_native_on_cpu_needs_one_of_the_flags_and_missing_flags_count_as_absent():
    bf16 = get_policy("bf16-mixed")
    assert bf16.emulation("cpu", {"cpu_flags": {"avx512_bf16": True}}) == ""
    assert bf16.emulation("cpu", {"cpu_flags": {"amx_bf16": True}}) == ""
    assert bf16.emulation("cpu", {"cpu_flags": {"avx512_fp16": True}}) == "CPU has no avx512_bf16 / amx_bf16"
    assert bf16.emulation("cpu", {}) == "CPU ISA flags not recorded; avx512_bf16 / amx_bf16 not shown"
    assert get_policy("fp32").emulation("cpu", {}) == ""


def test_a_rule_with_no_native_cpu_and_a_capability_floor(declared):
    fp8 = declared(Policy("fp8-test", "float8_e4m3fn", "float32", False, NativeOn(None, 8.9, what="FP8")))
    assert fp8.emulation("cpu", {"cpu_flags": {"amx_bf16": True}}) == "no CPU computes FP8 natively"
    assert fp8.emulation("cuda", {"cuda_capability": [8, 0]}) == "compute capability 8.0 < 8.9"
    assert fp8.emulation("cuda", {"cuda_capability": [9, 0]}) == ""


def test_a_rule_may_be_any_object_with_an_emulation_method(declared):
    class NeverNative:
        def emulation(self, device, environ):
            return f"nothing computes it natively ({device})"

    declared(Policy("odd-test", "float16", "float32", False, NeverNative()))
    assert get_policy("odd-test").emulation("cuda", {}) == "nothing computes it natively (cuda)"


def test_declaring_registers_its_dtype_sizes_and_rejects_a_contradiction(declared):
    with pytest.raises(ValueError, match="unknown dtype 'float7_test'"):
        dtype_bytes("float7_test")
    declared(Policy("f7-test", "float7_test", "float32", False, dtype_bytes={"float7_test": 1}))
    assert dtype_bytes("float7_test") == 1
    with pytest.raises(ValueError, match="float16 is 2 bytes, not 1"):
        declared(Policy("bad-test", "float16", "float32", False, dtype_bytes={"float16": 1}))


def test_a_name_is_declared_once(declared):
    first = declared(Policy("twice-test", "float16", "float32", False))
    declared(Policy("twice-test", "float16", "float32", False))  # the same again: a module imported twice
    with pytest.raises(ValueError, match='"twice-test" is declared twice'):
        declared(Policy("twice-test", "bfloat16", "float32", False))
    assert get_policy("twice-test") == first
    declared(Policy("twice-test", "bfloat16", "float32", False), replace=True)
    assert get_policy("twice-test").compute_dtype == "bfloat16"


def test_unknown_policy_lists_the_known_ones():
    assert find_policy("fp7") is None
    with pytest.raises(UnknownPolicy, match='unknown policy "fp7"; known: fp32, tf32, fp16-mixed'):
        get_policy("fp7")


def test_loss_scaling_mode_master_copy_and_cuda_only():
    fp16 = get_policy("fp16-mixed")
    assert [fp16.loss_scaling_mode(e, d) for e, d in ((True, True), (True, False), (False, True))] == [
        "dynamic",
        "static",
        "none",
    ]
    assert get_policy("bf16-mixed").loss_scaling_mode(True, True) == "none"
    assert get_policy("bf16-pure").pure and not get_policy("bf16-mixed").pure
    assert get_policy("tf32").unsupported_reason("cpu") == "tf32 needs a CUDA device (device is cpu)"
    assert get_policy("tf32").unsupported_reason("cuda") is None


def test_a_backend_naming_only_its_framework_gets_a_runtime_and_a_family():
    class Legacy(Backend):
        name = "legacy-test"
        framework = "tensorflow"
        policies = ("fp32",)

        @staticmethod
        def is_available():
            return Availability(True)

    class Modern(Legacy):
        runtime = "torch"
        family = "keras"

    assert (Legacy.family, Legacy.runtime) == ("keras", "tensorflow")
    assert (Modern.family, Modern.runtime, Modern.framework) == ("keras", "torch", "torch")
