"""Precision policies: one value object each, declared in one place.

A ``Policy`` carries everything the suite asks of a policy (cf. Keras' ``DTypePolicy``): the
dtypes it computes and keeps weights in, whether the optimizer updates an fp32 master copy,
whether it scales the loss, which hardware computes it natively (``NativeOn``), the bytes per
element of its dtypes for the memory accounting, the peak FLOP/s it is measured against, its
Keras ``DTypePolicy`` name and what ``precision-suite advise`` prints for it in Lightning,
accelerate, PyTorch and Keras. A policy with settings of its own (an FP8 scaling recipe) keeps
them in ``settings``; one whose native rule is more than a flag and a capability subclasses
``NativeOn`` (or passes any object with its ``emulation`` method).

A new policy is one ``register_policy(Policy(...))`` call, made in the module of the backend that
implements it (that module is imported wherever the backend's jobs run; for a run directory read
in a fresh process, ``find_policy`` imports the registered backends to find it), or listed under
the entry-point group ``precision_suite.policies`` (``name = "module:OBJECT"``).

Framework-free: imported by the suite's parent process, by verdicts and by outputs alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Protocol

ENTRY_POINT_GROUP = "precision_suite.policies"

# Bytes per element of every dtype name a policy or the accounting may hold (numpy spelling); a
# policy adds its own (``Policy.dtype_bytes``) when it registers.
_DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8}


class UnknownPolicy(ValueError):
    """A policy name nothing declares; the message lists the known ones."""


class NativeRule(Protocol):
    """Why the hardware of a record cannot compute a policy natively, or "" when it can."""

    def emulation(self, device: str, environ: Mapping[str, Any]) -> str: ...


def cuda_capability(environ: Mapping[str, Any]) -> float | None:
    """The recorded CUDA compute capability as a number (8.9 for (8, 9)), or None."""
    for key in ("cuda_capability", "compute_capability", "device_capability"):
        value = environ.get(key)
        if isinstance(value, list | tuple) and len(value) == 2:
            return float(value[0]) + float(value[1]) / 10
        if isinstance(value, int | float | str):
            try:
                return float(value)
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class NativeOn:
    """The hardware that computes a policy natively, read from a record's environment alone.

    ``cpu_flags``: CPU ISA flags any one of which suffices (``()``: every CPU; ``None``: no CPU).
    ``cuda_capability``: the lowest CUDA compute capability that does (None: every CUDA device).
    ``cpu_vector_flag`` / ``cpu_matrix_flag``: a CPU with the vector flag but not the matrix one
    (AVX512_BF16 without AMX) gains at most the vector width (the diagnostics' "isa" line)."""

    cpu_flags: tuple[str, ...] | None = ()
    cuda_capability: float | None = None
    cpu_vector_flag: str | None = None
    cpu_matrix_flag: str | None = None
    what: str = ""  # what the hardware lacks, for messages: "FP8" ("no CPU computes FP8 natively")

    def emulation(self, device: str, environ: Mapping[str, Any]) -> str:
        """Missing ISA flags count as absent: a speed claim needs evidence."""
        if device == "cpu":
            if self.cpu_flags is None:
                return f"no CPU computes {self.what} natively"
            if not self.cpu_flags:
                return ""
            flags = environ.get("cpu_flags") or {}
            if any(flags.get(flag) for flag in self.cpu_flags):
                return ""
            if not flags:
                return f"CPU ISA flags not recorded; {' / '.join(self.cpu_flags)} not shown"
            return f"CPU has no {' / '.join(self.cpu_flags)}"
        capability = cuda_capability(environ)
        if self.cuda_capability is not None and capability is not None and capability < self.cuda_capability:
            return f"compute capability {capability:.1f} < {self.cuda_capability:.1f}"
        return ""


ALWAYS_NATIVE = NativeOn()


@dataclass(frozen=True)
class Policy:
    """One precision policy (docs/architecture.md, "The precision policy table").

    ``advise``: tool ("Lightning", "accelerate", "PyTorch", "Keras") → the lines that apply the
    policy there; ``{device}`` stands for the run's device type. ``settings``: the policy's own
    settings (e.g. an FP8 recipe), recorded and read by the backends that implement it."""

    name: str
    compute_dtype: str  # dtype of matmul outputs where the policy applies
    master_dtype: str  # dtype of the weights the optimizer updates
    loss_scaling: bool  # whether it scales the loss (settings from the loss_scale section)
    native: NativeRule = ALWAYS_NATIVE
    peak: str = "fp32"  # the device peak it is measured against (precision_suite.measure.flops)
    tf32: bool = False  # TF32 matmul/conv allowed (set explicitly, on or off, for every policy)
    cuda_only: bool = False
    keras_name: str | None = None  # the Keras DTypePolicy name; None: Keras has none
    advise: Mapping[str, str] = field(default_factory=dict)
    dtype_bytes: Mapping[str, int] = field(default_factory=dict)  # dtypes it adds to the accounting
    settings: Mapping[str, Any] = field(default_factory=dict)
    # GEMM dimensions its fast kernels want a multiple of ("why no speedup" names the others):
    # 8 for fp16/bf16 tensor cores and AMX tiles, 16 for FP8's scaled matmuls.
    gemm_multiple: int = 8

    @property
    def pure(self) -> bool:
        """Half weights with no fp32 master copy (shown for information, not held to parity)."""
        return self.master_dtype != "float32"

    @property
    def master_weights(self) -> bool:
        """The optimizer updates an fp32 copy of the weights."""
        return not self.pure

    @property
    def reduced_precision(self) -> bool:
        """Its matmuls produce something narrower than fp32: a speedup is expected of it, and a
        missing one is diagnosed (``precision_suite.verdicts.diagnose``)."""
        return self.compute_dtype != "float32"

    def loss_scaling_mode(self, enabled: bool, dynamic: bool) -> str:
        """``"dynamic"``, ``"static"`` or ``"none"`` for the loss_scale section's ``enabled`` and
        ``dynamic``: the one derivation every backend, the reference scaler and the comparison use."""
        if not (self.loss_scaling and enabled):
            return "none"
        return "dynamic" if dynamic else "static"

    def emulation(self, device: str, environ: Mapping[str, Any]) -> str:
        """Why the hardware a record ran on cannot compute this policy natively (a reason to label
        it "emulated" and keep it out of speed claims), or "" when it can."""
        return self.native.emulation(device, environ)

    def unsupported_reason(self, device: str) -> str | None:
        """Why the policy cannot run on ``device`` at all ("cpu" or "cuda"), or None."""
        if self.cuda_only and device != "cuda":
            return f"{self.name} needs a CUDA device (device is {device})"
        return None

    def advice(self, tool: str, device: str) -> str | None:
        """What ``advise`` prints for this policy in ``tool`` on ``device`` ("cpu"/"cuda"), or None."""
        line = self.advise.get(tool)
        return None if line is None else line.replace("{device}", device)


_REGISTRY: dict[str, Policy] = {}
_SEARCHED: set[str] = set()  # names looked for among the declarations not yet imported
# Every registered policy by name, in declaration order (the order rows are shown in): read-only.
POLICIES: Mapping[str, Policy] = MappingProxyType(_REGISTRY)


def register_policy(policy: Policy, *, replace: bool = False) -> Policy:
    """Declare ``policy``. Declaring another policy under a taken name is an error unless
    ``replace``; declaring the same one again (a module imported twice) is harmless."""
    known = _REGISTRY.get(policy.name)
    if known is not None and known != policy and not replace:
        raise ValueError(f'policy "{policy.name}" is declared twice, differently')
    for dtype, size in policy.dtype_bytes.items():
        if _DTYPE_BYTES.get(dtype, size) != size:
            raise ValueError(f"policy {policy.name}: {dtype} is {_DTYPE_BYTES[dtype]} bytes, not {size}")
    _DTYPE_BYTES.update(policy.dtype_bytes)
    _REGISTRY[policy.name] = policy
    return policy


def unregister_policy(name: str) -> None:
    """Forget a declared policy (tests that declare one of their own)."""
    _REGISTRY.pop(name, None)


def _load_declarations() -> None:
    """Import what may declare policies the registry has not seen: the entry points of
    ``precision_suite.policies``, then every registered backend's module (a backend declares
    the policies it brings). A module that cannot be loaded declares nothing."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            value = ep.load()
        except Exception:  # noqa: BLE001 - a broken plugin must not break reading records
            continue
        if isinstance(value, Policy):
            register_policy(value)
    from precision_suite.backends import registry

    for target in registry().values():
        try:
            importlib.import_module(target.partition(":")[0])
        except Exception:  # noqa: BLE001
            continue


def find_policy(name: str) -> Policy | None:
    """The policy called ``name``, or None when nothing declares it (a record of a policy from a
    plugin that is not installed here: nothing to hold it to)."""
    if name and name not in _REGISTRY and name not in _SEARCHED:
        _SEARCHED.add(name)  # a run directory names it in every record: search once
        _load_declarations()
    return _REGISTRY.get(name)


def get_policy(name: str) -> Policy:
    """The policy called ``name``; ``UnknownPolicy`` lists the known ones."""
    policy = find_policy(name)
    if policy is None:
        raise UnknownPolicy(f'unknown policy "{name}"; known: {", ".join(_REGISTRY)}')
    return policy


def dtype_bytes(name: str) -> int:
    """Bytes per element of dtype ``name`` (numpy spelling), as the memory accounting counts it."""
    try:
        return _DTYPE_BYTES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(_DTYPE_BYTES)}") from None


# ---------------------------------------------------------------- the built-in policies
def keras_global_policy(name: str) -> str:
    return f'keras.mixed_precision.set_global_policy("{name}")'


def autocast_lines(dtype: str, scaler: bool) -> str:
    autocast = f'with torch.autocast(device_type="{{device}}", dtype=torch.{dtype}):\n    loss = loss_fn(model(x), y)\n'
    if not scaler:
        return autocast + "loss.backward()\noptimizer.step()"
    return (
        'scaler = torch.amp.GradScaler("{device}")\n'
        + autocast
        + "scaler.scale(loss).backward()\nscaler.step(optimizer)\nscaler.update()"
    )


# CPU ISA flags that compute a half type natively (vector, matrix) and the CUDA capability: bf16
# and TF32 arrived with Ampere (8.0), fp16 tensor math with 5.3.
FP16_NATIVE = NativeOn(("avx512_fp16", "amx_fp16"), 5.3, "avx512_fp16", "amx_fp16")
BF16_NATIVE = NativeOn(("avx512_bf16", "amx_bf16"), 8.0, "avx512_bf16", "amx_bf16")
TF32_NATIVE = NativeOn((), 8.0)

register_policy(Policy("fp32", "float32", "float32", False, keras_name="float32"))
register_policy(
    Policy(
        "tf32",
        "float32",
        "float32",
        False,
        TF32_NATIVE,
        peak="tf32",
        tf32=True,
        cuda_only=True,
        keras_name="float32",
        advise={
            "Lightning": 'torch.set_float32_matmul_precision("high")  # Lightning has no precision flag for TF32',
            "accelerate": 'torch.set_float32_matmul_precision("high")',
            "Keras": "tf.config.experimental.enable_tensor_float_32_execution(True)",
            "PyTorch": "torch.backends.cuda.matmul.allow_tf32 = True\ntorch.backends.cudnn.allow_tf32 = True",
        },
    )
)
register_policy(
    Policy(
        "fp16-mixed",
        "float16",
        "float32",
        True,
        FP16_NATIVE,
        peak="fp16",
        keras_name="mixed_float16",
        advise={
            "Lightning": 'L.Trainer(precision="16-mixed")',
            "accelerate": 'Accelerator(mixed_precision="fp16")',
            "Keras": keras_global_policy("mixed_float16"),
            "PyTorch": autocast_lines("float16", scaler=True),
        },
    )
)
register_policy(
    Policy(
        "bf16-mixed",
        "bfloat16",
        "float32",
        False,
        BF16_NATIVE,
        peak="bf16",
        keras_name="mixed_bfloat16",
        advise={
            "Lightning": 'L.Trainer(precision="bf16-mixed")',
            "accelerate": 'Accelerator(mixed_precision="bf16")',
            "Keras": keras_global_policy("mixed_bfloat16"),
            "PyTorch": autocast_lines("bfloat16", scaler=False),
        },
    )
)
register_policy(
    Policy(
        "fp16-pure",
        "float16",
        "float16",
        True,
        FP16_NATIVE,
        peak="fp16",
        keras_name="float16",
        advise={
            "Lightning": 'L.Trainer(precision="16-true")',
            "accelerate": "model = model.to(torch.float16)  # accelerate has no pure-fp16 switch",
            "Keras": keras_global_policy("float16"),
            "PyTorch": "model = model.to(torch.float16)",
        },
    )
)
register_policy(
    Policy(
        "bf16-pure",
        "bfloat16",
        "bfloat16",
        False,
        BF16_NATIVE,
        peak="bf16",
        keras_name="bfloat16",
        advise={
            "Lightning": 'L.Trainer(precision="bf16-true")',
            "accelerate": "model = model.to(torch.bfloat16)  # accelerate has no pure-bf16 switch",
            "Keras": keras_global_policy("bfloat16"),
            "PyTorch": "model = model.to(torch.bfloat16)",
        },
    )
)
