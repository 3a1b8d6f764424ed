"""Job crosses process boundaries as JSON (``to_dict`` / ``from_dict``), derived from its fields."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from precision_suite.config import LossScaleConfig, SuiteConfig, TransformerConfig
from precision_suite.jobs import Job
from precision_suite.plan import expand_jobs


def _job() -> Job:
    config = SuiteConfig.model_validate(
        {
            "models": [{"kind": "transformer", "patch_size": 4, "d_model": 8, "num_heads": 2, "depth": 1}],
            "data": {"name": "digits"},
            "train": {"steps": 4, "batch_size": 16},
            "backends": {"names": ["torch-amp"], "policies": {"torch-amp": ["fp16-mixed"]}},
            "seeds": {"min": 3, "max": 10},
            "device": "cpu",
        }
    )
    return expand_jobs(config, "cpu")[0]


def _through_json(job: Job) -> dict:
    return json.loads(json.dumps(job.to_dict()))


def test_every_field_goes_through_json_and_comes_back_equal():
    job = dataclasses.replace(_job(), perturb_ulp=1, stop_after_steps=3, world_size=2, role="dp-reference")
    raw = _through_json(job)
    # Each field under its own name, but the runtime under the name records have always given it.
    assert list(raw)[:5] == ["job_id", "backend", "framework", "family", "policy"]
    assert set(raw) == {f.name for f in dataclasses.fields(Job)} - {"runtime"} | {"framework"}
    assert raw["seed_looks"] == [3, 6, 10] and raw["model"]["kind"] == "transformer"
    back = Job.from_dict(raw)
    assert back == job
    assert isinstance(back.model, TransformerConfig) and back.seed_looks == (3, 6, 10)


def test_a_record_written_before_a_field_existed_reads_with_its_default():
    raw = _through_json(_job())
    for name in ("world_size", "role", "distributed", "seed_looks", "timed", "config_hash", "family"):
        del raw[name]
    job = Job.from_dict(raw)
    assert (job.world_size, job.role, job.seed_looks, job.timed, job.config_hash) == (1, "", (), True, "")
    assert (job.runtime, job.family) == ("torch", "torch")  # the family of a record that names only the runtime
    assert job.distributed == Job.__dataclass_fields__["distributed"].default_factory()  # type: ignore[misc]


@dataclass
class _JobWithMore(Job):
    """A job with fields added the way a new feature adds them, to_dict / from_dict untouched."""

    keep_fp32: tuple[str, ...] = ()
    second_scaler: LossScaleConfig = field(default_factory=LossScaleConfig)
    note: str | None = None


def test_a_new_field_round_trips_without_touching_to_dict():
    base = _job()
    job = _JobWithMore(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(Job)},
        keep_fp32=("head", "norm"),
        second_scaler=LossScaleConfig(init_scale=8.0),
        note="bisect",
    )
    raw = _through_json(job)
    assert raw["keep_fp32"] == ["head", "norm"] and raw["second_scaler"]["init_scale"] == 8.0
    assert raw["note"] == "bisect"
    assert _JobWithMore.from_dict(raw) == job
