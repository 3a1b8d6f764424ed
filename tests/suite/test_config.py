"""Config validation: typed overrides, one-line errors naming file, key path, expected, got."""

from __future__ import annotations

import re

import pytest
from precision_suite.config import ConfigError, SlurmConfig, SuiteConfig, load_config


def _error(tmp_path, text: str, overrides: list[str] | None = None) -> str:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_packaged_default_validates_and_matches_configs_dir():
    from pathlib import Path

    from precision_suite.config import default_config_text

    repo_default = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    assert default_config_text() == repo_default.read_text()
    config = load_config(None)
    assert [m.kind for m in config.models] == ["mlp", "cnn", "transformer"]
    assert config.seeds == [0, 1, 2]


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train: {epochs: 2}\n")
    config = load_config(
        path,
        ["train.epochs=3", "train.optimizer.lr=1e-3", "seeds=[4, 5]", "backends.names=[torch-amp]"],
    )
    assert config.train.epochs == 3
    assert config.train.optimizer.lr == pytest.approx(1e-3)
    assert config.seeds == [4, 5]
    assert config.backends.names == ["torch-amp"]


def test_wrong_type_names_key_expected_and_got(tmp_path):
    message = _error(tmp_path, "train: {epochs: 2}\n", ["train.epochs=ten"])
    assert "train.epochs" in message and "integer" in message and '"ten"' in message


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    message = _error(tmp_path, "train:\n  epochz: 3\n")
    assert message.startswith(f"{tmp_path / 'x.yaml'}: train.epochz: unknown key")


def test_a_slurm_key_spelled_the_sbatch_way_names_the_key_meant(tmp_path):
    message = _error(tmp_path, "runner:\n  slurm:\n    time_min: 30\n")
    assert message.endswith('runner.slurm.time_min: unknown key "time_min" in runner.slurm (the key is "timeout_min")')
    assert SlurmConfig(timeout_min=30).timeout_min == 30  # the key named exists


def test_impossible_value_is_rejected(tmp_path):
    message = _error(tmp_path, "loss_scale: {growth_factor: 1.0}\n")
    assert "loss_scale.growth_factor" in message and "> 1" in message


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_numbers_are_rejected(tmp_path, value):
    message = _error(tmp_path, f"train:\n  optimizer: {{lr: {value}}}\n")
    assert "train.optimizer.lr: expected a finite number" in message


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    message = _error(tmp_path, "seeds: [0]\nseeds: [1]\n")
    assert "duplicate key 'seeds'" in message and "line 2" in message


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  optimizer: {lr: 1e-3}\n")
    assert load_config(path).train.optimizer.lr == pytest.approx(1e-3)


def test_yaml_syntax_error_names_line(tmp_path):
    message = _error(tmp_path, "train: {epochs: 2\nseeds: [0]\n")
    assert "invalid YAML" in message and "line" in message


def test_model_shorthand_and_unknown_kind(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("models: [mlp, cnn]\n")
    assert [m.kind for m in load_config(path).models] == ["mlp", "cnn"]
    message = _error(tmp_path, "models: [mlpp]\n")
    assert "models.0" in message and "mlp" in message


def test_epochs_and_steps():
    assert SuiteConfig.model_validate({"train": {"steps": 5}}).train.epochs is None
    with pytest.raises(ValueError):
        SuiteConfig.model_validate({"train": {"epochs": None}})


def test_renamed_timing_warmup_key_still_reads_with_a_notice(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("train: {steps: 4, warmup_steps: 2}\n")
    config = load_config(path)
    assert config.train.timing_warmup_steps == 2
    assert config.train.lr_schedule.warmup_steps == 0, "the lr warm-up is another knob"
    assert config.notices == [
        f"{path}: train.warmup_steps is deprecated and will be removed; use train.timing_warmup_steps"
    ]
    assert load_config(None).notices == []
    with pytest.raises(ConfigError, match="give only train.timing_warmup_steps"):
        load_config(path, ["train.timing_warmup_steps=3"])


def test_relative_data_path_is_next_to_the_config_file_but_set_is_cwd_relative(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "x.yaml"
    path.write_text("data: {name: npz, path: data/user.npz}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(path).data.path == str(folder / "data" / "user.npz")
    # The same relative path typed with --set means the current directory, as any shell path.
    assert load_config(path, ["data.path=mine.npz"]).data.path == str(elsewhere / "mine.npz")
    # Absolute and ~ paths are left alone; a relative config path is resolved all the same.
    assert load_config(path, ["data.path=/abs/user.npz"]).data.path == "/abs/user.npz"
    assert load_config(path, ["data.path=~/user.npz"]).data.path == "~/user.npz"
    monkeypatch.chdir(tmp_path)
    assert load_config("project/x.yaml").data.path == str(folder / "data" / "user.npz")


def test_parity_tolerance_has_one_default_and_the_readme_states_it():
    from pathlib import Path

    from precision_suite.config import ParityConfig

    default = ParityConfig().tolerance_pts
    assert load_config(None).parity.tolerance_pts == default  # the packaged config does not override it
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    stated = {float(x) for x in re.findall(r"tolerance ±([0-9.]+) pt", readme)}
    assert stated == {default}
    assert f"| `parity.tolerance_pts` | number ≥ 0 | `{default}` |" in readme


POLICY_MODELS = """
models: [mlp, cnn]
backends:
  names: [torch-amp, torch-manual]
  policies: {torch-amp: [fp32, fp16-mixed, bf16-mixed], torch-manual: [fp16-mixed, bf16-pure]}
  policy_models: {fp16-mixed: [cnn]}
seeds: [0, 1]
parity: {noise_floor_runs: false}
"""


def test_policy_models_runs_a_policy_on_the_named_models_only(tmp_path):
    from precision_suite.plan import check_backends, expand_jobs

    path = tmp_path / "x.yaml"
    path.write_text(POLICY_MODELS)
    config = load_config(path)
    check_backends(config, str(path))
    rows = {(job.model.name, job.backend, job.policy) for job in expand_jobs(config, "cpu")}
    assert rows == {
        ("mlp", "torch-amp", "fp32"),
        ("mlp", "torch-amp", "bf16-mixed"),
        ("mlp", "torch-manual", "bf16-pure"),
        ("cnn", "torch-amp", "fp32"),
        ("cnn", "torch-amp", "fp16-mixed"),
        ("cnn", "torch-amp", "bf16-mixed"),
        ("cnn", "torch-manual", "fp16-mixed"),
        ("cnn", "torch-manual", "bf16-pure"),
    }
    assert len(expand_jobs(config, "cpu")) == len(rows) * 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{fp32: [mlp]}", "backends.policy_models.fp32: fp32 is the baseline of every model and runs on each of them"),
        (
            "{fp16-pure: [mlp]}",
            "backends.policy_models.fp16-pure: not a policy of this run; "
            "it has: bf16-mixed, bf16-pure, fp16-mixed, fp32",
        ),
        ("{fp16-mixed: []}", "backends.policy_models.fp16-mixed: expected at least one model name"),
        ("{fp16-mixed: [vit]}", 'backends.policy_models.fp16-mixed.0: no model named "vit"; the models are: mlp, cnn'),
    ],
)
def test_policy_models_names_policies_and_models_of_the_run(tmp_path, value, expected):
    from precision_suite.plan import check_backends

    path = tmp_path / "x.yaml"
    path.write_text(POLICY_MODELS)
    config = load_config(path, [f"backends.policy_models={value}"])
    with pytest.raises(ConfigError) as info:
        check_backends(config, "x.yaml")
    assert str(info.value) == f"x.yaml: {expected}"


def test_the_default_run_shows_loss_scaling_on_every_backend_that_scales():
    """fp16-mixed (dynamic loss scaling) on at least one model for every backend of the default
    that implements it, by the backends' own declarations."""
    from precision_suite.backends import get_backend_class
    from precision_suite.plan import check_backends, expand_jobs

    config = load_config(None)
    check_backends(config, "default.yaml")
    jobs = expand_jobs(config, "cpu")
    scaling = {job.backend for job in jobs if job.policy == "fp16-mixed" and job.loss_scaling_mode == "dynamic"}
    with_fp16 = {name for name in config.backends.names if "fp16-mixed" in get_backend_class(name).policies}
    assert with_fp16 == {"torch-amp", "torch-manual", "tf-keras", "keras-jax"}
    assert scaling == with_fp16


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"kind": "mlp", "hidden": [8, 8], "keep_fp32": ["dense2"]},
            'models.0.keep_fp32.0: "dense2" is not a block of the mlp model mlp; it has: dense0, dense1, head',
        ),
        (
            {"kind": "transformer", "depth": 1, "keep_fp32": ["block0", "block1"]},
            'models.0.keep_fp32.1: "block1" is not a block of the transformer model transformer; it has: embed, '
            "block0.ln1, block0.attn, block0.ln2, block0.mlp1, block0.mlp2, ln_f, head, block0",
        ),
    ],
)
def test_keep_fp32_names_blocks_of_the_built_in_model(model, message):
    from precision_suite.plan import check_backends

    config = SuiteConfig.model_validate({"models": [model], "backends": {"names": ["torch-amp"]}})
    with pytest.raises(ConfigError) as info:
        check_backends(config, "x.yaml")
    assert str(info.value) == f"x.yaml: {message}"
    ok = SuiteConfig.model_validate({"models": [{**model, "keep_fp32": ["head"]}]})
    check_backends(ok, "x.yaml")


def test_keep_fp32_rejects_duplicates_and_is_left_out_of_the_resolved_config_when_empty():
    with pytest.raises(ValueError, match="duplicate names"):
        SuiteConfig.model_validate({"models": [{"kind": "mlp", "keep_fp32": ["head", "head"]}]})
    assert "keep_fp32" not in SuiteConfig().model_dump(mode="json")["models"][0]
    kept = SuiteConfig.model_validate({"models": [{"kind": "mlp", "keep_fp32": ["head"]}]})
    assert kept.model_dump(mode="json")["models"][0]["keep_fp32"] == ["head"]
    assert kept.config_hash() != SuiteConfig().config_hash()
