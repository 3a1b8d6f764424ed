"""Helpers for a user's own tests of their model under precision policies.

``assert_parity(result)`` turns a run (``precision_suite.run(...)``) into a pass/fail assertion
whose message is the verdict table ``precision-suite check`` prints; the pytest plugin
(``precision_suite.testing.plugin``, registered through the ``pytest11`` entry point) adds the
``precision_run`` fixture that runs a config in the test's ``tmp_path``.

Importing this package imports nothing heavy: the plugin loads it in every pytest session of an
environment where precision-suite is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from precision_suite.api import RunResult


def assert_parity(result: RunResult, strict: bool = False) -> None:
    """Pass when every job ran and every enforced verdict of ``result`` passed (parity,
    cross-framework, precision-active, ...); else raise ``AssertionError`` whose message is the
    verdict table. An INCONCLUSIVE verdict (more seeds needed) fails only with ``strict``, as
    in ``precision-suite check --strict``."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    failing = result.failed_verdicts(strict=strict)
    if not failing and not result.failed_jobs:
        return
    undecided = sum(not v.is_failure for v in failing)
    what = [f"{len(failing) - undecided} verdict(s) failed"] if len(failing) > undecided else []
    what += [f"{undecided} verdict(s) inconclusive (strict)"] if undecided else []
    what += [f"{result.failed_jobs} job(s) failed"] if result.failed_jobs else []
    header = f"precision-suite run {result.out_dir}: {' and '.join(what)}"
    raise AssertionError(f"{header}\n{result.verdict_table(strict=strict)}")
