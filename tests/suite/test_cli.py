"""CLI: exit codes and one-line errors for bad input, `list`, third-party backends."""

from __future__ import annotations

import subprocess
import sys

import pytest
from precision_suite.cli import main

from tests.helpers.cli import read_run, run_cli


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "precision_suite.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.epochs=ten"], ["train.epochs", "integer", '"ten"']),
        (
            ["--set", "backends.names=[torch-ampp]"],
            ['unknown backend "torch-ampp"', "torch-amp, torch-manual"],
        ),
        (
            ["--set", "backends.policies={torch-manual: [fp32]}"],
            ['"fp32" is not implemented by torch-manual'],
        ),
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


def _smoke_run(out, *overrides: str) -> subprocess.CompletedProcess:
    """``precision-suite run configs/smoke.yaml --out OUT --set O1 ...`` in a subprocess."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    return _cli("run", "configs/smoke.yaml", "--out", str(out), *sets)


def test_missing_data_file_exits_2_before_any_job(tmp_path):
    out = tmp_path / "run"
    result = _smoke_run(out, "data.name=npz", f"data.path={tmp_path / 'nope.npz'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: configs/smoke.yaml: data: {tmp_path / 'nope.npz'}: no such file"
    assert not out.exists()


def test_unknown_yaml_key_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 1\n  batchsize: 8\n")
    result = _cli("run", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f'error: {path}: train.batchsize: unknown key "batchsize" in train'


def test_missing_config_file_and_run_dir(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: no such config file" in err
    assert "results.jsonl: no such file" in err


def test_list_shows_builtin_and_entry_point_backends(fake_backends, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("torch-amp", "torch-manual", "tf-keras", "fake", "fake-missing"):
        assert name in out
    assert "nonexistent-framework is not installed" in out
    assert "cpu:" in out


def test_duplicate_entry_point_name_is_an_error(fake_backends, tmp_path, monkeypatch):
    from precision_suite.backends import RegistryError, registry

    from tests.helpers.cli import activate, install_entry_points

    other = tmp_path / "other-site"
    install_entry_points(other, "clashing", {"torch-amp": "elsewhere:Backend"})
    activate(other, monkeypatch)
    with pytest.raises(RegistryError, match='"torch-amp" is registered twice'):
        registry()
    registry.cache_clear()


# Slow: the same mechanism as tests/integration/test_no_framework.py's run without jax (a missing
# framework's jobs unavailable, the rest run) and its `list` without any framework, and the
# runner's fake-backend tests of a missing framework.
@pytest.mark.slow
def test_missing_tensorflow_makes_tf_keras_unavailable_and_torch_jobs_still_run(tmp_path, monkeypatch, capsys):
    """As if tensorflow were uninstalled: `list` says why, `run` records tf-keras jobs as
    `unavailable` (not failures) and completes the torch jobs."""
    import importlib.util

    pytest.importorskip("torch")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in ("tensorflow", "keras"):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list"]) == 0
    tf_row = next(line for line in capsys.readouterr().out.splitlines() if "tf-keras" in line)
    assert "unavailable: tensorflow is not installed" in tf_row

    out = tmp_path / "run"
    code = run_cli(
        "configs/smoke.yaml",
        out,
        "backends.names=[torch-amp, tf-keras]",
        "backends.policies={torch-amp: [fp32], tf-keras: [fp32]}",
    )
    statuses = {r["backend"]: (r["status"], r["error"]) for r in read_run(out)}
    assert code == 0
    assert statuses["tf-keras"] == ("unavailable", "tensorflow is not installed")
    assert statuses["torch-amp"][0] == "ok"


def test_third_party_backend_installed_with_pip_is_listed_and_runs(tmp_path, monkeypatch, capsys):
    """A throwaway package declaring a backend in the entry-point group, installed by pip: it
    appears in `list` and runs, with no change to suite code."""
    from precision_suite.backends import registry

    from tests.helpers.cli import REPO_ROOT

    package = tmp_path / "thirdparty"
    (package / "thirdparty_backend").mkdir(parents=True)
    (package / "thirdparty_backend" / "__init__.py").write_text(
        "from tests.helpers.fake_backend import FakeBackend\n\n\n"
        'class ThirdPartyBackend(FakeBackend):\n    name = "third-party"\n'
    )
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "thirdparty-backend"\nversion = "0.1"\n'
        '[project.entry-points."precision_suite.backends"]\n'
        'third-party = "thirdparty_backend:ThirdPartyBackend"\n'
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(package),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    monkeypatch.setenv("PYTHONPATH", f"{site}:{REPO_ROOT}:{':'.join(p for p in sys.path if p)}")
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.syspath_prepend(str(site))
    registry.cache_clear()
    try:
        assert main(["list"]) == 0
        assert "third-party" in capsys.readouterr().out
        out = tmp_path / "run"
        code = run_cli(
            "configs/smoke.yaml",
            out,
            "backends.names=[third-party]",
            "loss_scale.enabled=false",
            "backends.policies={third-party: [fp32, fp16-mixed]}",
        )
        assert code == 0
        assert [(r["backend"], r["policy"], r["status"]) for r in read_run(out)] == [
            ("third-party", "fp32", "ok"),
            ("third-party", "fp16-mixed", "ok"),
        ]
    finally:
        registry.cache_clear()


def test_internal_crash_has_its_own_exit_code(monkeypatch, capsys):
    import precision_suite.cli as cli

    def crash(args, console):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "list", crash)
    assert main(["list"]) == cli.EXIT_INTERNAL == 4
    err = capsys.readouterr().err
    assert "Traceback" in err  # for the bug report: this is not a user error
    assert err.strip().splitlines()[-1].startswith("internal error (a bug in precision-suite")
    assert "RuntimeError: boom" in err.strip().splitlines()[-1]
    assert "\n  4    internal error" in cli.__doc__


def test_unwritable_out_dir_is_a_usage_error_without_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _smoke_run(blocker / "run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {blocker / 'run'}: Not a directory"


@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_model_that_cannot_take_the_data_shape_exits_2_before_any_job(tmp_path, model):
    out = tmp_path / "run"
    result = _smoke_run(out, f"models=[{model}]", "data={name: synthetic, synthetic: {shape: [64]}}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: configs/smoke.yaml: models.0 ({model}) does not fit data synthetic "
        f"(rows of shape (64,)): {model} needs image inputs (C, H, W), got shape (64,)"
    )
    assert not out.exists()


def test_help_lists_every_exit_code(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in ("0", "1", "2", "3", "4", "130"):
        assert f"\n  {code} " in out
    assert "internal error" in out
