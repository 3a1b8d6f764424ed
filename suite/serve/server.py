"""``precision-suite serve [DIR]``: the standard library's threading HTTP server over a folder of
runs. It reads records only (never a framework, never the user's code), serves nothing outside
DIR, binds 127.0.0.1 unless told otherwise, and starts a run only on a POST that carries the
token it printed at start."""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
import mimetypes
import secrets
import signal
import sys
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from precision_suite.outputs import diff
from precision_suite.outputs.rundir import RunDir, RunDirError
from precision_suite.report.documents import render_html
from precision_suite.results import RESULTS_FILE, read_run
from precision_suite.serve import pages
from precision_suite.serve.history import history, parse_row_id, plot_history, row_keys
from precision_suite.serve.launch import ALLOWED_OVERRIDES, Launcher, StartError
from precision_suite.serve.runs import (
    REPORT_FILE,
    RUN_FILES,
    SERVE_FILE,
    RunCache,
    find_runs,
    inside,
    stamp,
    summarize,
    unreadable,
)

REQUEST_TIMEOUT_S = 30  # a client that stops sending is dropped, never holds a thread for ever
MAX_FORM_BYTES = 64 * 1024
TEXT_TYPES = {".jsonl": "text/plain", ".log": "text/plain", ".yaml": "text/plain", ".md": "text/plain"}
# Every page: nothing is fetched from anywhere but this server (no CDN, no font, no tracker).
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
# A served file (a report, a log) runs no script and reaches nothing, even one a run folder was given.
FILE_POLICY = "sandbox allow-same-origin; default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'"


@dataclass
class ServeApp:
    root: Path
    launcher: Launcher
    token: str
    loopback: bool
    runs: RunCache = field(init=False)

    def __post_init__(self) -> None:
        self.runs = RunCache(self.root)

    def running(self) -> str | None:
        state = self.launcher.state()
        return state["name"] if state and state["running"] else None

    def progress(self) -> dict[str, Any]:
        """The small JSON the pages poll: a signature that changes with every record, run start
        or end, and one line on the run the server started."""
        names = find_runs(self.root)
        state = self.launcher.state()
        signature = hashlib.sha256(
            json.dumps([[n, *stamp(self.root / n)] for n in names] + [state and state["running"]]).encode()
        ).hexdigest()[:16]
        line = ""
        if state is not None:
            path = self.root / state["name"]
            statuses = [r.status for r in read_run(path).all_records]
            done = f"{len(statuses)} record(s): ok {statuses.count('ok')}, other {len(statuses) - statuses.count('ok')}"
            if state["running"]:
                line = f"running {state['name']} ({state['elapsed_s']:.0f} s): {done}"
            else:
                line = f"finished {state['name']} (exit code {state['exit_code']}): {done}"
        return {"signature": signature, "line": line, "active": state, "runs": len(names)}


class Handler(BaseHTTPRequestHandler):
    server_version = "precision-suite-serve"
    timeout = REQUEST_TIMEOUT_S
    app: ServeApp  # set on the subclass make_server builds

    # --- plumbing ----------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the terminal shows the URLs and the token, not a line per poll

    def _send(
        self, status: int, body: bytes | str, content_type: str = "text/html; charset=utf-8", **headers: str
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", headers.pop("policy", PAGE_POLICY))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, pages.page(f"{status} {HTTPStatus(status).phrase}", f'<p class="error">{message}</p>'))

    def _host_ok(self) -> bool:
        """Bound to loopback, answer only requests addressed to it: a page elsewhere whose name
        was pointed at 127.0.0.1 (DNS rebinding) reads nothing."""
        if not self.app.loopback:
            return True
        return _loopback((self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]"))

    def _query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    # --- GET ---------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _guarded(self, method: Any) -> None:
        """A bug answers 500 with one line (and the traceback on the server's terminal), never a
        dropped connection."""
        try:
            method()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - the one place a crash of a page lands
            traceback.print_exc()
            self._error(
                500, html.escape(f"internal error (a bug in precision-suite serve): {type(exc).__name__}: {exc}")
            )

    def _get(self) -> None:
        if not self._host_ok():
            return self._error(403, "this server answers requests to 127.0.0.1 only")
        route = urlsplit(self.path).path
        query = self._query()
        app = self.app
        if route == "/":
            filters = {k: query.get(k, "") for k in pages.FILTERS}
            return self._send(200, pages.runs_page(app.runs.summaries(), filters, app.running(), str(app.root)))
        if route == "/fragment/runs":
            filters = {k: query.get(k, "") for k in pages.FILTERS}
            return self._send(200, pages.runs_fragment(app.runs.summaries(), filters, app.running()))
        if route == "/api/progress":
            return self._send(200, json.dumps(app.progress()), "application/json")
        if route.startswith("/run/"):
            return self._run(unquote(route[len("/run/") :]).rstrip("/"))
        if route.startswith("/fragment/report/"):
            return self._live_report(unquote(route[len("/fragment/report/") :]))
        if route.startswith("/files/"):
            return self._file(unquote(route[len("/files/") :]))
        if route == "/compare":
            return self._compare(query.get("old", ""), query.get("new", ""))
        if route == "/history":
            return self._history(query.get("row", ""), query.get("run", ""))
        if route == "/start":
            configs = list(app.launcher.configs())
            chosen = "smoke.yaml" if "smoke.yaml" in configs else (configs[0] if configs else "")
            return self._send(
                200,
                pages.start_page(configs, chosen, "", query.get("token", ""), "", ALLOWED_OVERRIDES, app.running()),
            )
        return self._error(404, "no such page")

    def _is_run(self, name: str) -> Path | None:
        path = inside(self.app.root, name)
        return path if path is not None and ((path / RESULTS_FILE).is_file() or (path / SERVE_FILE).is_file()) else None

    def _live_report(self, name: str) -> None:
        if self._is_run(name) is None:
            return self._error(404, f"{html.escape(name)}: no such run")
        run = self.app.runs.get(name)
        if isinstance(run, str):
            return self._send(200, f'<p class="info">{html.escape(run)}</p>')
        self._send(200, pages.report_body(render_html(run.comparison, run.records, [])))

    def _run(self, name: str) -> None:
        path = self._is_run(name)
        if path is None:
            return self._error(404, f"{html.escape(name)}: no such run")
        run = self.app.runs.get(name)
        if isinstance(run, str):
            summary, live = unreadable(name, path, run), f'<p class="info">{html.escape(run)}</p>'
        else:
            summary = summarize(name, run)
            live = (
                None
                if (path / REPORT_FILE).exists()
                else pages.report_body(render_html(run.comparison, run.records, []))
            )
        files = [f for f in (REPORT_FILE, *RUN_FILES) if (path / f).is_file()]
        if (path / "logs").is_dir():
            files += [f"logs/{log.name}" for log in sorted((path / "logs").iterdir()) if log.is_file()]
        self._send(200, pages.run_page(summary, files, live))

    def _file(self, relative: str) -> None:
        path = inside(self.app.root, relative)
        if path is None or not path.is_file():
            return self._error(404, "no such file")
        content_type = TEXT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        self._send(200, path.read_bytes(), content_type, policy=FILE_POLICY)

    def _compare(self, old: str, new: str) -> None:
        names = [s.name for s in self.app.runs.summaries()]
        if not old or not new:
            return self._send(200, pages.compare_page(names, old, new, None, ""))
        runs = [self.app.runs.get(n) if n in names else f"{n}: no such run" for n in (old, new)]
        if missing := [r for r in runs if isinstance(r, str)]:
            return self._send(404, pages.compare_page(names, old, new, None, "; ".join(missing)))
        try:
            result = diff.diff_runs(*runs)  # type: ignore[arg-type]
        except RunDirError as exc:
            return self._send(400, pages.compare_page(names, old, new, None, str(exc)))
        self._send(200, pages.compare_page(names, old, new, result, ""))

    def _history(self, row: str, run_name: str) -> None:
        loaded = [(s, r) for s in self.app.runs.summaries() if isinstance(r := self.app.runs.get(s.name), RunDir)]
        if not row:
            chosen = [r for s, r in loaded if not run_name or s.name == run_name]
            return self._send(200, pages.history_index(row_keys(chosen), run_name))
        key = parse_row_id(row)
        points = history(loaded, key) if key else []
        if key is None or not points:
            return self._error(404, f"{html.escape(row)}: no run has this row")
        self._send(200, pages.history_page(key, points, plot_history(points, key)))

    # --- POST --------------------------------------------------------------------------------------

    def _post(self) -> None:
        if not self._host_ok():
            return self._error(403, "this server answers requests to 127.0.0.1 only")
        if urlsplit(self.path).path != "/start":
            return self._error(404, "no such page")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            return self._error(413, "form too large")
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode("utf-8", "replace")).items()}
        given = form.get("token") or self.headers.get("X-Token") or ""
        if not hmac.compare_digest(given.encode(), self.app.token.encode()):
            return self._error(
                403, "a valid token is needed to start a run (printed by precision-suite serve at start)"
            )
        config, overrides = form.get("config", ""), form.get("overrides", "")
        try:
            name = self.app.launcher.start(config, overrides)
        except StartError as exc:
            configs = list(self.app.launcher.configs())
            body = pages.start_page(configs, config, overrides, given, str(exc), ALLOWED_OVERRIDES, self.app.running())
            return self._send(exc.status, body)
        self._send(303, "", Location=pages.run_url(name))


def make_server(
    root: Path | str,
    host: str = "127.0.0.1",
    port: int = 0,
    config_dirs: list[Path] | None = None,
    allow_user_code: bool = False,
    token: str | None = None,
) -> ThreadingHTTPServer:
    """A server over ``root`` (not yet serving); ``server.app`` holds its state and token."""
    root = Path(root).resolve()
    app = ServeApp(
        root,
        Launcher(root, list(config_dirs or []), allow_user_code),
        token or secrets.token_urlsafe(24),
        _loopback(host),
    )
    handler = type("ServeHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def host_warning(host: str) -> str | None:
    """What binding to ``host`` exposes, when it is not this machine's loopback."""
    if _loopback(host):
        return None
    return (
        f"serving on {host}, not 127.0.0.1: anyone who can reach this machine can read every run served "
        "(starting a run still needs the token)"
    )


class ServeError(Exception):
    """Bad input to ``serve`` (one line, exit 2)."""


def serve(root: str, host: str, port: int, config_dirs: list[str], allow_user_code: bool) -> int:
    path = Path(root)
    if not path.is_dir():
        raise ServeError(f"{root}: no such folder (a folder of runs, e.g. runs/)")
    for folder in config_dirs:
        if not Path(folder).is_dir():
            raise ServeError(f"--configs {folder}: no such folder")
    if warning := host_warning(host):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        server = make_server(path, host, port, [Path(f) for f in config_dirs], allow_user_code)
    except OSError as exc:
        raise ServeError(f"{host}:{port}: cannot listen there: {exc.strerror or exc}") from None
    # `kill` stops the server as Ctrl-C does: the run it started is stopped too, its records kept.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    shown = server.server_address[0] if ":" not in str(server.server_address[0]) else f"[{server.server_address[0]}]"
    base = f"http://{shown}:{server.server_address[1]}"
    print(f"precision-suite serve: {len(find_runs(path))} run(s) under {path.resolve()}")
    print(f"  runs:        {base}/")
    print(f"  start a run: {base}/start?token={quote(server.app.token)}")  # type: ignore[attr-defined]
    print(f"  token:       {server.app.token}  (needed to start a run; Ctrl-C stops the server)", flush=True)  # type: ignore[attr-defined]
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.launcher.stop()  # type: ignore[attr-defined]
    return 0
