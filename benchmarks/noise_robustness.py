#!/usr/bin/env python
"""Does machine load flip the suite's speed claims? The same speed comparison, quiet and loaded.

Runs a small speed-only comparison (``speed.speed_only``: the paired, interleaved timing phase
of ``precision_suite.measure.speed_phase``) twice: once as the machine is, then again with a competing busy
process (a Python spin loop) pinned to one of the cores this process may use — started and
stopped by this script, always cleaned up. For every non-emulated policy row it prints

    cnn torch-amp bf16-mixed: quiet 1.42× (CI 1.38–1.47), loaded 1.39× (CI 1.20–1.61)  ratio_change 0.021

where ``ratio_change = |speedup_loaded / speedup_quiet − 1|``, or ``noisy (<run>: <reason>)``
where the suite withheld the claim in either run. Target: every row within 10 % or labelled
noisy, and no row claiming the opposite direction in the two runs (``--check`` exits 1 on a
miss). The quiet run must really be quiet: the script warns when it is not.

    python benchmarks/noise_robustness.py                       # default models, torch + keras
    python benchmarks/noise_robustness.py --config configs/cpu-throughput.yaml
    python benchmarks/noise_robustness.py --set 'backends.names=[torch-amp]' --check
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

TARGET_CHANGE = 0.10
DEFAULT_OVERRIDES = [
    "speed.speed_only=true",
    "speed.rounds=10",
    "speed.window_ms=50",
    "backends.names=[torch-amp, tf-keras]",
    "backends.policies={torch-amp: [fp32, bf16-mixed], tf-keras: [fp32, bf16-mixed]}",
    "seeds=[0]",
]
# The spinner dies with this script even if it is SIGKILLed (Linux PR_SET_PDEATHSIG = 1).
SPIN = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "os.kill(os.getpid(), signal.SIGKILL) if os.getppid() != int(sys.argv[2]) else None\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "while True: pass\n"
)


def run_phase(config: str | None, overrides: list[str], out: Path) -> list[dict]:
    """One speed-only run in a fresh process; returns its speed records."""
    from precision_suite.results import read_run

    command = [sys.executable, "-m", "precision_suite.cli", "run", *([config] if config else []), "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    subprocess.run(command, check=False, cwd=ROOT, stdout=sys.stderr)
    return read_run(out).speed


class BusyCore:
    """A spinning process pinned to ``core``; killed on exit, whatever happens."""

    def __init__(self, core: int) -> None:
        self.core = core
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BusyCore:
        command = [sys.executable, "-c", SPIN, str(self.core), str(os.getpid())]
        self.proc = subprocess.Popen(command, start_new_session=True)
        time.sleep(1.0)  # let it reach the loop before anything is timed
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def rows(records: list[dict]) -> dict[tuple[str, str, str], dict]:
    out = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        for candidate in record["speed"]["candidates"]:
            out[(record["model"], candidate["backend"], candidate["policy"])] = candidate | {
                "environ": record.get("environ") or {},
                "device": record.get("device"),
            }
    return out


def describe(candidate: dict) -> str:
    return f"{candidate['speedup']:.2f}× (CI {candidate['ci_low']:.2f}–{candidate['ci_high']:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config file (default: the embedded default config)")
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE override")
    parser.add_argument("--out", default=None, help="keep both runs here (default: a temporary directory)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    from precision_suite.measure.timing import busy_warning
    from precision_suite.verdicts.hardware import emulation

    overrides = ([] if args.config else DEFAULT_OVERRIDES) + args.set
    # SIGTERM unwinds like Ctrl-C, so the busy process is always stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    cores = sorted(os.sched_getaffinity(0))
    started = time.perf_counter()
    warning = busy_warning()
    if warning:
        print(f"# warning (quiet run): {warning}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        quiet = rows(run_phase(args.config, overrides, base / "quiet"))
        with BusyCore(cores[-1]):
            print(f"# loaded run: a busy process pinned to core {cores[-1]} of {cores}", flush=True)
            loaded = rows(run_phase(args.config, overrides, base / "loaded"))
    misses = 0
    for key in sorted(quiet.keys() & loaded.keys()):
        q, lo = quiet[key], loaded[key]
        if emulation(key[2], q["device"], q["environ"]):
            continue
        label = f"{key[0]} {key[1]} {key[2]}: quiet {describe(q)}, loaded {describe(lo)}"
        withheld = [f"{name}: {c['noisy_reason']}" for name, c in (("quiet", q), ("loaded", lo)) if c["noisy_reason"]]
        if withheld:
            print(f"{label}  noisy ({'; '.join(withheld)})", flush=True)
            continue
        change = abs(lo["speedup"] / q["speedup"] - 1)
        opposite = (q["speedup"] > 1) != (lo["speedup"] > 1)
        miss = change > TARGET_CHANGE or opposite
        misses += miss
        note = "  OPPOSITE DIRECTION" if opposite else "  MISS" if miss else ""
        print(f"{label}  ratio_change {change:.3f}{note}", flush=True)
    missing = sorted(quiet.keys() ^ loaded.keys())
    for key in missing:
        print(f"{' '.join(key)}: only in the {'quiet' if key in quiet else 'loaded'} run (a phase failed?)")
    print(
        f"# {misses} row(s) miss the target (claimed in both runs with > {TARGET_CHANGE:.0%} change or "
        f"opposite directions); total {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return 1 if args.check and (misses or missing) else 0


if __name__ == "__main__":
    sys.exit(main())
