"""``precision-suite export DIR --to tensorboard|mlflow|wandb``: put a finished run beside the
user's own runs in the tracker they use, post hoc from ``results.jsonl``, in this process (no
ML framework imported; only the tracker's client library, each an optional extra).

One tracker run per job: loss, loss scale, skipped steps (cumulative), learning rate,
test-accuracy curve and step time as scalars against the optimizer step; backend, policy,
model, seed, device and versions as hyper-parameters; final metrics as summary values.
Nothing here goes to the network: MLflow writes a local file store, W&B runs offline.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from precision_suite.outputs.rundir import RunDirError, load_run, versions

Scalars = dict[str, list[tuple[int, float]]]

FINAL_METRICS = ("test_accuracy", "test_loss", "train_loss", "peak_memory_bytes", "samples_per_s", "step_time_ms_p50")

# target -> (module to import, extra that installs it, default folder inside the run directory)
TARGETS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("tensorboardX", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow", "mlruns"),
    "wandb": ("wandb", "wandb", ""),  # W&B makes its own wandb/ folder inside ``dir``
}

# Set before the tracker is imported: local files only, no telemetry, no login prompt.
OFFLINE_ENV: dict[str, dict[str, str]] = {
    "tensorboard": {},
    "mlflow": {"MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
    "wandb": {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_ERROR_REPORTING": "false",
    },
}


class ExportError(RunDirError):
    """The tracker's library is missing, or the target is unknown: one line, exit 2."""


@dataclass
class JobSeries:
    """What one job contributes to a tracker."""

    job_id: str
    hparams: dict[str, str | int | float | bool]
    scalars: Scalars = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)

    def by_step(self) -> list[tuple[int, dict[str, float]]]:
        """Every scalar at each step, steps ascending (W&B logs one step at a time)."""
        steps: dict[int, dict[str, float]] = {}
        for name, points in self.scalars.items():
            for step, value in points:
                steps.setdefault(step, {})[name] = value
        return sorted(steps.items())


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lr_curve(record: dict[str, Any]) -> list[float] | None:
    """The learning rate at each step: the record's own curve if it has one, else the
    reference schedule (``backends.reference.lr_schedule``) of the job's config, indexed by
    applied optimizer steps (a skipped step does not advance it)."""
    curves = record.get("curves") or {}
    if curves.get("lr"):
        return [float(v) for v in curves["lr"]]
    train = (record.get("config") or {}).get("train") or {}
    base_lr = (train.get("optimizer") or {}).get("lr")
    steps = len(curves.get("step") or [])
    if not _finite(base_lr) or not steps:
        return None
    from precision_suite.backends.reference.lr_schedule import lr_factor
    from precision_suite.config import LrScheduleConfig

    schedule = LrScheduleConfig.model_validate(train.get("lr_schedule") or {})
    epochs = curves.get("epoch") or []
    if train.get("steps"):
        horizon = int(train["steps"])
    elif train.get("epochs") and epochs:
        horizon = sum(e == epochs[0] for e in epochs) * int(train["epochs"])  # full batches per epoch
    else:
        horizon = steps
    skipped = curves.get("skipped") or [False] * steps
    out, applied = [], 0
    for step in range(steps):
        out.append(float(base_lr) * lr_factor(schedule, applied, max(horizon, 1)))
        applied += not skipped[step]
    return out


def job_series(record: dict[str, Any]) -> JobSeries:
    curves = record.get("curves") or {}
    environ = record.get("environ") or {}
    config = record.get("config") or {}
    train = config.get("train") or {}
    hparams: dict[str, Any] = {
        "backend": record.get("backend"),
        "framework": record.get("framework"),
        "policy": record.get("policy"),
        "model": record.get("model"),
        "dataset": record.get("dataset"),
        "seed": record.get("seed"),
        "device": record.get("device"),
        "device_name": environ.get("device_name"),
        "status": record.get("status"),
        "batch_size": train.get("batch_size"),
        "optimizer": (train.get("optimizer") or {}).get("name"),
        "lr": (train.get("optimizer") or {}).get("lr"),
        "lr_schedule": (train.get("lr_schedule") or {}).get("name"),
        "config_hash": config.get("config_hash") or environ.get("config_hash"),
        **{f"version/{name}": value for name, value in versions(environ).items()},
    }
    series = JobSeries(
        str(record["job_id"]),
        {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in hparams.items() if v is not None},
    )
    steps = list(curves.get("step") or [])

    def add(name: str, points: list[tuple[int, Any]]) -> None:
        kept = [(int(s), float(v)) for s, v in points if _finite(v)]
        if kept:
            series.scalars[name] = kept

    add("train/loss", list(zip(steps, curves.get("train_loss") or [], strict=False)))
    add("train/loss_scale", list(zip(steps, curves.get("loss_scale") or [], strict=False)))
    skipped = curves.get("skipped") or []
    if skipped:
        running, cumulative = 0, []
        for flag in skipped:
            running += bool(flag)
            cumulative.append(running)
        add("train/skipped_steps", list(zip(steps, cumulative, strict=False)))
    lr = lr_curve(record)
    if lr:
        add("train/lr", list(zip(steps, lr, strict=False)))
    epochs = curves.get("epoch") or []
    last_step_of_epoch = {epoch: step for step, epoch in zip(steps, epochs, strict=False)}
    add(
        "test/accuracy",
        [
            (last_step_of_epoch[e], acc)
            for e, acc in zip(curves.get("eval_epoch") or [], curves.get("test_accuracy") or [], strict=False)
            if e in last_step_of_epoch
        ],
    )
    # A window's mean step time is shown at its last step (window_end_step counts steps done).
    add(
        "time/step_time_ms",
        [
            (end - 1, ms)
            for end, ms in zip(
                curves.get("window_end_step") or [], curves.get("window_step_time_ms") or [], strict=False
            )
        ],
    )
    metrics = record.get("metrics") or {}
    series.final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if _finite(metrics.get(k))}
    return series


def safe_name(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", job_id).strip("_") or "job"


# --- writers ---------------------------------------------------------------------------------------


def write_tensorboard(jobs: list[JobSeries], out: Path, experiment: str) -> None:
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summary

    for job in jobs:
        with SummaryWriter(logdir=str(out / safe_name(job.job_id)), flush_secs=3600) as writer:
            for name, points in job.scalars.items():
                for step, value in points:
                    writer.add_scalar(name, value, step)
            last = max((s for points in job.scalars.values() for s, _ in points), default=0)
            for name, value in job.final.items():
                writer.add_scalar(name, value, last)
            # The hparams summary in the job's own folder (SummaryWriter.add_hparams would put it
            # in a new sub-run), so TensorBoard's HParams tab lines up each job with its curves.
            for summary in hparams_summary(job.hparams, job.final):
                writer.file_writer.add_summary(summary)


def write_mlflow(jobs: list[JobSeries], out: Path, experiment: str) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=out.resolve().as_uri())
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    now_ms = int(time.time() * 1000)
    for job in jobs:
        run = client.create_run(experiment_id, run_name=job.job_id, tags={"precision_suite.job_id": job.job_id})
        metrics = [
            Metric(name, value, now_ms, step) for name, points in job.scalars.items() for step, value in points
        ] + [Metric(name, value, now_ms, 0) for name, value in job.final.items()]
        params = [Param(k, str(v)) for k, v in job.hparams.items()]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow's limit per batch
            client.log_batch(
                run.info.run_id,
                metrics=metrics[start : start + 1000],
                params=params if start == 0 else [],
                tags=[RunTag("mlflow.runName", job.job_id)] if start == 0 else [],
            )
        client.set_terminated(run.info.run_id)


def write_wandb(jobs: list[JobSeries], out: Path, experiment: str) -> None:
    import wandb

    out.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(mode="offline", console="off", save_code=False, disable_git=True, x_disable_stats=True)
    for job in jobs:
        run = wandb.init(
            project=experiment,
            name=job.job_id,
            dir=str(out),
            config=job.hparams,
            mode="offline",
            settings=settings,
            reinit="create_new",
        )
        try:
            for step, values in job.by_step():
                run.log(values, step=step)
            for name, value in job.final.items():
                run.summary[name] = value
        finally:
            run.finish()
    # Stops W&B's service process: every offline file is complete when export returns, and no
    # helper process outlives the command.
    wandb.teardown()


WRITERS = {"tensorboard": write_tensorboard, "mlflow": write_mlflow, "wandb": write_wandb}


def export_run(run_dir: Path | str, to: str, out: Path | str | None = None) -> tuple[Path, int]:
    """Export every job of the run that has something to show (not ``unavailable``); returns
    where it went and how many runs."""
    if to not in TARGETS:
        raise ExportError(f"export --to {to}: unknown target; known: {', '.join(TARGETS)}")
    module, extra, folder = TARGETS[to]
    if find_spec(module) is None:
        raise ExportError(
            f"export --to {to} needs {module}, which is not installed: pip install 'precision-suite[{extra}]'"
        )
    run = load_run(run_dir)
    jobs = [job_series(r) for r in run.records if r.get("status") != "unavailable"]
    if not jobs:
        raise ExportError(f"{run.path}: no job to export (every job was unavailable)")
    target = Path(out) if out is not None else (run.path / folder if folder else run.path)
    os.environ.update(OFFLINE_ENV[to])
    experiment = f"precision-suite-{run.path.resolve().name}"
    WRITERS[to](jobs, target, experiment)
    return target, len(jobs)
