"""Test helpers: register test backends through the real entry-point mechanism."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

# The repository root: ``tests.helpers.fake_backend`` is importable from there.
REPO_ROOT = Path(__file__).resolve().parents[2]


def install_entry_points(site: Path, dist: str, entries: dict[str, str]) -> None:
    """Write a minimal installed distribution (dist-info with entry_points.txt) into ``site`` —
    what pip would leave for a package declaring these backends."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[precision_suite.backends]\n{lines}")


def activate(site: Path, monkeypatch) -> None:
    """Make ``site`` (and the repository root, home of ``tests.helpers.fake_backend``) importable here and in
    worker subprocesses, and forget the cached registry."""
    from precision_suite.backends import registry

    paths = [str(site), str(REPO_ROOT)]
    monkeypatch.setenv("PYTHONPATH", ":".join(paths + [p for p in sys.path if p]))
    for p in reversed(paths):
        monkeypatch.syspath_prepend(p)
    registry.cache_clear()


def run_cli(config, out: Path, *overrides: str) -> int:
    """``precision-suite run CONFIG --out OUT --set O1 --set O2 ...`` in this process."""
    from precision_suite.cli import main

    args = ["run", str(config), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    return main(args)


def read_run(out: Path) -> list[dict]:
    """The valid records of the run in ``out``."""
    from precision_suite.results import read_records

    return read_records(out / "results.jsonl").records


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(args: list[str]) -> subprocess.Popen:
    """``python -m precision_suite.cli ARGS`` in a child process that takes Ctrl-C as it would
    from a terminal: SIGINT at its default disposition (Python then raises KeyboardInterrupt),
    whatever this process inherited. ``nohup``, a background job of a script and some CI runners
    start the tests with SIGINT ignored, and an ignored signal stays ignored across exec — the
    CLI rightly keeps it so (Python does the same), so a test that sends SIGINT restores it."""
    return subprocess.Popen(
        [sys.executable, "-m", "precision_suite.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
