"""Process handling shared by the executors: the worker process and its JSON-lines pipe, a child
that dies with its parent, the text of an exit code, the tail of a process's log, killing a
whole process group. Imports nothing but the standard library: a worker imports it first, before
it redirects its output and before the frameworks load.

The protocol of the messages is described in ``precision_suite.execution.worker`` (the worker's
side); the data-parallel launcher (``precision_suite.execution.data_parallel``) starts its rank
processes with the same helpers.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from precision_suite.jobs import Job
    from precision_suite.measure.loop import ProgressFn

STDERR_TAIL_LINES = 15
WORKER_START_TIMEOUT_S = 300.0


def exit_text(code: int) -> str:
    """``killed by SIGKILL`` or ``exited with code 3``: how a child process ended."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def log_tail(path: Path, since: int = 0) -> str:
    """The last ``STDERR_TAIL_LINES`` non-blank lines of a log written from byte ``since`` on
    ("" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def kill_group(pgid: int, procs: list[subprocess.Popen]) -> None:
    """SIGKILL the process group ``pgid`` (nothing left running, no orphans) and reap ``procs``."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def die_with_parent() -> None:
    # If the runner is killed (even with SIGKILL) its workers must not live on as orphans.
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        parent = os.getppid()
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


class WorkerDied(RuntimeError):
    pass


class Worker:
    """One ``python -m precision_suite.execution.worker`` process and the pipe it answers on."""

    def __init__(self, log_path: Path, env: dict[str, str], wait: bool = True) -> None:
        """Start the worker; with ``wait`` (default) return once it said it is ready. Without,
        messages may be sent at once (they wait in its stdin); a worker that never starts shows
        as a WorkerDied on its first job."""
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "precision_suite.execution.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if not wait:
            return
        ready = self._next(time.monotonic() + WORKER_START_TIMEOUT_S)
        if ready is None or ready.get("type") != "ready":
            self.kill()
            raise WorkerDied(f"worker did not start: {self.describe_exit()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next message, None at EOF; raises TimeoutError past the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                return None
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_offset(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def stderr_tail(self, since: int) -> str:
        return log_tail(self.log_path, since)

    def describe_exit(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "worker stopped answering"
        return f"worker {exit_text(code)}"

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self.describe_exit()) from None

    def run(self, job: Job, timeout_s: float, progress: ProgressFn) -> dict[str, Any]:
        self.send({"type": job.kind, "job": job.to_dict()})
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._next(deadline)
            if message is None:
                raise WorkerDied(self.describe_exit())
            if message.get("type") == "progress":
                progress(message["step"], message["total"])
            elif message.get("type") == "result":
                return message["record"]

    def kill(self) -> None:
        """Kill the worker's whole process group (no orphans)."""
        kill_group(self.proc.pid, [self.proc])
        self._log.close()

    def stop(self) -> None:
        if self.alive:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"type": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
