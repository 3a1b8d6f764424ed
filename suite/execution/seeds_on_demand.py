"""Seeds on demand: after each look of the seed plan, more seeds only for the rows whose verdict
is still INCONCLUSIVE.

``seeds: {min: 3, max: 10}`` runs seeds 0..2 first; at each later look of
``precision_suite.verdicts.stats.look_schedule`` (3, 6, 10) the rows with an enforced INCONCLUSIVE
verdict (and the fp32 baselines they are paired with) get the seeds up to that look, and the
run stops as soon as every verdict is conclusive. The comparison tests every look at α / looks,
so deciding to continue after looking does not inflate the false-PASS or false-FAIL rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from precision_suite.config import SuiteConfig
from precision_suite.jobs import BASELINE_POLICY, Job
from precision_suite.plan import expand_jobs
from precision_suite.results import RowKey, read_run
from precision_suite.verdicts.compare import Comparison, compare


def undecided_rows(comparison: Comparison) -> set[RowKey]:
    """Rows that more seeds could decide: those with an enforced INCONCLUSIVE parity verdict,
    with their fp32 baseline, and every fp32 row of a group whose cross-framework verdict is
    INCONCLUSIVE."""
    wanted: set[RowKey] = set()
    for group in comparison.groups:
        labels = {row.label: row for row in group.rows}
        for row in group.rows:
            if any(v.is_inconclusive for v in row.verdicts):
                wanted.add(RowKey.of(row))
                base = labels.get(row.baseline or "")
                if base is not None:
                    wanted.add(RowKey.of(base))
        if any(v.is_inconclusive for v in group.verdicts):
            wanted |= {RowKey.of(row) for row in group.rows if row.policy == BASELINE_POLICY}
    return wanted


def next_look_jobs(config: SuiteConfig, device: str, look: int, records: list[dict]) -> list[Job]:
    """The jobs that take the undecided rows of ``records`` from look ``look - 1`` to ``look``."""
    # A run has one dataset and one device: a job of an undecided row's model, backend and policy
    # is one of its seeds (at every world size the row's model, backend and policy run at).
    wanted = {(key.model, key.backend, key.policy) for key in undecided_rows(compare(records))}
    if not wanted:
        return []
    before = set(config.seeds_at_look(look - 1))
    seeds = [s for s in config.seeds_at_look(look) if s not in before]
    return [
        job
        for job in expand_jobs(config, device, seeds)
        if not job.perturb_ulp and (job.model.name, job.backend, job.policy) in wanted
    ]


def rounds_on_demand(
    config: SuiteConfig,
    device: str,
    first: list[Job],
    results_path: Path,
    skip: Callable[[Job], bool],
    on_added: Callable[[list[Job]], None],
) -> Iterator[list[Job]]:
    """``first``, then look by look the jobs ``next_look_jobs`` adds (reading the records the
    previous round wrote), without those ``skip`` says are done; stops when nothing is
    undecided. The caller runs each round to the end before asking for the next."""
    yield first
    for look in range(1, len(config.seed_looks())):
        added = next_look_jobs(config, device, look, read_run(results_path.parent).records)
        if not added:
            return
        pending = [job for job in added if not skip(job)]
        on_added(pending)
        yield pending
