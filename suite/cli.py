"""precision-suite: train the same model on several backends and precision policies, compare.

Exit codes:
  0    everything ran and every verdict passed
  1    a verdict failed (parity, cross-framework, precision-active, replica-consistency,
       data-parallel, or a policy none of whose seeds finished); with `check --strict`, also a
       verdict that is INCONCLUSIVE (more seeds needed); `diff`: a regression; `bisect`: even
       keeping every block in fp32 does not restore parity
  2    bad config or usage (nothing was run)
  3    some jobs failed (crashed, timeout, oom, diverged, error); `unavailable` is not a failure,
       nor is a -pure policy diverging (information) unless parity.check_pure
  4    internal error: precision-suite itself crashed (a bug; the traceback is printed to
       report it); never used for bad input
  130  interrupted (Ctrl-C); finished records are kept, `--resume DIR` continues
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from precision_suite.api import PLOT_GROUPS_FROM_CONFIG
from precision_suite.errors import UsageError, UserError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXIT_OK, EXIT_VERDICT, EXIT_USAGE, EXIT_JOBS_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def _plot_groups_arg(text: str) -> int | None:
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a number of model groups >= 0 or 'all', got {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precision-suite",
        description="Multi-framework mixed-precision comparison suite.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a comparison (default: the embedded default config)")
    run.add_argument("config", nargs="?", help="YAML config (default: the packaged default.yaml)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    run.add_argument("--out", help="output directory (default: runs/<timestamp>/)")
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR: jobs already `ok` are not run again",
    )

    sub.add_parser("list", help="list backends, their policies and availability, and devices")

    bisect = sub.add_parser(
        "bisect",
        help="which blocks to keep in fp32 for a half policy to pass parity (exit 0 answer, 1 none, 2 bad input)",
    )
    bisect.add_argument("config", nargs="?", help="YAML config (default: the packaged default.yaml)")
    bisect.add_argument("--backend", required=True, help="the backend, e.g. torch-amp")
    bisect.add_argument("--policy", required=True, help="the half policy that fails, e.g. fp16-mixed")
    bisect.add_argument("--model", help="only this model of the config (default: every model)")
    bisect.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bisect.add_argument("--out", help="output directory (default: runs/bisect-<timestamp>/); again: resumes")

    report = sub.add_parser("report", help="rebuild table and reports from DIR/results.jsonl")
    report.add_argument("dir")
    report.add_argument(
        "--plot-groups",
        type=_plot_groups_arg,
        default=argparse.SUPPRESS,  # absent: the run's own setting
        metavar="N|all",
        help="draw the plots of at most N model groups, failing and inconclusive ones first; all: every"
        " group's (default: the run's report.plot_groups, 8)",
    )

    check = sub.add_parser("check", help="print verdicts of DIR; exit 1 if any fails")
    check.add_argument("dir")
    check.add_argument(
        "--tolerance",
        type=float,
        metavar="PTS",
        help="parity tolerance in the parity metric's unit: accuracy points, or nats with parity.metric: loss "
        "(default: the run's parity.tolerance_pts / tolerance_loss)",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="also exit 1 when a verdict is INCONCLUSIVE (more seeds needed), not only on FAIL",
    )
    _add_output_commands(sub)
    return parser


def _add_output_commands(sub: Any) -> None:
    export = sub.add_parser("export", help="export DIR's jobs to TensorBoard, MLflow or W&B (offline)")
    export.add_argument("dir")
    export.add_argument("--to", required=True, choices=["tensorboard", "mlflow", "wandb"])
    export.add_argument("--out", help="where to write (default: DIR/tensorboard, DIR/mlruns, DIR/wandb)")

    diff = sub.add_parser("diff", help="compare two runs of the same config row by row; exit 1 on a regression")
    diff.add_argument("old_dir", metavar="OLD_DIR")
    diff.add_argument("new_dir", metavar="NEW_DIR")
    diff.add_argument("--out", help="where to write diff.md and diff.html (default: NEW_DIR)")

    advise = sub.add_parser("advise", help="which precision policy to use, from DIR's measurements")
    advise.add_argument("dir")

    serve = sub.add_parser("serve", help="a local web page over a folder of runs: list, report, diff, history, start")
    serve.add_argument("dir", nargs="?", default="runs", help="the folder of runs (default: runs/)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others warn)")
    serve.add_argument("--configs", action="append", default=[], metavar="DIR", help="more configs to start")
    serve.add_argument(
        "--allow-user-code",
        action="store_true",
        help="let the page start configs that import your code (kind: custom models, data.name: python)",
    )


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from precision_suite.api import RunInterrupted, run
    from precision_suite.verdicts.compare import check_exit_code

    try:
        result = run(
            args.config,
            out=args.resume or args.out,
            set=args.overrides,
            resume=bool(args.resume),
            console=console,
        )
    except RunInterrupted:
        return EXIT_INTERRUPTED
    return EXIT_JOBS_FAILED if result.failed_jobs else check_exit_code(result.comparison)


def _report(
    out_dir: Path,
    console: Console,
    tolerance: float | None,
    write: bool = True,
    strict: bool = False,
    plot_groups: int | None | str = PLOT_GROUPS_FROM_CONFIG,
) -> int:
    from precision_suite.api import report_run
    from precision_suite.verdicts.compare import check_exit_code

    run_dir, _ = report_run(out_dir, console, tolerance, write=write, strict=strict, plot_groups=plot_groups)
    return check_exit_code(run_dir.comparison, strict=strict)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    _report(Path(args.dir), console, tolerance=None, plot_groups=getattr(args, "plot_groups", PLOT_GROUPS_FROM_CONFIG))
    return EXIT_OK


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    if args.tolerance is not None and not args.tolerance >= 0:
        raise UsageError(f"--tolerance: expected a number of points >= 0, got {args.tolerance}")
    return _report(Path(args.dir), console, tolerance=args.tolerance, write=False, strict=args.strict)


def cmd_bisect(args: argparse.Namespace, console: Console) -> int:
    from datetime import datetime

    from precision_suite.api import load_run_config
    from precision_suite.bisect.command import BisectInputError, run_bisect

    config = load_run_config(args.config, args.overrides, {})
    out_dir = (
        Path(args.out) if args.out else Path(config.runner.out_dir) / datetime.now().strftime("bisect-%Y%m%d-%H%M%S")
    )
    console.print(f"precision-suite bisect: writing to [bold]{out_dir}[/]", soft_wrap=True)
    try:
        result = run_bisect(
            config, args.config or "default.yaml", args.backend, args.policy, args.model, out_dir, console
        )
    except BisectInputError as exc:
        raise UsageError(str(exc)) from None
    console.print(f"reports: {out_dir / 'bisect.json'}, {out_dir / 'bisect.md'}", soft_wrap=True, highlight=False)
    return EXIT_OK if all(m.answered for m in result.models) else EXIT_VERDICT


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from precision_suite.outputs.export import export_run

    target, count = export_run(args.dir, args.to, args.out)
    console.print(f"exported {count} run(s) to {args.to}: {target}", soft_wrap=True, highlight=False)
    return EXIT_OK


def cmd_diff(args: argparse.Namespace, console: Console) -> int:
    from precision_suite.outputs.diff import diff_runs, summary_lines, write_diff_reports
    from precision_suite.outputs.rundir import load_run

    result = diff_runs(load_run(args.old_dir), load_run(args.new_dir))
    paths = write_diff_reports(result, Path(args.out or args.new_dir))
    for line in summary_lines(result):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print("diff reports: " + ", ".join(str(p) for p in paths), soft_wrap=True, highlight=False)
    return EXIT_VERDICT if result.exit_code else EXIT_OK


def cmd_advise(args: argparse.Namespace, console: Console) -> int:
    from precision_suite.outputs.advise import advise, render_text
    from precision_suite.outputs.rundir import load_run

    run = load_run(args.dir)
    console.print(render_text(advise(run), run.comparison), soft_wrap=True, highlight=False, markup=False)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from precision_suite.serve.server import ServeError, serve

    try:
        return serve(args.dir, args.host, args.port, args.configs, args.allow_user_code)
    except ServeError as exc:
        raise UsageError(str(exc)) from None


def devices_seen() -> list[str]:
    """Devices visible without importing a framework: the CPU, and NVIDIA GPUs if any."""
    from precision_suite.measure.environment import cpu_info

    info = cpu_info()
    flags = ", ".join(k for k, v in info["cpu_flags"].items() if v) or "none of note"
    seen = [f"cpu: {info['cpu_model']} ({info['cpu_count']} cores; {flags})"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            seen += [f"cuda: {line}" for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return seen


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from precision_suite.backends import RegistryError, get_backend_class, registry

    table = Table(title="backends")
    for column in ("backend", "family", "runtime", "policies", "available"):
        table.add_column(column)
    for name in registry():
        try:
            cls = get_backend_class(name)
        except RegistryError as exc:
            table.add_row(name, "?", "?", "", f"[red]cannot load[/]: {exc}")
            continue
        available = cls.is_available()
        state = "[green]yes[/]" if available.ok else f"[yellow]unavailable[/]: {available.reason}"
        table.add_row(name, cls.family, cls.runtime, ", ".join(cls.policies), state)
    console.print(table)
    for line in devices_seen():
        console.print(line)
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "bisect": cmd_bisect,
    "report": cmd_report,
    "check": cmd_check,
    "export": cmd_export,
    "diff": cmd_diff,
    "advise": cmd_advise,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    from precision_suite.api import default_console

    args = _parser().parse_args(argv)
    console = default_console()
    err = Console(stderr=True)
    try:
        return COMMANDS[args.command](args, console)
    except UserError as exc:
        # Escaped: a message may hold brackets rich would take for markup (".[mlflow]").
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.filename is None:
            return _internal_error(exc, err)
        # A file or folder the user named (or --out) that cannot be read or written.
        err.print(f"[red]error:[/] {exc.filename}: {exc.strerror or exc}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the one place a crash of the suite itself lands
        return _internal_error(exc, err)


def _internal_error(exc: BaseException, err: Console) -> int:
    """A bug in precision-suite: not a failed verdict (1), not bad input (2); its own code,
    with the traceback (for the bug report) and one line saying so."""
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    err.print(
        f"[red]internal error[/] (a bug in precision-suite; please report it with the traceback above): "
        f"{type(exc).__name__}: {exc}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
