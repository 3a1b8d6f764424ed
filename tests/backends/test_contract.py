"""The same behavioural checks over every registered backend (built-ins and entry points).

A backend whose framework is missing is skipped with its reason.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from precision_suite.backends import backend_names, get_backend_class
from precision_suite.backends.base import Backend
from precision_suite.backends.policy import POLICIES, get_policy
from precision_suite.config import MlpConfig, SuiteConfig
from precision_suite.data import batch_plan, load_dataset
from precision_suite.models import init_weights
from precision_suite.plan import expand_jobs

from tests.helpers.backends import POISON, assert_states_equal, make_backend, make_job, tiny_data
from tests.helpers.marks import TOLERANCES

STEPS = 4
_DATA = {}


def _digits():
    if "digits" not in _DATA:
        config = SuiteConfig()
        _DATA["digits"] = load_dataset(config.data)
    return _DATA["digits"]


def _cpu_policies(cls: type[Backend]) -> list[str]:
    return [p for p in cls.policies if cls.unsupported_reason(p, "cpu") is None]


def _cases():
    for name in backend_names():
        cls = get_backend_class(name)
        for policy in _cpu_policies(cls):
            yield pytest.param((name, policy), id=f"{name}-{policy}")


def _job(name: str, policy: str):
    config = SuiteConfig.model_validate(
        {
            "models": [{"kind": "mlp", "hidden": [16]}],
            "train": {"steps": STEPS, "batch_size": 32},
            "backends": {"names": [name], "policies": {name: [policy]}},
            "seeds": [0],
            "device": "cpu",
        }
    )
    (job,) = expand_jobs(config, "cpu")
    return job


@pytest.fixture
def started(request):
    name, policy = request.param
    cls = get_backend_class(name)
    available = cls.is_available()
    if not available.ok:
        pytest.skip(f"{name}: {available.reason}")
    data = _digits()
    job = _job(name, policy)
    backend = cls()
    backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, 0), data)
    plan = batch_plan(len(data.y_train), 32, 0, None, STEPS)
    yield backend, job, plan, policy
    backend.teardown()


@pytest.mark.parametrize("name", backend_names())
def test_class_attributes_and_availability_without_importing_the_framework(name):
    cls = get_backend_class(name)
    assert cls.name == name
    assert cls.policies and set(cls.policies) <= set(POLICIES)
    assert isinstance(cls.family, str) and cls.family
    assert isinstance(cls.runtime, str) and cls.runtime
    with pytest.raises(Exception, match="extra"):
        cls.Options.model_validate({"no_such_option": 1})
    # Listing backends must not import any framework (fast, and no import-order conflicts).
    code = (
        "import sys; from precision_suite.backends import get_backend_class; "
        f"get_backend_class({name!r}).is_available(); "
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("started", list(_cases()), indirect=True)
def test_train_steps_telemetry_evaluate_and_observed_precision(started):
    backend, job, plan, policy = started
    before = backend.evaluate()
    assert before == backend.evaluate(), "evaluate must not change training state"
    for _, rows in plan:
        backend.train_step(rows)
    backend.synchronize()
    tel = backend.drain_telemetry()
    assert len(tel.loss) == len(tel.loss_scale) == len(tel.skipped) == STEPS
    assert np.all(np.isfinite(tel.loss))
    assert np.all(tel.loss_scale > 0)
    assert len(backend.drain_telemetry().loss) == 0, "a drain returns each step once"
    after = backend.evaluate()
    assert 0.0 <= after.test_accuracy <= 1.0 and np.isfinite(after.test_loss)
    assert after.test_loss != before.test_loss, "training steps must change the model"

    observed = backend.observed_precision()
    spec = get_policy(policy)
    assert observed["compute_dtype"] == spec.compute_dtype
    # DESIGN.md's policy table: fp16 scales the loss (dynamic by default); nothing else does.
    assert observed["loss_scaling"] == ("dynamic" if policy in ("fp16-mixed", "fp16-pure") else "none")
    memory = backend.memory_stats()
    assert memory.memory_source, "memory numbers must say where they come from"


@pytest.mark.parametrize("started", list(_cases()), indirect=True)
def test_state_dict_round_trip_continues_identically(started):
    backend, job, plan, policy = started
    try:
        state = backend.state_dict()
    except NotImplementedError:
        pytest.skip(f"{job.backend} does not support checkpoints")
    backend.train_step(plan[0][1])
    first = backend.drain_telemetry().loss
    backend.load_state_dict(state)
    backend.train_step(plan[0][1])
    again = backend.drain_telemetry().loss
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("name", backend_names())
def test_device_resolution(name):
    """ "auto" is CUDA exactly when the framework sees a GPU; "cuda" without one is unavailable
    (a recorded status), never a silent CPU run."""
    from precision_suite.backends.base import DeviceUnavailable

    from tests.helpers.marks import cuda_available

    cls = get_backend_class(name)
    available = cls.is_available()
    if not available.ok:
        pytest.skip(f"{name}: {available.reason}")
    assert cls.resolve_device("cpu") == "cpu"
    if name.startswith("torch"):
        assert cls.resolve_device("auto") == ("cuda" if cuda_available() else "cpu")
    if cls.resolve_device("auto") == "cpu":
        with pytest.raises(DeviceUnavailable):
            cls.resolve_device("cuda")
    else:
        assert cls.resolve_device("cuda") == "cuda"


def _available_class(name: str) -> type[Backend]:
    cls = get_backend_class(name)
    available = cls.is_available()
    if not available.ok:
        pytest.skip(f"{name}: {available.reason}")
    return cls


def _rows(job, data, poisoned_steps: frozenset[int] = frozenset()) -> list[np.ndarray]:
    """The job's batch plan; the poisoned row (fp16 overflow) only on ``poisoned_steps``."""
    out = []
    for i, (_, rows) in enumerate(batch_plan(len(data.y_train), job.train.batch_size, 0, None, job.train.steps)):
        rows = np.where(rows == POISON, 1, rows)
        if i in poisoned_steps:
            rows[0] = POISON
        out.append(rows)
    return out


@pytest.mark.parametrize("name", backend_names())
def test_grad_accumulation_matches_full_batch_and_steps_the_scaler_once(name):
    """``grad_accumulation: 4`` is one optimizer step on the same rows as the full batch (equal
    within the compute dtype's tolerance), and a loss scaler steps once per optimizer step."""
    cls = _available_class(name)
    policy = "fp32" if "fp32" in _cpu_policies(cls) else _cpu_policies(cls)[0]
    data = tiny_data()
    losses = []
    for accumulation in (1, 4):
        job = make_job(
            name,
            policy,
            model=MlpConfig(hidden=[16]),
            train={"steps": 3, "grad_accumulation": accumulation, "optimizer": {"name": "sgd", "lr": 0.5}},
        )
        backend = make_backend(job, data)
        for rows in _rows(job, data):
            backend.train_step(rows)
        losses.append(backend.drain_telemetry().loss)
        backend.teardown()
    np.testing.assert_allclose(losses[1], losses[0], **TOLERANCES[get_policy(policy).compute_dtype])

    if "fp16-mixed" not in _cpu_policies(cls):
        return
    job = make_job(
        name, "fp16-mixed", train={"grad_accumulation": 4}, loss_scale={"init_scale": 8.0, "growth_interval": 2}
    )
    backend = make_backend(job, data)
    if backend.observed_precision()["loss_scaling"] == "none":
        pytest.skip(f"{name} does not scale the loss")
    for rows in _rows(job, data)[:4]:
        backend.train_step(rows)
    assert backend.drain_telemetry().loss_scale.tolist() == [8.0, 8.0, 16.0, 16.0]
    backend.teardown()


@pytest.mark.parametrize("name", backend_names())
def test_overflow_step_is_skipped_and_leaves_the_state_untouched(name):
    """An fp16 overflow (a row of 1e6 in the batch) skips the step: weights, optimizer state
    and lr schedule unchanged, the scale backed off, the next step applied."""
    cls = _available_class(name)
    if "fp16-mixed" not in _cpu_policies(cls):
        pytest.skip(f"{name} has no fp16-mixed policy")
    data = tiny_data(poison=True)
    job = make_job(name, "fp16-mixed", train={"steps": 3}, loss_scale={"init_scale": 1024.0})
    backend = make_backend(job, data)
    if backend.observed_precision()["loss_scaling"] == "none":
        pytest.skip(f"{name} does not scale the loss")
    rows = _rows(job, data, frozenset({1}))
    backend.train_step(rows[0])
    try:
        before = backend.state_dict()
    except NotImplementedError:
        before = None
    backend.train_step(rows[1])
    if before is not None:
        after = backend.state_dict()
        # The weights (each backend's own key); optimizer state and schedule are checked per
        # backend, where the layout of the state is known.
        weights = [key for key in ("model", "weights", "master") if key in before]
        assert weights, f"{name}: no weights in state_dict keys {sorted(before)}"
        for key in weights:
            assert_states_equal(before[key], after[key], key)
    backend.train_step(rows[2])
    telemetry = backend.drain_telemetry()
    assert telemetry.skipped.tolist() == [False, True, False]
    assert telemetry.loss_scale.tolist() == [1024.0, 1024.0, 512.0]
    backend.teardown()


def _half_cases():
    for name in backend_names():
        cls = get_backend_class(name)
        for policy in _cpu_policies(cls):
            if get_policy(policy).compute_dtype != "float32":
                yield pytest.param((name, policy), id=f"{name}-{policy}")


def _keep_backend(name: str, policy: str, keep: list[str], model: dict | None = None):
    cls = get_backend_class(name)
    available = cls.is_available()
    if not available.ok:
        pytest.skip(f"{name}: {available.reason}")
    config = SuiteConfig.model_validate(
        {
            "models": [{"kind": "mlp", "hidden": [16, 16], "keep_fp32": keep, **(model or {})}],
            "train": {"steps": STEPS, "batch_size": 32},
            "backends": {"names": [name], "policies": {name: [policy]}},
            "seeds": [0],
            "device": "cpu",
        }
    )
    (job,) = expand_jobs(config, "cpu")
    data = _digits()
    backend = cls()
    backend.setup(job, init_weights(job.model, data.input_shape, data.num_classes, 0), data)
    return backend, data


@pytest.mark.parametrize("case", list(_half_cases()))
def test_keep_fp32_runs_the_named_blocks_in_fp32_and_the_rest_under_the_policy(case):
    """The observed dtypes come from the layers' real outputs on real rows: a kept block computed
    in half, or the rest of the model silently in fp32, would show."""
    name, policy = case
    backend, data = _keep_backend(name, policy, ["dense1", "head"])
    try:
        for _, rows in batch_plan(len(data.y_train), 32, 0, None, STEPS):
            backend.train_step(rows)
        assert np.all(np.isfinite(backend.drain_telemetry().loss))
        observed = backend.observed_precision()
    finally:
        backend.teardown()
    fp32 = {"compute_dtype": "float32", "param_dtype": "float32"}
    assert observed["keep_fp32"] == {"dense1": fp32, "head": fp32}
    spec = get_policy(policy)
    assert observed["compute_dtype"] == spec.compute_dtype  # dense0, not kept
    updated = observed["master_dtype"] or observed["param_dtype"]
    assert updated == spec.master_dtype


@pytest.mark.parametrize("case", list(_half_cases()))
def test_keep_fp32_of_an_unknown_block_is_an_error_naming_the_blocks(case):
    name, policy = case
    with pytest.raises(ValueError, match=r'keep_fp32: "dense7" is not a .*dense0, dense1, head'):
        _keep_backend(name, policy, ["dense7"])
