"""``precision-suite bisect CONFIG --backend B --policy P [--model NAME] [--out DIR]``.

Per model: (1) the endpoints: nothing kept, with the config's seeds and the usual paired verdict
(no FAIL and no failed seed: nothing needs keeping, stop), every block kept, one seed (still
failing: no answer, exit 1); (2) the proxy ranking (``probe``: each block's own error against fp32
on the first steps' batches, in a process of its own); (3) the search (``search.find_culprits``)
with short trials: one seed, passing when the run finishes and its parity metric (accuracy, or
test loss) is within ``SCREEN_FACTOR`` × the parity tolerance of fp32 on that seed; (4) the usual paired parity verdict
over the config's seeds on the set found (a FAIL there falls back to the verdict of every block
kept). Every trial is a run directory under ``DIR/<model>/`` run by the runner with its fp32
baseline copied in, so a second bisect into the same DIR resumes: finished jobs are not run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from precision_suite.backends import backend_names, get_backend_class
from precision_suite.backends.base import BlockError
from precision_suite.backends.policy import get_policy
from precision_suite.bisect.record import BisectResult, ModelBisect, TrialRecord
from precision_suite.bisect.search import BlockSensitivity, find_culprits, rank_blocks, trial_bound
from precision_suite.config import SuiteConfig
from precision_suite.jobs import BASELINE_POLICY
from precision_suite.models import BUILT_IN_KINDS, block_names, set_python_path_env
from precision_suite.results import RESULTS_FILE, Record, append_record, read_run
from precision_suite.verdicts.compare import FAIL, FAILED, PASS, compare
from precision_suite.verdicts.stats import PARITY_METRICS
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# A short trial passes within this many parity tolerances of fp32 on its one seed: it screens for
# a failure (a culprit left in half fails by far more); the verdict is the full paired test.
SCREEN_FACTOR = 2.0
# Training steps whose batches the proxy probes.
PROBE_STEPS = 8


class BisectInputError(ValueError):
    """Bad input to bisect (one line, exit 2)."""


@dataclass(frozen=True)
class Target:
    backend: str
    policy: str
    baseline_backend: str  # whose fp32 runs are the baseline: the backend's own, else its framework's


def resolve_target(config: SuiteConfig, backend: str, policy: str) -> Target:
    names = backend_names()
    if backend not in names:
        raise BisectInputError(f'--backend: unknown backend "{backend}"; known: {", ".join(names)}')
    cls = get_backend_class(backend)
    if policy not in cls.policies:
        raise BisectInputError(f'--policy: {backend} has no policy "{policy}"; it has: {", ".join(cls.policies)}')
    if get_policy(policy).compute_dtype == "float32":
        halves = [p for p in cls.policies if get_policy(p).compute_dtype != "float32"]
        raise BisectInputError(
            f"--policy: {policy} computes in float32, nothing to keep; a half policy: {', '.join(halves)}"
        )
    if BASELINE_POLICY in cls.policies:
        return Target(backend, policy, backend)
    for name in names:  # the baseline is fp32 of the same API family on the same runtime (compare)
        other = get_backend_class(name)
        if (other.family, other.runtime) == (cls.family, cls.runtime) and BASELINE_POLICY in other.policies:
            return Target(backend, policy, name)
    raise BisectInputError(
        f"--backend: no {cls.family} backend on {cls.runtime} runs fp32, the baseline {backend} is judged against"
    )


def trial_config(config: SuiteConfig, model: Any, target: Target, seeds: list[int] | None, timed: bool) -> SuiteConfig:
    """The config of one trial: this model with its kept blocks, the target and its fp32
    baseline only, ``seeds`` (None: the config's), no noise-floor runs; speed measured only when
    ``timed`` (the final verdict, whose speed and memory ``advise`` reports)."""
    raw = config.model_dump(mode="json")
    names = list(dict.fromkeys([target.baseline_backend, target.backend]))
    policies: dict[str, list[str]] = {name: [] for name in names}
    policies[target.baseline_backend].append(BASELINE_POLICY)
    policies[target.backend].append(target.policy)
    options = {k: v for k, v in raw["backends"].get("options", {}).items() if k in names}
    raw["models"] = [model.model_dump(mode="json")]
    raw["backends"] = {"names": names, "policies": policies, "policy_models": {}, "options": options}
    raw["debug"] = {"lr_scale": {k: v for k, v in raw["debug"]["lr_scale"].items() if k in _rows(policies)}}
    raw["parity"]["noise_floor_runs"] = False
    raw["speed"]["enabled"] = timed and raw["speed"]["enabled"]
    raw["runner"]["accuracy_only"] = not timed or raw["runner"]["accuracy_only"]
    if seeds is not None:
        raw["seeds"] = seeds
    return SuiteConfig.model_validate(raw)


def _rows(policies: dict[str, list[str]]) -> set[str]:
    return {f"{name}/{policy}" for name, listed in policies.items() for policy in listed}


def _key(kept: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha1(json.dumps(sorted(kept)).encode()).hexdigest()[:10]


class ModelSearch:
    """The bisect of one model: runs trials through ``run_trial``, records them, decides."""

    def __init__(
        self,
        config: SuiteConfig,
        model: Any,
        target: Target,
        out_dir: Path,
        run_trial: Callable[[SuiteConfig, Path], None],
        say: Callable[[str], None],
    ) -> None:
        self.config, self.model, self.target, self.out_dir = config, model, target, out_dir
        self.run_trial, self.say = run_trial, say
        # The screen judges what parity judges (parity.metric), in that metric's unit.
        self.metric = PARITY_METRICS[config.parity.metric]
        self.tolerance = getattr(config.parity, self.metric.tolerance_key)
        seeds = config.seeds_at_look(0)
        self.first_seed = seeds[0]
        self.trials: list[TrialRecord] = []
        self.story: list[str] = []

    # ---------------------------------------------------------------- one trial
    def _run(self, kept: tuple[str, ...], full: bool, timed: bool = False) -> Path:
        name = "nothing-kept" if not kept else f"keep-{_key(kept)}"
        run_dir = self.out_dir / f"{name}-{'full' if full else 'short'}"
        model = self.model.model_copy(update={"keep_fp32": list(kept)})
        seeds = None if full else [self.first_seed]
        config = trial_config(self.config, model, self.target, seeds, timed)
        if kept:
            self._copy_baseline(run_dir)
        self.run_trial(config, run_dir)
        return run_dir

    def _copy_baseline(self, run_dir: Path) -> None:
        """The fp32 runs of the nothing-kept endpoint (keeping blocks changes nothing in fp32):
        the runner's resume then never runs them again."""
        source = read_run(self.out_dir / "nothing-kept-full")
        if not source.found:
            return
        have = {r["job_id"] for r in self._records(run_dir)}
        run_dir.mkdir(parents=True, exist_ok=True)
        for record in source.records:
            if record.get("policy") == BASELINE_POLICY and record["status"] == "ok" and record["job_id"] not in have:
                append_record(run_dir / RESULTS_FILE, record)

    def _records(self, run_dir: Path) -> list[Record]:
        """The newest record of each job of the trial in ``run_dir`` (the one run-directory reader)."""
        return read_run(run_dir).records

    def screen(self, kept: tuple[str, ...], purpose: str) -> bool:
        """A short trial: one seed, paired with fp32 on that seed."""
        run_dir = self._run(kept, full=False)
        by_policy = {
            (r.backend, r.policy): r
            for r in self._records(run_dir)
            if r.seed == self.first_seed and r.model_name == self.model.name
        }
        mine = by_policy.get((self.target.backend, self.target.policy))
        base = by_policy.get((self.target.baseline_backend, BASELINE_POLICY))
        if mine is None or base is None or not base.ok:
            outcome, detail = FAILED, "no fp32 baseline" if mine is not None else "no record"
        elif not mine.ok:
            outcome, detail = FAILED, f"{mine['status']}: {mine.get('error')}"
        else:
            key, unit = self.metric.record_key, self.metric.unit
            delta = self.metric.scale * (mine.metrics[key] - base.metrics[key])
            limit = SCREEN_FACTOR * self.tolerance
            outcome = PASS if abs(delta) <= limit else FAIL
            detail = f"seed {self.first_seed}: Δ {self.metric.fmt(delta)} {unit} vs fp32 (screen ±{limit:g} {unit})"
        self.trials.append(TrialRecord(list(kept), purpose, outcome, detail, str(run_dir), [self.first_seed], 0))
        self.say(f"  {purpose}: keep [{', '.join(kept)}] → {outcome} ({detail})")
        return outcome == PASS

    def verdict(self, kept: tuple[str, ...], purpose: str, timed: bool = False) -> tuple[str, str, Path]:
        """The usual paired parity verdict over the config's seeds (a failed seed is a failure)."""
        run_dir = self._run(kept, full=True, timed=timed)
        records = self._records(run_dir)
        comparison = compare(records)
        row = next(
            (r for r in comparison.rows if (r.backend, r.policy) == (self.target.backend, self.target.policy)), None
        )
        if row is None:
            outcome, detail = FAILED, "no record of the policy"
        elif row.seeds_failed:
            status = row.verdict("status")
            outcome, detail = FAILED, status.detail if status else f"{len(row.seeds_failed)} seed(s) failed"
        else:
            parity = row.verdict("parity")
            outcome, detail = (parity.outcome, parity.detail) if parity else (FAILED, "no parity verdict")
        seeds = sorted({r["seed"] for r in records})
        self.trials.append(TrialRecord(list(kept), purpose, outcome, detail, str(run_dir), seeds, 0))
        self.say(f"  {purpose}: keep [{', '.join(kept)}] → {outcome} ({detail})")
        return outcome, detail, run_dir

    # ---------------------------------------------------------------- the whole search
    def run(self, probe: Callable[[], tuple[list[str], list[Any], str]]) -> ModelBisect:
        outcome, detail, run_dir = self.verdict((), "endpoint: nothing kept")
        if outcome not in (FAIL, FAILED):
            self.story.append(
                f"With nothing kept, {self.target.policy} is not shown to fail ({outcome}: {detail}): "
                "nothing needs keeping."
            )
            return self._result([], [], outcome, detail, run_dir, [], 0)
        self.story.append(f"With nothing kept, {self.target.policy} fails ({outcome}: {detail}).")
        blocks, errors, note = probe()
        if not blocks:
            self.story.append(f"No blocks to search ({note or 'the backend names none'}): no answer.")
            return self._result(blocks, None, outcome, detail, run_dir, [], 0)
        if note:
            self.story.append(f"Note: {note}.")
        compute = get_policy(self.target.policy).compute_dtype
        ranking = rank_blocks(blocks, errors, compute)
        ranked = [s.name for s in ranking]
        bound = trial_bound(len(ranked), 1)
        self.story.append(
            f"The proxy ranked {len(ranked)} blocks (most suspect first: {', '.join(ranked[:3])}); "
            f"the search costs at most k·(2⌈log₂ n⌉+1)+1 short trials for k culprits ({bound} for one)."
        )
        if not self.screen(tuple(ranked), "endpoint: every block kept"):
            self.story.append("Even with every block kept in fp32 the short run fails: no answer.")
            return self._result(blocks, None, FAIL, self.trials[-1].detail, None, ranking, bound)
        search = find_culprits(ranked, lambda kept: self.screen(kept, "search"))
        keep = [b for b in ranked if b in search.keep]
        self.story.append(
            f"Searching the ranking with {len(search.trials)} short trial(s) found: keep [{', '.join(keep)}]."
        )
        outcome, detail, run_dir = self.verdict(tuple(keep), "verdict", timed=True)
        if outcome == PASS:
            self.story.append(f"The paired verdict over the seeds with those kept: PASS ({detail}).")
            return self._result(blocks, keep, outcome, detail, run_dir, ranking, bound)
        self.story.append(f"The paired verdict with those kept is {outcome} ({detail}); trying every block kept.")
        outcome, detail, run_dir = self.verdict(tuple(ranked), "verdict", timed=True)
        if outcome == PASS:
            self.story.append(f"Every block kept passes ({detail}): keep them all.")
            return self._result(blocks, ranked, outcome, detail, run_dir, ranking, bound)
        self.story.append(f"Even every block kept is {outcome} ({detail}): no answer.")
        return self._result(blocks, None, outcome, detail, run_dir, ranking, bound)

    def _result(
        self,
        blocks: list[str],
        keep: list[str] | None,
        outcome: str,
        detail: str,
        run_dir: Path | None,
        ranking: list[BlockSensitivity],
        bound: int,
    ) -> ModelBisect:
        for trial in self.trials:
            trial.runs = sum(1 for r in self._records(Path(trial.run_dir)) if _ran_here(r, trial))
        return ModelBisect(
            self.model.name,
            blocks,
            keep,
            outcome,
            detail,
            str(run_dir) if run_dir is not None else None,
            self.story,
            [asdict(s) for s in ranking],
            self.trials,
            bound,
        )


def _ran_here(record: dict[str, Any], trial: TrialRecord) -> bool:
    """A record the trial's own run made (not an fp32 baseline copied from the first endpoint)."""
    copied = trial.kept and record.get("policy") == BASELINE_POLICY
    return not copied and record.get("seed") in trial.seeds


def run_probe(config: SuiteConfig, model: Any, target: Target, out_dir: Path) -> tuple[list[str], list[Any], str]:
    """(blocks, their ``BlockError`` records, a note) from the proxy, run in a process of its own
    (``precision_suite.bisect.probe``) and cached in ``out_dir/probe.json``. A probe that fails
    leaves a built-in model's blocks in forward order, and the note says why."""
    from precision_suite.plan import expand_jobs

    cached = out_dir / "probe.json"
    if not cached.exists():
        first = config.seeds_at_look(0)[0]
        jobs = expand_jobs(trial_config(config, model, target, [first], timed=False), config.device)
        mine = next(j for j in jobs if (j.backend, j.policy) == (target.backend, target.policy))
        base = next(j for j in jobs if (j.backend, j.policy) == (target.baseline_backend, BASELINE_POLICY))
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = out_dir / "probe-in.json"
        spec.write_text(json.dumps({"job": mine.to_dict(), "reference": base.to_dict(), "steps": PROBE_STEPS}))
        env = dict(os.environ)
        set_python_path_env(env, config.python_path)  # a custom model's code, as the workers import it
        done = subprocess.run(
            [sys.executable, "-m", "precision_suite.bisect.probe", str(spec), str(cached)],
            capture_output=True,
            text=True,
            timeout=config.runner.job_timeout_s,
            env=env,
        )
        if done.returncode != 0 or not cached.exists():
            last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
            fallback = block_names(model) if model.kind in BUILT_IN_KINDS else []
            return fallback, [], f"the proxy failed ({last}); blocks in forward order"
    raw = json.loads(cached.read_text())
    return raw["blocks"], [BlockError(**e) for e in raw["errors"]], ""


def run_bisect(
    config: SuiteConfig,
    source: str,
    backend: str,
    policy: str,
    model_name: str | None,
    out_dir: Path,
    console: Console,
) -> BisectResult:
    """Bisect every model of ``config`` (or the one named) for ``backend`` × ``policy``; writes
    ``bisect.json`` (after every model, so an interrupted bisect leaves what it found) and
    ``bisect.md`` into ``out_dir``."""
    from precision_suite.bisect.document import write_markdown
    from precision_suite.execution.runner import run_suite

    target = resolve_target(config, backend, policy)
    models = [m for m in config.models if model_name is None or m.name == model_name]
    if not models:
        names = ", ".join(m.name for m in config.models)
        raise BisectInputError(f'--model: no model "{model_name}" in {source}; it has: {names}')
    for model in models:
        if model.keep_fp32:
            raise BisectInputError(
                f"{source}: model {model.name} already keeps {model.keep_fp32} in fp32: bisect searches from "
                "nothing kept; remove keep_fp32 first"
            )
    seeds = config.seeds_at_look(0)
    console.print(
        f"bisect {target.backend} {target.policy} on {len(models)} model(s), baseline {target.baseline_backend} "
        f"fp32, seeds {seeds}. Cost: per model, the nothing-kept endpoint ({len(seeds)} seed(s) × 2 runs); if it "
        f"fails, the proxy (one process), every block kept (1 run), at most k·(2⌈log₂ n⌉+1)+1 short trials "
        f"(1 run each) for k culprits among n blocks, and the verdict ({len(seeds)} runs).",
        soft_wrap=True,
        highlight=False,
    )
    quiet = Console(quiet=True)
    result = BisectResult(target.backend, target.policy, source, [])
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    # The most trials each model can take (an upper bound: most end far sooner), for the bar.
    most = [3 + trial_bound(len(block_names(m)) if m.kind in BUILT_IN_KINDS else 16, 1) for m in models]
    task = progress.add_task("bisect", total=sum(most))

    def run_trial(trial: SuiteConfig, run_dir: Path) -> None:
        progress.update(task, description=f"{run_dir.parent.name}: {run_dir.name}")
        summary = run_suite(trial, run_dir, quiet, resume=(run_dir / RESULTS_FILE).exists())
        progress.advance(task)
        if summary.interrupted:
            raise KeyboardInterrupt

    def say(line: str) -> None:
        progress.console.print(line, highlight=False, markup=False)

    with progress:
        for i, model in enumerate(models):
            say(model.name)
            model_dir = out_dir / model.name
            search = ModelSearch(config, model, target, model_dir, run_trial, say)
            found = search.run(lambda model=model, model_dir=model_dir: run_probe(config, model, target, model_dir))
            result.models.append(found)
            result.write(out_dir)
            progress.update(task, completed=sum(most[: i + 1]))
            answer = "no answer" if found.keep_fp32 is None else f"keep_fp32: [{', '.join(found.keep_fp32)}]"
            say(f"{model.name}: {answer} (verdict {found.verdict})")
    result.write(out_dir)
    write_markdown(result, out_dir)
    return result
