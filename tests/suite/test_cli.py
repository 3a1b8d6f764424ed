"""CLI: exit codes and one-line errors for bad input, `list`, third-party backends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from suite.cli import main


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.epochs=ten"], ["train.epochs", "integer", '"ten"']),
        (["--set", "backends.names=[torch-ampp]"], ['unknown backend "torch-ampp"', "torch-amp, torch-manual"]),
        (["--set", "backends.policies={torch-manual: [fp32]}"], ['"fp32" is not implemented by torch-manual']),
        (["--set", "nonsense"], ["expected KEY=VALUE"]),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path, args, expected):
    result = _cli("run", "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in expected:
        assert fragment in lines[0]
    assert not (tmp_path / "run").exists(), "nothing may run on a bad config"


def test_unknown_yaml_key_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 1\n  batchsize: 8\n")
    result = _cli("run", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: train.batchsize: unknown key 'batchsize' in train"


def test_missing_config_file_and_run_dir(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: no such config file" in err
    assert "results.jsonl: no such file" in err


def test_list_shows_builtin_and_entry_point_backends(fake_backends, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("torch-amp", "torch-manual", "tf-keras", "fake", "fake-missing"):
        assert name in out
    assert "nonexistent-framework is not installed" in out
    assert "cpu:" in out


def test_duplicate_entry_point_name_is_an_error(fake_backends, tmp_path, monkeypatch):
    from backends import RegistryError, registry
    from tests.suite.helpers import activate, install_entry_points

    other = tmp_path / "other-site"
    install_entry_points(other, "clashing", {"torch-amp": "elsewhere:Backend"})
    activate(other, monkeypatch)
    with pytest.raises(RegistryError, match='"torch-amp" is registered twice'):
        registry()
    registry.cache_clear()
