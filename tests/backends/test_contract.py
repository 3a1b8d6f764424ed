"""The same behavioural checks over every registered backend (built-ins and entry points).

A backend whose framework is missing is skipped with its reason.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from precision_suite.backends import backend_names, get_backend_class
from precision_suite.backends.base import POLICY_SPECS, Backend
from precision_suite.config import SuiteConfig
from precision_suite.data import batch_plan, load_dataset
from precision_suite.jobs import expand_jobs
from precision_suite.models import init_weights

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
    assert cls.policies and set(cls.policies) <= set(POLICY_SPECS)
    assert isinstance(cls.framework, str) and cls.framework
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
    spec = POLICY_SPECS[policy]
    assert observed["compute_dtype"] == spec.compute_dtype
    assert observed["loss_scaling"] in ("dynamic", "static", "none")
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

    from tests.conftest import _cuda_available

    cls = get_backend_class(name)
    available = cls.is_available()
    if not available.ok:
        pytest.skip(f"{name}: {available.reason}")
    assert cls.resolve_device("cpu") == "cpu"
    if name.startswith("torch"):
        assert cls.resolve_device("auto") == ("cuda" if _cuda_available() else "cpu")
    if cls.resolve_device("auto") == "cpu":
        with pytest.raises(DeviceUnavailable):
            cls.resolve_device("cuda")
    else:
        assert cls.resolve_device("cuda") == "cuda"
