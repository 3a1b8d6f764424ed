"""Whether the hardware a record ran on computes a policy natively: a policy it can only emulate is
labelled ``emulated``, shown, and never claimed as a speedup. Read from the record's environment
(CPU ISA flags, CUDA compute capability) alone."""

from __future__ import annotations

from typing import Any

from precision_suite.backends.policy import find_policy


def emulation(policy: str, device: str, environ: dict[str, Any]) -> str:
    """Why the hardware cannot accelerate ``policy`` (a reason to label it "emulated" and keep
    it out of speed claims), or "" if it can. Missing ISA flags count as absent: a speed claim
    needs evidence. The rule is the policy's (``Policy.native``); a policy nothing here declares
    is not labelled."""
    found = find_policy(policy)
    return found.emulation(device, environ) if found is not None else ""
