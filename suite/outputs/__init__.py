"""Results where users already look: CI files written with every report (``junit.xml``,
``benchmark.json``), post-hoc export to experiment trackers, run-to-run diff and advice.

Everything here reads a run directory (``results.jsonl`` and what ``compare`` derives from it)
and never imports an ML framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_ci_files(out_dir: Path, comparison: Any, records: list[dict[str, Any]]) -> list[Path]:
    """``junit.xml`` and ``benchmark.json`` beside the reports, written with every report."""
    from precision_suite.outputs.benchmark_json import write_benchmark_json
    from precision_suite.outputs.junit import write_junit

    return [write_junit(out_dir, comparison, records), write_benchmark_json(out_dir, comparison, records)]
