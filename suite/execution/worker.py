"""Worker process: runs jobs sent by the runner, one at a time, and sends back records.

Started as ``python -m precision_suite.execution.worker`` in its own process session (so the runner can kill the
whole group on a timeout, and a terminal Ctrl-C reaches only the runner). Protocol: JSON lines.
The runner writes ``{"type": "job", "job": {...}}``, ``{"type": "speed", "job": {...}}`` (a
timed phase, ``precision_suite.measure.speed_phase.SpeedTask``), ``{"type": "warm", "job": {...}}`` (a phase to
come: set its sides up ahead, no answer) or ``{"type": "exit"}`` to stdin; the worker
answers on a private copy of its original stdout with ``{"type": "ready"}``, ``{"type":
"progress", "step": k, "total": n}`` and ``{"type": "result", "record": {...}}``. Everything the
frameworks print goes to stderr (the run's worker log), never into the protocol stream.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from precision_suite.execution.process import die_with_parent


def _protocol_stream() -> TextIO:
    # Keep the real stdout for the protocol, and point fd 1 at stderr so stray prints from the
    # frameworks (or their C++ code) cannot corrupt it.
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")


def _send(stream: TextIO, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message, allow_nan=False) + "\n")
    stream.flush()


def main() -> int:
    die_with_parent()
    out = _protocol_stream()
    # Imported after the redirect: importing the loop imports numpy, and jobs import frameworks.
    from precision_suite.jobs import Job
    from precision_suite.measure.loop import run_job
    from precision_suite.measure.speed_phase import WARM_KIND, SpeedTask, run_speed_task, warm_speed_task
    from precision_suite.results import SPEED_KIND, jsonable

    _send(out, {"type": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("type") == "exit":
            break
        kind = message.get("type")
        job = (SpeedTask if kind in (SPEED_KIND, WARM_KIND) else Job).from_dict(message["job"])
        print(f"[worker {os.getpid()}] {kind} {job.job_id}", file=sys.stderr, flush=True)
        if kind == WARM_KIND:
            # A phase to come (runner.parallel_jobs): load and set up its sides now; no answer.
            warm_speed_task(job)
            continue

        def progress(step: int, total: int) -> None:
            _send(out, {"type": "progress", "step": step, "total": total})

        record = run_speed_task(job, progress) if kind == SPEED_KIND else run_job(job, progress)
        _send(out, {"type": "result", "record": jsonable(record)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
