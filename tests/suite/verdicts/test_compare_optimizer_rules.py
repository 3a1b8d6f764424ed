"""Cross-framework verdict when tf-keras runs stock Keras optimizers (``optimizer_rules: keras``)."""

from __future__ import annotations

from precision_suite.verdicts.compare import FAIL, NOT_COMPARABLE, PASS, check_exit_code, compare

from tests.helpers.records import make_record


def _run(tf_rules: str | None, loss_offset: float) -> list[dict]:
    records = [make_record("torch-amp", "fp32", seed) for seed in (0, 1, 2)]
    for seed in (0, 1, 2):
        record = make_record("tf-keras", "fp32", seed, loss_offset=loss_offset)
        if tf_rules is not None:
            record["config"]["options"] = {"jit_compile": False, "optimizer_rules": tf_rules}
        records.append(record)
    return records


def test_different_optimizer_rules_are_not_comparable_rather_than_failing():
    # Curves 5 % apart: a FAIL under the same rules, "n/a" under different ones.
    comparison = compare(_run("keras", loss_offset=0.1))
    [verdict] = comparison.groups[0].verdicts
    assert verdict.name == "cross-framework" and verdict.outcome == NOT_COMPARABLE
    assert verdict.detail.startswith("different optimizer rules (torch-amp fp32: torch, tf-keras fp32: keras)")
    assert check_exit_code(comparison) == 0


def test_same_optimizer_rules_are_still_held_to_the_curves():
    assert compare(_run("torch", loss_offset=0.1)).groups[0].verdicts[0].outcome == FAIL
    assert compare(_run(None, loss_offset=0.1)).groups[0].verdicts[0].outcome == FAIL  # records without the option
    assert compare(_run("torch", loss_offset=1e-5)).groups[0].verdicts[0].outcome == PASS
