"""Data-parallel results: the ``replica-consistency`` and ``data-parallel`` verdicts and the
weak-scaling table. Pure Python + NumPy, from ``results.jsonl`` alone (like ``compare``).

* ``replica-consistency`` (every row of an N-replica group): every replica applied the same
  skip decisions, ended with the same loss scale and with bit-identical parameters (equal
  sha256 digests), in every seed.
* ``data-parallel`` (the fp32 row of an N-replica group): the per-step training loss over N
  replicas matches what it is supposed to equal, the one-process run at the same global batch
  that trains each replica's slice of a step as a micro-batch of its own (the ``dp-reference``
  job, ``plan.replica_shards_reference``: BatchNorm normalises each slice on its own, as
  the replicas do), to a relative ``distributed.data_parallel_rtol`` over the first
  ``distributed.data_parallel_steps`` steps. Why a tolerance: the all-reduce may sum the
  replicas' gradients in another order than one process does, a difference of a few ulps per
  step that training then amplifies (the loss curves of chaotic training separate
  exponentially), so only an initial horizon is compared; beyond it the runs are different
  samples of the same process. ``n/a`` (never FAIL) where no one-process run computes what the
  replicas do: dropout (every replica draws its masks from the same seed), or a reference that
  normalises BatchNorm over another batch than the replicas (a run directory from before the
  per-slice reference, or synchronized BatchNorm).
* the scaling table: per (model, dataset, device, backend, policy) and world size, samples/s
  per device, weak-scaling efficiency throughput_N / (N × throughput_1), the policy's speedup
  over fp32 at N beside the same at 1, and the share of step time in gradient communication
  where the framework exposes it (DDP's sampled backward communication time).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from precision_suite.jobs import BASELINE_POLICY
from precision_suite.results import BATCHNORM_NONE, BATCHNORM_PER_REPLICA, Record, is_dp_reference, world_size
from precision_suite.verdicts.stats import PastHorizon, chaos_aware_agreement, past_horizon_problem

DEFAULT_DP_RTOL = 1e-4
DEFAULT_DP_STEPS = 10


def _batch_size(record: dict[str, Any]) -> int | None:
    return ((record.get("config") or {}).get("train") or {}).get("batch_size")


def _grad_accumulation(record: dict[str, Any]) -> int:
    return int(((record.get("config") or {}).get("train") or {}).get("grad_accumulation") or 1)


def batchnorm_per_replica(record: dict[str, Any]) -> bool | None:
    """Whether the replicas of an N-replica record normalised BatchNorm with their own slices'
    statistics (True) or over the global batch (False: synchronized BatchNorm); None when the
    model has no BatchNorm."""
    value = str((record.get("distributed") or {}).get("batchnorm") or "")
    if value.startswith(BATCHNORM_PER_REPLICA):
        return True
    if value in ("", BATCHNORM_NONE) or value.startswith("no BatchNorm"):
        # The built-in cnn has BatchNorm whatever an older record says (tf-keras said it had none).
        return True if ((record.get("config") or {}).get("model") or {}).get("kind") == "cnn" else None
    return False


def not_comparable_reason(record: dict[str, Any]) -> str | None:
    """Why no one-process run can compute what the replicas of ``record`` computed, or None."""
    dropout = ((record.get("config") or {}).get("model") or {}).get("dropout") or 0
    if dropout > 0:
        return (
            f"dropout {dropout:g}: every replica draws its masks from the same seed, which no one-process "
            "run reproduces"
        )
    return None


def matching_reference(
    record: dict[str, Any], references: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, str | None]:
    """(the reference of one N-replica record among its seed's ok dp-reference records, why there is
    none to compare with). Preferred: the one that trains each replica's slice as a micro-batch of
    its own (``replica_shards_reference``); a whole-batch one (a run from before it) only where the
    replicas' BatchNorm saw the whole batch too, or the model has none. (None, None): no reference."""
    per_replica = batchnorm_per_replica(record)
    accumulation = _grad_accumulation(record)
    per_slice = [r for r in references if _grad_accumulation(r) == world_size(record) * accumulation]
    whole = [r for r in references if _grad_accumulation(r) == accumulation]
    batchnorm = (record.get("distributed") or {}).get("batchnorm")
    if per_slice:
        if per_replica is False:
            return None, (
                f"the replicas normalise BatchNorm over the global batch ({batchnorm}); the one-process run "
                "normalises each replica's slice"
            )
        return per_slice[-1], None
    if whole:
        if per_replica:
            return None, (
                "each replica normalises BatchNorm with its own slice's statistics; the one-process run at the "
                "global batch normalises the whole batch (a run from before the per-slice reference: --resume "
                "adds it)"
            )
        return whole[-1], None
    return None, None


def _distributed_setting(record: dict[str, Any], key: str, default: float) -> float:
    value = ((record.get("config") or {}).get("distributed") or {}).get(key)
    return default if value is None else value


def replica_problems(record: dict[str, Any]) -> list[str]:
    """What differs between the replicas of one N-replica record (empty when consistent)."""
    replicas = (record.get("distributed") or {}).get("replicas") or []
    seed = record.get("seed")
    if len(replicas) != world_size(record):
        return [f"seed {seed}: {len(replicas)} replica report(s) for {world_size(record)} replicas"]
    problems = []
    first = replicas[0]
    for replica in replicas[1:]:
        for key, what in (
            ("skipped_steps", "skipped steps"),
            ("loss_scale_final", "final loss scale"),
            ("params_sha256", "parameters"),
        ):
            if replica.get(key) != first.get(key):
                problems.append(f"seed {seed}: replica {replica.get('rank')} {what} differ from replica 0's")
    return problems


def replica_consistency(subject: str, records: list[dict[str, Any]]) -> tuple[str, str]:
    """(outcome, detail) of the replica-consistency verdict over a row's ok records."""
    problems = [p for r in records for p in replica_problems(r)]
    if problems:
        return "fail", "; ".join(problems)
    skips = sum(len(r["distributed"]["replicas"][0].get("skipped_steps") or []) for r in records)
    return "pass", f"{len(records)} seed(s): same {skips} skipped step(s), loss scale and parameters on every replica"


def data_parallel(
    records: list[dict[str, Any]], references: list[dict[str, Any]], noise_floor: list[dict[str, Any]] = ()
) -> tuple[str, str]:
    """(outcome, detail) of the data-parallel verdict of an fp32 N-replica row's ok records
    against the one-process records at the same global batch (``matching_reference``). Where the
    reference has a one-ulp noise-floor run, the agreement is chaos-aware
    (``stats.chaos_aware_agreement``): every step within ``data_parallel_rtol`` up to the
    reference's own divergence horizon (at least ``data_parallel_steps``); past it, no more than
    ``stats.PAST_HORIZON_FACTOR`` times its self divergence in more than half of the seeds
    (``stats.past_horizon_problem``); otherwise the first ``data_parallel_steps`` steps within
    the rtol. A seed no one-process run can reproduce is n/a, with the reason; a missing
    reference fails."""
    ok_references = [r for r in references if r.get("status") == "ok"]
    nudged_by_id = {str(r.get("job_id")): r for r in noise_floor if r.get("status") == "ok"}
    worst = 0.0
    compared = []
    problems = []
    not_comparable: dict[str, list[Any]] = defaultdict(list)
    horizons = []
    past: dict[Any, PastHorizon] = {}
    floors = 0
    for record in records:
        seed = record.get("seed")
        reference, reason = matching_reference(record, [r for r in ok_references if r.get("seed") == seed])
        reason = not_comparable_reason(record) or reason
        if reason:
            not_comparable[reason].append(seed)
            continue
        if reference is None:
            problems.append(f"seed {seed}: no ok one-process run at the global batch")
            continue
        rtol = float(_distributed_setting(record, "data_parallel_rtol", DEFAULT_DP_RTOL))
        steps = int(_distributed_setting(record, "data_parallel_steps", DEFAULT_DP_STEPS))
        ours, theirs = Record(record).curve(), Record(reference).curve()
        if ours is None or theirs is None or min(ours.size, theirs.size) == 0:
            problems.append(f"seed {seed}: no loss curve")
            continue
        nudged = nudged_by_id.get(f"{reference.get('job_id')}/ulp+1")
        own_pairs = [(theirs, curve)] if nudged is not None and (curve := Record(nudged).curve()) is not None else []
        floors += bool(own_pairs)
        found = chaos_aware_agreement(ours, theirs, own_pairs, rtol, steps, steps)
        worst = max(worst, found.worst)
        compared.append(seed)
        if found.horizon is not None:
            horizons.append(found.horizon)
        problems += [f"seed {seed}: {p}" for p in found.problems]
        if found.past is not None:
            past[seed] = found.past
    if (past_problem := past_horizon_problem(past)) is not None:
        problems.append(past_problem)
    not_compared = "; ".join(f"seed(s) {', '.join(map(str, seeds))}: {why}" for why, seeds in not_comparable.items())
    if problems:
        return "fail", "; ".join(problems)
    if not compared:
        return "n/a", not_compared or "no seed to compare"
    if horizons:
        where = f"divergence horizon step {min(horizons)}"
    elif floors:
        where = f"the one-process run never left the rtol of its one-ulp twin ({floors} seed(s)): all steps held"
    else:
        where = "no noise-floor run: the first data_parallel_steps steps held"
    detail = (
        f"{len(compared)} seed(s): per-step loss within {worst:.2g} relative of one process at the same global "
        f"batch ({where})"
    )
    return "pass", detail + (f"; not compared: {not_compared}" if not_compared else "")


def references_for(record: dict[str, Any], all_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dp-reference records of an N-replica record: same backend, model, dataset, device, at
    its global batch."""
    global_batch = world_size(record) * (_batch_size(record) or 0)
    return [
        r
        for r in all_records
        if is_dp_reference(r)
        and r.get("backend") == record.get("backend")
        and r.get("model") == record.get("model")
        and r.get("dataset") == record.get("dataset")
        and r.get("device") == record.get("device")
        and _batch_size(r) == global_batch
    ]


# ---------------------------------------------------------------- weak scaling
@dataclass
class ScalingRow:
    model: str
    dataset: str
    device: str
    backend: str
    policy: str
    world_size: int
    samples_per_s: float | None  # global, mean over seeds
    samples_per_s_per_device: float | None
    efficiency: float | None  # throughput_N / (N × throughput_1)
    speedup: float | None  # over fp32 of the same backend at this world size
    speedup_at_1: float | None
    comm_share: float | None  # of step time, where exposed


SCALING_NOTE = (
    "weak scaling at a fixed per-replica batch; scaling efficiency = samples/s at N / (N × samples/s at 1); "
    "speedup = samples/s of the policy / samples/s of fp32 of the same framework at the same N; comm share = "
    "DDP's sampled backward communication time / step time p50 (it includes waiting for the slowest replica; "
    "tf.distribute does not expose it). On a CPU a replica is a share of the cores, not a device of its own."
)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return float(np.mean(values)) if values else None


def _comm_share(record: dict[str, Any]) -> float | None:
    comm_ns = (record.get("distributed") or {}).get("backward_comm_ns")
    step_ms = (record.get("metrics") or {}).get("step_time_ms_p50")
    if not comm_ns or not step_ms:
        return None
    return min(1.0, comm_ns / 1e6 / step_ms)


def scaling_rows(records: list[dict[str, Any]]) -> list[ScalingRow]:
    """The weak-scaling table; empty unless some record ran over more than one replica."""
    ok = [r for r in records if r.get("status") == "ok" and not is_dp_reference(r)]
    if not any(world_size(r) > 1 for r in ok):
        return []
    cells: dict[tuple[str, str, str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    baselines: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    # The baseline of a backend's row: fp32 of the same API family on the same runtime.
    implementation: dict[str, tuple[str, str]] = {}
    for r in ok:
        key = (str(r.get("model")), str(r.get("dataset")), str(r.get("device")), str(r.get("backend")))
        cells[(*key, str(r.get("policy")), world_size(r))].append(r)
        record = r if isinstance(r, Record) else Record(r)
        implementation[key[3]] = (record.family, record.runtime)
        if r.get("policy") == BASELINE_POLICY:
            baselines[(*key[:3], implementation[key[3]], world_size(r))].append(r)

    def throughput(group: list[dict[str, Any]]) -> float | None:
        return _mean([(r.get("metrics") or {}).get("samples_per_s") for r in group])

    def speedup(key: tuple[Any, ...]) -> float | None:
        if key[4] == BASELINE_POLICY:
            return None
        base = throughput(baselines.get((*key[:3], implementation[key[3]], key[5]), []))
        mine = throughput(cells.get(key, []))
        return mine / base if base and mine else None

    rows = []
    for key in sorted(cells, key=lambda k: (k[:4], k[4], k[5])):
        model, dataset, device, backend, policy, size = key
        total = throughput(cells[key])
        at_1 = throughput(cells.get((*key[:5], 1), []))
        shares = [s for s in (_comm_share(r) for r in cells[key]) if s is not None]
        rows.append(
            ScalingRow(
                model,
                dataset,
                device,
                backend,
                policy,
                size,
                total,
                total / size if total else None,
                total / (size * at_1) if total and at_1 else None,
                speedup(key),
                speedup((*key[:5], 1)),
                float(np.mean(shares)) if shares else None,
            )
        )
    return rows


SCALING_HEADER = [
    "model",
    "backend",
    "policy",
    "replicas",
    "samples/s",
    "samples/s per device",
    "scaling efficiency",
    "speedup vs fp32 (at N)",
    "speedup vs fp32 (at 1)",
    "comm share",
]


def scaling_cells(row: ScalingRow) -> list[str]:
    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    return [
        f"{row.model}/{row.dataset}/{row.device}",
        row.backend,
        row.policy,
        str(row.world_size),
        num(row.samples_per_s, ".0f"),
        num(row.samples_per_s_per_device, ".0f"),
        num(row.efficiency, ".2f"),
        "base" if row.policy == BASELINE_POLICY else num(row.speedup, ".2f") + ("×" if row.speedup else ""),
        "base" if row.policy == BASELINE_POLICY else num(row.speedup_at_1, ".2f") + ("×" if row.speedup_at_1 else ""),
        "not exposed" if row.comm_share is None else f"{row.comm_share:.0%}",
    ]
