#!/usr/bin/env python
"""What does `precision-suite report` cost as a run grows? Seconds per run size.

Builds run directories of increasing size — the default run's records (configs/default.yaml's
models, backends, policies and seeds; curves as long as its 10 epochs of digits) repeated under
other model names, so each copy is another model group with its own plots — and times
`precision-suite report DIR` (and `precision-suite check DIR`, which reads and compares the same
records but draws nothing) in a fresh process each, as a user runs them. Printed per size:

    records  groups  plots  report s  report cpu s  again s  check s

(report s: a report into a folder without plots, every plot it shows drawn — those of
``report.plot_groups`` (8) model groups by default, of every group with ``--plot-groups all``;
report cpu s: the CPU time of that report process and its plot workers, which load from other
processes inflates less than the wall clock; again s: the same report run again, every shown
group's PNGs read back as drawn from the same inputs; plots: the PNGs the report shows.)

With ``--from RUN_DIR`` the records of a real run are copied instead (model names suffixed
``-2``, ``-3``, ...). Timings are wall clock on whatever else the machine runs: the load average is
printed, and ``--repeat N`` keeps the fastest of N timings per size.

    python benchmarks/report_cost.py                       # sizes x1, x10, x40 of the default run
    python benchmarks/report_cost.py --quick               # one model group, x1 and x2: a smoke run
    python benchmarks/report_cost.py --sizes 40 --plot-groups all   # every group's plots drawn
    python benchmarks/report_cost.py --from runs/default --sizes 1,10,40 --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

DIGITS_TRAIN_ROWS = 1437  # scikit-learn's 1,797 digits less the default 20 % test split
COLUMNS = ("records", "groups", "plots", "report s", "report cpu s", "again s", "check s")
WIDTHS = (7, 6, 5, 8, 12, 7, 7)


def default_run_records(models: int | None = None) -> list[dict[str, Any]]:
    """One default run's training records (of its first ``models`` models; default all), built
    from configs/default.yaml's matrix by the tests' record builder (accuracies and step times
    made up, shapes as a run writes them)."""
    from precision_suite.config import load_config

    from tests.helpers.records import make_record

    config = load_config(None)
    steps = config.train.epochs * math.ceil(DIGITS_TRAIN_ROWS / config.train.batch_size)
    records = []
    for model in config.models[:models]:
        for backend in config.backends.names:
            for index, policy in enumerate(config.backends.policies[backend]):
                for seed in config.seeds:
                    record = make_record(
                        backend,
                        policy,
                        seed,
                        accuracy=0.95 - 0.002 * index + 0.001 * seed,
                        step_ms=5.0 / (1 + index) + 0.1 * seed,
                        memory=1_000_000 // (1 + index),
                        model=model.name,
                        steps=steps,
                        skipped=3 if policy.startswith("fp16") else 0,
                    )
                    memory = record["metrics"]["peak_memory_bytes"]
                    record["metrics"]["memory_breakdown"] = {
                        "weights": memory // 5,
                        "gradients": memory // 5,
                        "optimizer_state": 2 * memory // 5,
                        "master_weights": 0,
                        "activations": memory // 5,
                    }
                    records.append(record)
    return records


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    from precision_suite.results import RESULTS_FILE

    lines = (run_dir / RESULTS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def renamed(record: dict[str, Any], suffix: str) -> dict[str, Any]:
    """``record`` of another model: the same record with its model name suffixed wherever a
    record carries it (model, job id, resolved config)."""
    if not suffix:
        return record
    record = copy.deepcopy(record)
    old = record["model"]
    new = f"{old}{suffix}"
    record["model"] = new
    config = record.get("config") or {}
    for holder in (record, config):
        if holder.get("job_id"):
            holder["job_id"] = "/".join(new if part == old else part for part in holder["job_id"].split("/"))
    if isinstance(config.get("model"), dict) and config["model"].get("name") == old:
        config["model"]["name"] = new
    return record


def write_run(out_dir: Path, template: list[dict[str, Any]], copies: int) -> int:
    """A run directory holding ``copies`` copies of ``template`` under distinct model names."""
    from precision_suite.results import RESULTS_FILE

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / RESULTS_FILE, "w", encoding="utf-8") as fh:
        for copy_index in range(copies):
            suffix = f"-{copy_index + 1}" if copy_index else ""
            for record in template:
                fh.write(json.dumps(renamed(record, suffix)) + "\n")
    return copies * len(template)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(
    command: str, run_dir: Path, repeat: int, redraw: bool = False, options: tuple[str, ...] = ()
) -> tuple[float, float]:
    """The fastest of ``repeat`` timings of ``precision-suite COMMAND RUN_DIR [OPTIONS]`` in a
    fresh interpreter: wall-clock seconds, and the CPU seconds of that run (its workers included).
    ``redraw``: remove the plots first, so every timing draws them all."""
    code = "import sys; from precision_suite.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, command, str(run_dir), *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    best = (math.inf, math.inf)
    for _ in range(repeat):
        if redraw:
            shutil.rmtree(run_dir / "plots", ignore_errors=True)
        cpu0, started = _children_cpu_s(), time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        timing = (time.perf_counter() - started, _children_cpu_s() - cpu0)
        # check exits 1 on a FAIL verdict, which is a finding about the records, not an error.
        if result.returncode not in (0, 1) or (command == "report" and result.returncode):
            output = (result.stdout + result.stderr)[-2000:]
            raise RuntimeError(f"precision-suite {command} {run_dir} exited {result.returncode}:\n{output}")
        best = min(best, timing)
    return best


def measure(
    template: list[dict[str, Any]], sizes: list[int], repeat: int, work: Path, plot_groups: str | None = None
) -> list[tuple]:
    options = ("--plot-groups", plot_groups) if plot_groups else ()
    rows = []
    for copies in sizes:
        run_dir = work / f"x{copies}"
        records = write_run(run_dir, template, copies)
        report_s, report_cpu_s = time_command("report", run_dir, repeat, redraw=True, options=options)
        again_s, _ = time_command("report", run_dir, repeat, options=options)
        check_s, _ = time_command("check", run_dir, repeat)
        plots = len(list((run_dir / "plots").glob("*.png")))
        groups = len({(r["model"], r.get("dataset"), r.get("device")) for r in read_run(run_dir)})
        rows.append((records, groups, plots, report_s, report_cpu_s, again_s, check_s))
        counts = [f"{n:>{w}}" for n, w in zip((records, groups, plots), WIDTHS, strict=False)]
        seconds = [f"{s:{w}.1f}" for s, w in zip(rows[-1][3:], WIDTHS[3:], strict=True)]
        print("  ".join(counts + seconds), flush=True)
    return rows


def machine() -> str:
    from precision_suite.measure.environment import available_cores, cpu_info

    return f"{cpu_info()['cpu_model']}, {available_cores()} cores available"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,10,40", help="copies of the run per size (default 1,10,40)")
    parser.add_argument("--from", dest="source", type=Path, help="copy this run directory's records")
    parser.add_argument("--repeat", type=int, default=1, help="timings per size; the fastest is kept (1)")
    parser.add_argument("--quick", action="store_true", help="one model group, sizes 1,2: a smoke run")
    parser.add_argument("--keep", type=Path, help="write the run directories here (default: a temporary folder)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    parser.add_argument(
        "--plot-groups",
        metavar="N|all",
        help="passed to `precision-suite report` (default: its own, report.plot_groups = 8)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sizes = [int(size) for size in ("1,2" if args.quick else args.sizes).split(",") if size.strip()]
    except ValueError:
        print(f"--sizes: expected comma-separated positive integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 1 or args.repeat < 1:
        print("--sizes and --repeat: expected positive integers", file=sys.stderr)
        return 2
    if args.source is not None:
        from precision_suite.results import RESULTS_FILE

        if not (args.source / RESULTS_FILE).is_file():
            print(f"--from: {args.source / RESULTS_FILE}: no such file (is it a run directory?)", file=sys.stderr)
            return 2
        template, source = read_run(args.source), str(args.source)
    else:
        template = default_run_records(1 if args.quick else None)
        source = "synthetic default-run records (configs/default.yaml)"
    shown = f"; report --plot-groups {args.plot_groups}" if args.plot_groups else ""
    print(f"# {machine()}; load average {os.getloadavg()[0]:.2f}; records: {source}{shown}", flush=True)
    print("  ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, WIDTHS, strict=True)), flush=True)
    with tempfile.TemporaryDirectory(prefix="report-cost-") as tmp:
        rows = measure(template, sizes, args.repeat, args.keep or Path(tmp), args.plot_groups)
    print(f"# load average now {os.getloadavg()[0]:.2f}", flush=True)
    if args.markdown:
        print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---:|" * len(COLUMNS))
        for records, groups, plots, *seconds in rows:
            print(f"| {records:,} | {groups} | {plots} | " + " | ".join(f"{s:.1f}" for s in seconds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
