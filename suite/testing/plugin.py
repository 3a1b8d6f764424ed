"""The pytest plugin of precision-suite (entry point ``pytest11``): the ``precision_run`` fixture.

pytest loads this module in every session of an environment where precision-suite is installed,
so it imports nothing but pytest at load; the suite is imported when a test uses the fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from precision_suite.api import RunResult


@pytest.fixture
def precision_run(tmp_path: Path):
    """Run a precision-suite comparison in this test's ``tmp_path`` and return its ``RunResult``.

    ``precision_run(config=None, **overrides)`` takes what ``precision_suite.run`` takes (a YAML
    path, a mapping or None for the default; top-level sections as keywords, deep-merged;
    ``set=["train.steps=20"]``); each call writes to a new ``tmp_path/run-<n>``. Check the result
    with ``precision_suite.testing.assert_parity(result)``.
    """
    from precision_suite.api import run

    count = 0

    def run_in_tmp_path(config: Any = None, **overrides: Any) -> RunResult:
        nonlocal count
        count += 1
        overrides.setdefault("out", tmp_path / f"run-{count}")
        return run(config, **overrides)

    return run_in_tmp_path
