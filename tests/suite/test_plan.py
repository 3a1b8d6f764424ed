"""Planning the timed speed phases: one per framework and model, over the first seed, timing each
policy once."""

from __future__ import annotations

from precision_suite.config import load_config
from precision_suite.plan import expand_jobs, speed_tasks


def test_speed_phase_with_seeds_on_demand_times_the_first_seed():
    """seeds: {min, max} (seeds on demand) is not a list: the speed phase still finds its seed."""
    config = load_config(None, ["seeds={min: 3, max: 6}", "models=[mlp]", "device=cpu"])
    tasks = speed_tasks(config, expand_jobs(config, "cpu"))
    assert tasks, "one speed phase per framework"
    assert {job.seed for task in tasks for job in task.jobs} == {0}


def test_speed_phase_times_each_policy_once_without_data_parallel_or_noise_floor_jobs():
    config = load_config(
        None,
        [
            "models=[mlp]",
            "device=cpu",
            "distributed={world_size: [1, 2]}",
            "backends.names=[torch-amp, tf-keras]",
            "backends.policies={torch-amp: [fp32, bf16-mixed], tf-keras: [fp32, bf16-mixed]}",
        ],
    )
    jobs = expand_jobs(config, "cpu")
    assert any(job.world_size == 2 for job in jobs) and any(job.perturb_ulp for job in jobs)
    for task in speed_tasks(config, jobs):
        assert [job.policy for job in task.jobs] == ["fp32", "bf16-mixed"], task.job_id
        assert all(job.world_size == 1 and not job.role and not job.perturb_ulp for job in task.jobs)
