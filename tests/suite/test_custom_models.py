"""Your own model and data (issue 25): ``kind: custom`` factories, ``data.name: python``, labels
per position, the checks before any job, fairness (the same initial weights for every policy of a
seed; Keras from the torch weights with ``convert``), and records read without the user's code."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from precision_suite.config import ConfigError, load_config, validate
from precision_suite.data import DataError, load_dataset
from precision_suite.models import UserCodeError, resolve_import

from tests.helpers.cli import read_run, run_cli, start_cli
from tests.helpers.marks import needs_jax, needs_tf, needs_torch
from tests.helpers.user_models import config_text, write_package


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A folder holding a fresh user package (its own name per test: a module imported by one
    test must not answer for the next) and nothing on sys.path yet."""
    name = f"userpkg_{abs(hash(tmp_path)) % 10**8}"
    root = tmp_path / "project"
    write_package(root, name)
    monkeypatch.chdir(tmp_path)  # not the package's folder: the config's folder must be enough
    yield root, name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


@pytest.fixture
def user_pkg(user_dir, monkeypatch):
    """``user_dir`` with its folder on sys.path, for tests that import the package in this process."""
    monkeypatch.syspath_prepend(str(user_dir[0]))
    return user_dir


def _config(root, name, **kwargs):
    path = root / "config.yaml"
    path.write_text(config_text(name, **kwargs))
    return path


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"kind": "custom", "name": "m"}, "models: models.0 (m): a custom model needs a torch or a keras factory"),
        ({"kind": "custom", "torch": "a.b:f", "convert": "a.b:g"}, "convert maps the torch initial weights"),
        ({"kind": "custom", "torch": "a.b.f"}, "models.0.custom.torch: expected an import string package.module"),
    ],
)
def test_a_custom_model_needs_a_factory_and_well_formed_import_strings(model, message):
    with pytest.raises(ConfigError) as err:
        validate({"models": [model]}, "x.yaml")
    assert message in str(err.value)


def test_python_data_needs_a_loader_and_a_loader_needs_python_data():
    with pytest.raises(ConfigError, match="data.name python needs data.loader"):
        validate({"data": {"name": "python"}}, "x.yaml")
    with pytest.raises(ConfigError, match="data.loader is read only with data.name python"):
        validate({"data": {"name": "digits", "loader": "a.b:c"}}, "x.yaml")


def test_a_config_with_import_strings_gets_its_folder_and_the_cwd_on_its_python_path(user_dir, tmp_path):
    root, name = user_dir
    config = load_config(_config(root, name, extra="python_path: [vendor]\n"))
    assert config.python_path == [str(root / "vendor"), str(root), str(tmp_path)]
    # A built-in config is left as it was: its resolved form and hash do not change.
    (root / "plain.yaml").write_text("models: [mlp]\n")
    assert load_config(root / "plain.yaml").python_path == []


def test_worker_processes_get_the_python_path(user_dir, monkeypatch):
    """Local workers, data-parallel ranks and Ray jobs all start from ``worker_environment``."""
    from precision_suite.execution.local import worker_environment

    root, name = user_dir
    monkeypatch.setenv("PYTHONPATH", "/already/there")
    config = load_config(_config(root, name))
    env = worker_environment(config)
    assert env["PYTHONPATH"].split(":") == [*config.python_path, "/already/there"]
    assert str(root) in config.python_path


def test_an_import_string_that_does_not_resolve_names_the_string_and_the_error():
    with pytest.raises(UserCodeError) as err:
        resolve_import("no_such_pkg_xyz.models:build", "models (m): torch")
    text = str(err.value)
    assert "models (m): torch: cannot import 'no_such_pkg_xyz.models:build'" in text
    assert "ModuleNotFoundError: No module named 'no_such_pkg_xyz'" in text
    with pytest.raises(UserCodeError, match="module 'json' has no attribute 'nope'"):
        resolve_import("json:nope", "data.loader")


# ---------------------------------------------------------------- data
def test_python_loader_keeps_token_ids_and_labels_per_position(user_pkg):
    root, name = user_pkg
    cfg = load_config(_config(root, name, loader="load_tokens")).data
    data = load_dataset(cfg)
    with pytest.raises(DataError, match=r"load_not_a_dict returned list; expected a dict"):
        load_dataset(cfg.model_copy(update={"loader": f"{name}.data:load_not_a_dict"}))
    assert data.x_train.dtype == np.int64 and data.x_train.shape == (500, 6)
    assert data.y_train.shape == (500, 6) and data.num_classes == 5
    rng = np.random.default_rng(0)  # the loader's own recipe, independently
    x = rng.integers(0, 8, size=(600, 6))
    np.testing.assert_array_equal(data.y_test, ((x + np.roll(x, 1, axis=1)) % 5)[500:])


# ---------------------------------------------------------------- initial weights
@needs_torch
def test_torch_initial_weights_are_the_factory_built_under_the_seed(user_pkg):
    import torch
    from precision_suite.backends.torch.custom import torch_initial_state

    root, name = user_pkg
    model = load_config(_config(root, name)).models[0]
    state = torch_initial_state(model, (1, 8, 8), 10, seed=3)
    torch.manual_seed(3)
    expected = resolve_import(f"{name}.models:build_torch", "t")((1, 8, 8), 10).state_dict()
    other_seed = torch_initial_state(model, (1, 8, 8), 10, seed=4)
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value.numpy())
    assert not np.array_equal(state["1.weight"], other_seed["1.weight"])


@needs_tf
def test_with_convert_the_keras_model_starts_from_the_torch_weights(user_pkg):
    from precision_suite.backends.keras.custom import keras_initial_weights
    from precision_suite.backends.torch.custom import torch_initial_state

    root, name = user_pkg
    model = load_config(_config(root, name)).models[0]
    torch_state = torch_initial_state(model, (1, 8, 8), 10, seed=1)
    keras_state = list(keras_initial_weights(model, (1, 8, 8), 10, seed=1, runtime="tensorflow").values())
    broken = model.model_copy(update={"convert": f"{name}.models:torch_to_keras"})
    write_package(root, name, variant="convert_misses_head")
    del sys.modules[f"{name}.models"]
    with pytest.raises(UserCodeError) as err:
        keras_initial_weights(broken, (1, 8, 8), 10, seed=1, runtime="tensorflow")
    np.testing.assert_array_equal(keras_state[0], torch_state["1.weight"].T)  # Dense kernel (in, out)
    np.testing.assert_array_equal(keras_state[-2], torch_state["5.weight"].T)
    assert "left Keras weight" in str(err.value) and "never set" in str(err.value)
    assert "dense_" in str(err.value) and "/kernel" in str(err.value)


# ---------------------------------------------------------------- one job, in this process
@needs_torch
def test_per_position_loss_and_accuracy_are_over_every_label(user_pkg):
    """torch-amp on a token tagger: the evaluation equals NumPy's cross-entropy and accuracy over
    every (row, position) of the test set, from the same module's logits."""
    import torch
    from precision_suite.backends import get_backend_class
    from precision_suite.models import initial_weights
    from precision_suite.plan import expand_jobs

    root, name = user_pkg
    config = load_config(
        _config(root, name, torch="build_torch_tagger", keras=None, convert=None, loader="load_tokens")
    )
    job = next(j for j in expand_jobs(config, "cpu") if j.backend == "torch-amp" and j.policy == "fp32")
    data = load_dataset(config.data)
    backend = get_backend_class("torch-amp")()
    backend.setup(job, initial_weights(job, data), data)
    result = backend.evaluate()
    with torch.no_grad():
        logits = backend.model(torch.from_numpy(data.x_test)).double().numpy()
    backend.teardown()
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    nll = -np.take_along_axis(logp, data.y_test[..., None], axis=-1)
    assert result.test_loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert result.test_accuracy == pytest.approx(float((logits.argmax(-1) == data.y_test).mean()))


@needs_torch
def test_every_policy_of_a_seed_starts_from_the_same_weights(user_pkg):
    """torch-amp fp32 and torch-manual bf16-mixed of one seed: the master weights torch-manual's
    optimizer starts from are exactly the fp32 module's."""
    import torch
    from precision_suite.backends import get_backend_class
    from precision_suite.models import initial_weights
    from precision_suite.plan import expand_jobs

    root, name = user_pkg
    config = load_config(_config(root, name, keras=None, convert=None))
    jobs = {(j.backend, j.policy, j.seed): j for j in expand_jobs(config, "cpu")}
    data = load_dataset(config.data)
    starts = {}
    for backend_name, policy in (("torch-amp", "fp32"), ("torch-manual", "bf16-mixed")):
        job = jobs[(backend_name, policy, 1)]
        backend = get_backend_class(backend_name)()
        backend.setup(job, initial_weights(job, data), data)
        params = backend.opt_params
        starts[backend_name] = [p.detach().float().numpy().copy() for p in params]
        if backend_name == "torch-manual":
            modules = backend.model.modules()
            norms = [
                type(m).__name__
                for m in modules
                if getattr(m, "weight", None) is not None and m.weight.dtype == torch.float32
            ]
        backend.teardown()
    assert len(starts["torch-amp"]) == len(starts["torch-manual"])
    for a, b in zip(starts["torch-amp"], starts["torch-manual"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(norms) == ["BatchNorm1d", "LayerNorm"]  # kept fp32 by type in the half working copy


# ---------------------------------------------------------------- the CLI
@needs_torch
@needs_tf
def test_the_issue_acceptance_run_then_check_without_the_users_code(user_dir, tmp_path):
    """The acceptance matrix of issue 25 through the CLI: every row ok, paired parity verdicts, a
    per-step cross-framework verdict (convert). Then `check` and `report` in a fresh process with
    the package gone: they read records only."""
    root, name = user_dir
    out = tmp_path / "run"
    assert run_cli(_config(root, name), out) == 0
    records = [r for r in read_run(out) if "/ulp+" not in r["job_id"]]
    rows = {(r["backend"], r["policy"]) for r in records if r["status"] == "ok"}
    assert rows == {
        ("torch-amp", "fp32"),
        ("torch-amp", "bf16-mixed"),
        ("torch-amp", "fp16-mixed"),
        ("torch-manual", "bf16-mixed"),
        ("tf-keras", "fp32"),
        ("tf-keras", "bf16-mixed"),
    }
    assert all(r["status"] == "ok" for r in records) and len(records) == 12
    memory = {r["metrics"]["memory_source"].split(":")[0] for r in records}
    assert memory == {"measured (cpu)"}
    torch_fp32 = next(r for r in records if r["backend"] == "torch-amp" and r["policy"] == "fp32")
    assert torch_fp32["metrics"]["memory_breakdown"]["activations"] > 0  # saved-tensor hooks saw them

    import shutil

    shutil.rmtree(root / name)
    check = start_cli(["check", str(out)])
    stdout, stderr = check.communicate(timeout=300)
    assert check.returncode == 0, stderr
    report = start_cli(["report", str(out)])
    assert report.wait(timeout=300) == 0
    from precision_suite.outputs.rundir import load_run

    (group,) = load_run(out).comparison.groups
    parity = {v.subject.split(" ", 1)[1]: v for row in group.rows for v in row.verdicts if v.name == "parity"}
    assert set(parity) == {
        "torch-amp fp16-mixed",
        "torch-amp bf16-mixed",
        "torch-manual bf16-mixed",
        "tf-keras bf16-mixed",
    }
    assert all(v.equivalence.method == "paired" and v.equivalence.paired.n == 2 for v in parity.values())
    (cross,) = group.verdicts
    assert cross.name == "cross-framework" and cross.outcome == "pass"
    assert "2 seed(s): per-step loss within" in cross.detail


@pytest.mark.slow
@needs_torch
@needs_tf
def test_without_convert_the_cross_framework_verdict_is_an_unpaired_test(user_dir, tmp_path):
    root, name = user_dir
    out = tmp_path / "run"
    backends = {"torch-amp": ["fp32"], "tf-keras": ["fp32"]}
    code = run_cli(_config(root, name, convert=None, backends=backends, extra="parity: {noise_floor_runs: false}"), out)
    from precision_suite.outputs.rundir import load_run

    (group,) = load_run(out).comparison.groups
    (cross,) = group.verdicts
    assert cross.detail.startswith(
        "unpaired test (no convert: the frameworks start from different initial weights) of test_accuracy: "
    )
    assert "(unpaired, n=2)" in cross.detail and "per-step" not in cross.detail
    assert cross.equivalence.paired is None
    # Two inits 8 steps in differ by whatever they differ: the verdict decides, the exit code follows it.
    assert code == (1 if cross.outcome == "fail" else 0)


@needs_torch
@pytest.mark.parametrize(
    ("variant", "kwargs", "expected"),
    [
        ("", {"torch": "nope"}, "module '{name}.models' has no attribute 'nope'"),
        ("torch_wrong_type", {}, "torch factory '{name}.models:build_torch' returned builtins.str; expected a torch"),
        ("wrong_classes", {}, "has shape (4, 11); expected (4, 10) (batch, num_classes=10) for labels of shape (N)"),
        ("", {"loader": "load_not_a_dict"}, "data: data.loader {name}.data:load_not_a_dict returned list"),
    ],
)
def test_bad_user_code_exits_2_with_one_line_naming_it(user_dir, tmp_path, capsys, variant, kwargs, expected):
    root, name = user_dir
    write_package(root, name, variant)
    backends = {"torch-amp": ["fp32"]}
    code = run_cli(_config(root, name, keras=None, convert=None, backends=backends, **kwargs), tmp_path / "run")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert expected.format(name=name) in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "results.jsonl").exists()  # nothing ran


@needs_torch
@needs_tf
def test_a_converter_that_leaves_a_weight_unset_exits_2_naming_it(user_dir, tmp_path, capsys):
    root, name = user_dir
    write_package(root, name, "convert_misses_head")
    backends = {"torch-amp": ["fp32"], "tf-keras": ["fp32"]}
    assert run_cli(_config(root, name, backends=backends), tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "models.0 (mine): convert" in err and "left Keras weight" in err and "never set" in err


@needs_torch
def test_a_factory_that_raises_inside_the_jobs_is_their_error_and_the_run_goes_on(user_dir, tmp_path, capsys):
    root, name = user_dir
    write_package(root, name, "torch_raises")
    backends = {"torch-amp": ["fp32", "bf16-mixed"]}
    code = run_cli(_config(root, name, keras=None, convert=None, backends=backends, steps=2), tmp_path / "run")
    assert code == 3  # jobs failed; every job still ran and was recorded
    records = read_run(tmp_path / "run")
    assert len(records) == 4 and {r["status"] for r in records} == {"error"}
    assert all(r["error"] == "RuntimeError: the factory broke on purpose" for r in records)


@needs_torch
@needs_jax
def test_a_torch_factory_that_raises_with_convert_is_the_jobs_error_not_a_crash(user_dir, tmp_path):
    """With ``convert`` the Keras check converts the torch initial weights: a torch factory that
    raises is a warning before the run and each job's error, never a traceback."""
    root, name = user_dir
    write_package(root, name, "torch_raises")
    backends = {"torch-amp": ["fp32"], "keras-jax": ["fp32"]}
    code = run_cli(_config(root, name, backends=backends, steps=2, seeds="[0]"), tmp_path / "run")
    assert code == 3
    records = read_run(tmp_path / "run")
    assert {r["backend"]: r["status"] for r in records} == {"torch-amp": "error", "keras-jax": "error"}
    assert all("the factory broke on purpose" in r["error"] for r in records)


@needs_torch
@needs_jax
def test_a_custom_model_on_keras_jax_and_in_torch_data_parallel_ranks(user_dir, tmp_path):
    """The user's package reaches every kind of worker: keras-jax's (its Keras factory under JAX,
    converted from the torch weights: a per-step cross-framework verdict) and the ranks of a
    torch data-parallel job (separate processes), whose verdicts hold."""
    root, name = user_dir
    out = tmp_path / "run"
    backends = {"torch-amp": ["fp32"], "keras-jax": ["fp32"]}
    extra = "distributed: {world_size: [1, 2]}\nparity: {noise_floor_runs: false}"
    assert run_cli(_config(root, name, backends=backends, seeds="[0]", extra=extra), out) == 0
    statuses = {r["job_id"].split("/", 2)[2]: r["status"] for r in read_run(out)}
    assert statuses == {
        "torch-amp/fp32/seed0": "ok",
        "torch-amp/fp32/seed0/ws2": "ok",
        "torch-amp/fp32/seed0/ws1-batch64-shards2": "ok",
        "keras-jax/fp32/seed0": "ok",
        "keras-jax/fp32/seed0/ws2": "unavailable",  # keras-jax has no data-parallel implementation
    }
    from precision_suite.outputs.rundir import load_run

    verdicts = {v.name: v for v in load_run(out).comparison.verdicts}
    assert verdicts["data-parallel"].outcome == "pass" and verdicts["replica-consistency"].outcome == "pass"
    cross = verdicts["cross-framework"]
    assert cross.outcome == "pass" and "per-step loss within" in cross.detail
