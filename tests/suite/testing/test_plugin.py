"""The pytest plugin: registered through the ``pytest11`` entry point, cheap to load (every pytest
session of an environment with precision-suite installed loads it), and its ``precision_run``
fixture makes a user's test of their model a few lines that pass or fail with the verdict table."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

from tests.suite.conftest import FAKE_CONFIG

pytest_plugins = ["pytester"]

HEAVY = ("numpy", "pydantic", "rich", "yaml", "scipy", "matplotlib", "torch", "tensorflow", "keras", "jax", "ray")


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("precision_suite") == "precision_suite.testing.plugin"


def test_loading_the_plugin_and_the_package_imports_nothing_heavy():
    code = (
        "import sys, json, pytest\nbefore = set(sys.modules)\n"
        "import precision_suite, precision_suite.testing, precision_suite.testing.plugin\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(result.stdout)
    assert "precision_suite.testing.plugin" in loaded
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    assert [m for m in loaded if m.startswith("precision_suite.")] == [
        "precision_suite.testing",
        "precision_suite.testing.plugin",
    ]


USER_TEST = '''
from precision_suite.testing import assert_parity

CONFIG = {config!r}
BROKEN = {{"fake": {{"lr_factor": 10, "fault_policies": ["fp16-mixed"]}}}}  # a wrong learning rate


def test_fp16_keeps_accuracy(precision_run):
    result = precision_run(CONFIG)
    assert_parity(result)


def test_broken_fp16_keeps_accuracy(precision_run):
    result = precision_run(CONFIG, backends={{"options": BROKEN}})
    assert_parity(result)
'''


def test_a_users_test_with_the_fixture_passes_or_fails_with_the_verdict_table(pytester, fake_backends, tmp_path):
    """In a fresh pytest process, as a user would run it: the plugin comes from the entry point
    (no ``-p``), runs land in the test's tmp_path, a sound candidate passes and a broken one
    fails with the verdict table as the failure message."""
    config = tmp_path / "fake.yaml"
    config.write_text(FAKE_CONFIG)
    pytester.makepyfile(test_user_model=USER_TEST.format(config=str(config)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: precision-suite run */test_broken_fp16*/run-1: 1 verdict(s) failed",
            "*FAIL*parity*mlp/digits/cpu fake fp16-mixed: *",
        ]
    )
