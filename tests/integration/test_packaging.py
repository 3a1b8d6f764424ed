"""An installed copy (not the editable checkout) exposes one namespace, ``precision_suite``, and
no generic top-level names such as ``backends`` or ``suite``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_wheel_has_one_namespace(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    top_level = sorted(p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info")))
    assert "precision_suite" in top_level
    assert not {"backends", "suite", "configs"} & set(top_level), top_level
    script = tmp_path / "check.py"
    script.write_text(
        "import importlib.util, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import precision_suite, precision_suite.backends.base, precision_suite.configs\n"
        "from importlib import resources\n"
        "assert resources.files('precision_suite.configs').joinpath('default.yaml').is_file()\n"
        "assert precision_suite.__file__.startswith(sys.argv[1]), precision_suite.__file__\n"
        "for name in ('backends', 'suite'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
    )
    # -I: no current directory or PYTHON* variables on the path, as outside the checkout.
    check = subprocess.run(
        [sys.executable, "-I", str(script), str(target)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert check.returncode == 0, check.stderr[-2000:]
