"""An installed copy (not the editable checkout) exposes one namespace, ``precision_suite``, and
no generic top-level names such as ``backends`` or ``suite``; ``.[all]`` installs every optional
extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]  # the repository root


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
    # The pytest plugin is registered where pip puts entry points (pytest loads it from there).
    (entry_points,) = target.glob("precision_suite-*.dist-info/entry_points.txt")
    assert "[pytest11]\nprecision_suite = precision_suite.testing.plugin" in entry_points.read_text()
    script = tmp_path / "check.py"
    script.write_text(
        "import importlib.util, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import precision_suite, precision_suite.backends.base, precision_suite.configs\n"
        "import precision_suite.testing.plugin\n"
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


def test_all_extra_installs_every_optional_extra_but_dev():
    """``pip install ".[all]"`` then ``export --to mlflow`` must find mlflow: ``all`` names each
    other extra (or repeats its every requirement), ``dev`` only excepted."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    covered = set()
    listed = set()
    for text in extras["all"]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
            assert set(requirement.extras) <= set(extras), f"all names an extra that does not exist: {text}"
            covered |= set(requirement.extras)
        else:
            listed.add(str(requirement))
    covered |= {name for name, requirements in extras.items() if {str(Requirement(r)) for r in requirements} <= listed}
    assert covered - {"all"} == set(extras) - {"all", "dev"}
