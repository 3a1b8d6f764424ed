"""Planning: the job matrix (backend × policy × model × dataset × seed) of a config, the check of
its ``backends`` section against the registry before anything runs, and the timed speed phases
(one per framework and model) that follow the training jobs."""

from __future__ import annotations

import json
from dataclasses import replace

from precision_suite.backends import RegistryError, get_backend_class
from precision_suite.backends.base import Backend, implementation_label
from precision_suite.backends.policy import find_policy
from precision_suite.config import ConfigError, SuiteConfig, format_error
from precision_suite.jobs import BASELINE_POLICY, DP_REFERENCE, Job, job_id
from precision_suite.measure.speed_phase import SpeedTask
from precision_suite.models import BUILT_IN_KINDS, keep_fp32_names
from pydantic import ValidationError


def expand_jobs(config: SuiteConfig, device: str, seeds: list[int] | None = None) -> list[Job]:
    """Every job of the config (of ``seeds``; default: those of the first look), in a stable
    order, then the noise-floor runs. Policies and options are assumed already checked against
    the registry (``check_backends``)."""
    config_hash = config.config_hash()
    timed = config.training_timed()
    jobs: list[Job] = []
    resolved = {}
    for name in config.backends.names:
        cls = get_backend_class(name)
        options = cls.Options.model_validate(config.backends.options.get(name, {}))
        resolved[name] = (cls, config.backends.policies.get(name, list(cls.policies)), options)
    only = config.backends.policy_models
    for model in config.models:
        for name in config.backends.names:
            cls, policies, options = resolved[name]
            if not runs_model(model, cls.family):
                continue
            for policy in (p for p in policies if model.name in only.get(p, [model.name])):
                train = config.train
                if (scale := config.debug.lr_scale.get(f"{name}/{policy}")) is not None:
                    optimizer = train.optimizer.model_copy(update={"lr": train.optimizer.lr * scale})
                    train = train.model_copy(update={"optimizer": optimizer})
                for seed in config.seeds_at_look(0) if seeds is None else seeds:
                    jobs.append(
                        Job(
                            job_id=job_id(model.name, config.data.name, name, policy, seed),
                            backend=name,
                            family=cls.family,
                            runtime=cls.runtime,
                            policy=policy,
                            model=model,
                            data=config.data,
                            seed=seed,
                            device=device,
                            train=train,
                            loss_scale=config.loss_scale,
                            options=options.model_dump(mode="json"),
                            runner=config.runner,
                            parity=config.parity,
                            config_hash=config_hash,
                            timed=timed,
                            seed_looks=config.seed_looks(),
                            distributed=config.distributed,
                        )
                    )
    # Noise-floor runs measure one process's own chaos: never data-parallel themselves.
    expanded = expand_world_sizes(jobs)
    return expanded + noise_floor_jobs(config, expanded)


def runs_model(model: object, family: str) -> bool:
    """Whether a backend of the API ``family`` runs ``model``: a custom model only where that
    family (torch, keras) has a factory."""
    families = getattr(model, "families", None)
    return families is None or family in families


def noise_floor_jobs(config: SuiteConfig, jobs: list[Job]) -> list[Job]:
    """The same job with every initial weight one ulp up, stopped after
    ``parity.cross_framework_steps`` steps: for each one-process fp32 job when two or more
    implementations (family on runtime) run fp32 — those the cross-framework verdict compares —
    and for each one-process reference of a data-parallel job (the data-parallel verdict)."""
    if not config.parity.noise_floor_runs:
        return []
    single = [job for job in jobs if job.policy == BASELINE_POLICY and job.world_size == 1 and not job.perturb_ulp]
    plain = [job for job in single if not job.role]
    implementations = {(job.family, job.runtime) for job in plain}
    fp32 = [job for job in single if job.role] + (plain if len(implementations) >= 2 else [])
    return [
        replace(
            job,
            job_id=f"{job.job_id}/ulp+1",
            perturb_ulp=1,
            stop_after_steps=config.parity.cross_framework_steps,
        )
        for job in fp32
    ]


def _check_policy_models(config: SuiteConfig, policies: set[str], source: str) -> None:
    """``backends.policy_models``: policies of this run other than the baseline, models of this run."""
    models = [model.name for model in config.models]
    for policy, names in config.backends.policy_models.items():
        where = f"{source}: backends.policy_models.{policy}"
        if policy == BASELINE_POLICY:
            raise ConfigError(f"{where}: {BASELINE_POLICY} is the baseline of every model and runs on each of them")
        if policy not in policies:
            raise ConfigError(f"{where}: not a policy of this run; it has: {', '.join(sorted(policies))}")
        if not names:
            raise ConfigError(f"{where}: expected at least one model name")
        for j, name in enumerate(names):
            if name not in models:
                # json.dumps: a name with a newline or a quote stays one line
                known = ", ".join(models)
                raise ConfigError(f"{where}.{j}: no model named {json.dumps(name)}; the models are: {known}")


def check_backends(config: SuiteConfig, source: str) -> None:
    """Check the ``backends`` section against the registry before anything runs: known names,
    implemented policies, valid options, settings each backend can express."""
    section = config.backends
    classes = {}
    for i, name in enumerate(section.names):
        try:
            classes[name] = get_backend_class(name)
        except RegistryError as exc:
            raise ConfigError(f"{source}: backends.names.{i}: {exc}") from None
    for key in ("policies", "options"):
        for name in getattr(section, key):
            if name not in classes:
                raise ConfigError(
                    f"{source}: backends.{key}.{name}: backend not in backends.names ({', '.join(section.names)})"
                )
    for name, policies in section.policies.items():
        cls = classes[name]
        if not policies:
            raise ConfigError(f"{source}: backends.policies.{name}: expected at least one policy")
        for j, policy in enumerate(policies):
            if policy not in cls.policies:
                what = "is not implemented by" if find_policy(policy) is not None else "is not a policy of"
                raise ConfigError(
                    f'{source}: backends.policies.{name}.{j}: policy "{policy}" {what} {name}; '
                    f"it has: {', '.join(cls.policies)}"
                )
    for name, options in section.options.items():
        try:
            classes[name].Options.model_validate(options)
        except ValidationError as exc:
            error = exc.errors()[0]
            error["loc"] = ("backends", "options", name, *error["loc"])
            raise ConfigError(format_error(error, source)) from None
    rows = {
        f"{name}/{policy}" for name in section.names for policy in section.policies.get(name, classes[name].policies)
    }
    for key in config.debug.lr_scale:
        if key not in rows:
            raise ConfigError(
                f"{source}: debug.lr_scale.{key}: not a backend/policy of this run; it has: {', '.join(sorted(rows))}"
            )
    _check_policy_models(config, {row.split("/", 1)[1] for row in rows}, source)
    _check_keep_fp32(config, source)
    for job in expand_jobs(config, config.device):
        problem = classes[job.backend].config_problem(job) or data_parallel_problem(job)
        if problem:
            raise ConfigError(f"{source}: {job.backend} ({job.policy}): {problem}")


def _check_keep_fp32(config: SuiteConfig, source: str) -> None:
    """A built-in model's ``keep_fp32`` names its blocks (the same in every framework); a user's
    model is checked by the backend that builds it."""
    for i, model in enumerate(config.models):
        if not model.keep_fp32 or model.kind not in BUILT_IN_KINDS:
            continue
        known = keep_fp32_names(model)
        for j, name in enumerate(model.keep_fp32):
            if name not in known:
                raise ConfigError(
                    f'{source}: models.{i}.keep_fp32.{j}: "{name}" is not a block of the {model.kind} model '
                    f"{model.name}; it has: {', '.join(known)}"
                )


# ---------------------------------------------------------------- data-parallel jobs
def data_parallel_class(job: Job) -> type[Backend] | None:
    """The class that runs ``job`` over its replicas, as its backend says
    (``Backend.data_parallel_class``), or None when the backend has no data-parallel variant."""
    return get_backend_class(job.backend).data_parallel_class(job)


def expand_world_sizes(jobs: list[Job]) -> list[Job]:
    """Each job once per world size (id suffix ``/wsN`` for N > 1; N = 1 keeps the plain id), and
    for each fp32 job at N > 1 of a backend that runs data-parallel the one-process reference the
    ``data-parallel`` verdict compares it with (``replica_shards_reference``)."""
    out: list[Job] = []
    references: list[Job] = []
    for job in jobs:
        for size in job.distributed.world_sizes:
            if size == 1:
                out.append(job)
                continue
            out.append(replace(job, world_size=size, job_id=f"{job.job_id}/ws{size}"))
            # A backend with no data-parallel variant records its N-replica jobs unavailable:
            # nothing to compare, so no reference to run.
            if job.policy == BASELINE_POLICY and data_parallel_class(job) is not None:
                references.append(replica_shards_reference(job, size))
    return out + references


def replica_shards_reference(job: Job, size: int) -> Job:
    """The one-process run that ``job`` over ``size`` replicas is supposed to equal (id suffix
    ``/ws1-batchG-shardsN``): the batch plan at the global batch G, each step's rows trained as
    the replicas' contiguous slices in turn (``grad_accumulation`` × N micro-batches, so a
    replica's own micro-batches stay its own), the gradients summed. Each slice's forward pass is
    a replica's: BatchNorm normalises it with its own statistics, as the replicas do. Its running
    statistics see every slice, replica 0's only its own: the reference's test metrics are not the
    replicas', which the verdict does not compare (a training loss uses the batch's own
    statistics)."""
    global_batch = size * job.train.batch_size
    train = job.train.model_copy(
        update={"batch_size": global_batch, "grad_accumulation": size * job.train.grad_accumulation}
    )
    return replace(job, role=DP_REFERENCE, job_id=f"{job.job_id}/ws1-batch{global_batch}-shards{size}", train=train)


def data_parallel_unavailable_reason(job: Job) -> str | None:
    if job.world_size > 1 and data_parallel_class(job) is None:
        return f"backend {job.backend} has no data-parallel implementation (Backend.data_parallel_class)"
    return None


def data_parallel_problem(job: Job) -> str | None:
    """Why the data-parallel variant of the job's backend cannot run it as configured (checked
    with the config, before anything runs; never imports a framework). A backend with no
    data-parallel variant is not a config error: its N-replica jobs are recorded unavailable."""
    cls = data_parallel_class(job) if job.world_size > 1 else None
    if cls is None:
        return None
    problem = cls.config_problem(job)
    return f"over {job.world_size} replicas: {problem}" if problem else None


# ---------------------------------------------------------------- speed phases
def speed_task_id(model: str, dataset: str, family: str, runtime: str) -> str:
    return f"speed/{model}/{dataset}/{implementation_label(family, runtime).replace(' ', '-')}"


def speed_tasks(config: SuiteConfig, jobs: list[Job]) -> list[SpeedTask]:
    """One task per (model, API family, runtime) with an fp32 baseline and at least one other
    policy: the first seed's jobs, timed in the runtime's worker against the family's fp32 on that
    runtime — the first backend (in ``backends.names`` order) of the family that runs fp32 there,
    so a backend that has fp32 is timed against its own."""
    settings = config.speed
    seed = config.seeds_at_look(0)[0]
    groups: dict[tuple[str, str, str], list[Job]] = {}
    for job in jobs:
        # One process per policy: data-parallel jobs, their one-process references and the
        # one-ulp noise-floor runs are no policies of their own to time.
        single = job.world_size == 1 and not job.role and not job.perturb_ulp
        if job.seed == seed and single:
            groups.setdefault((job.model.name, job.family, job.runtime), []).append(job)
    tasks = []
    for (model, family, runtime), members in groups.items():
        baseline = next((j for j in members if j.policy == BASELINE_POLICY), None)
        if baseline is None or len(members) < 2:
            continue
        ordered = [baseline, *(j for j in members if j is not baseline)]
        task_id = speed_task_id(model, baseline.data.name, family, runtime)
        tasks.append(SpeedTask(task_id, runtime, ordered, settings.rounds, settings.window_ms, settings.batch_probe))
    return tasks
